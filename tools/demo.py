#!/usr/bin/env python
"""The embedded defaults: Bi-KD and its Independent control on data the project makes.

    python tools/demo.py [--task digits|digits_kway|ade20k_toy|ade20k_toy_official|
                                 ade20k_panoptic_toy|dhf1k_toy]
                         [--force-pretrain]

- ``digits`` (the README's main job): scikit-learn's handwritten digits as PNG files in the
  ImageFolder layout; a ResNet-10-T and a ConvNeXt-Atto (timm).
- ``digits_kway``: the digits pair, then with a RegNetX and a MobileNetV3 added (K = 2, 3, 4),
  Bi-KD and the control for each through tools/run_experiment.py, and the K-way report.
- ``ade20k_toy``: synthetic street scenes in ADE20K's layout; a small Mask2Former and a small
  UPerNet (mmseg).
- ``ade20k_toy_official``: the same scenes; the official Mask2Former (detectron2, a ResNet-18
  version of its ADE20K config) and the mmseg UPerNet.
- ``ade20k_panoptic_toy``: the same scenes in ADE20K's panoptic layout (people and cars are
  things); two small official Mask2Former panoptic members (detectron2), scored by detectron2's
  evaluators: PQ (the table's metric), mask AP and mIoU.
- ``dhf1k_toy``: synthetic videos of moving discs with fixations, in DHF1K's layout; a reduced
  TMFI-Net and a reduced ViNet-A (exported in their releases' checkpoint layouts).

For each: 1. write the data (once); 2. "pretrain" the members from scratch on different
recipes (configs/<task>/pretrain_<member>.yaml) and export them in their native format
(checkpoints/<task>/), once; 3. fine-tune them with Bi-KD and with the Independent control on
the identical schedule through tools/run_experiment.py (its report and deltas.png go to
work_dirs/<task>/); the digits with three seeds; 4. print each method's table (the first seed's)
and the difference from the control (with several seeds, its 95% confidence interval and the
verdict it gives). Every step
is the command a user would type (tools/train_net.py, tools/export_members.py,
tools/run_experiment.py).
"""
import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _digits_data(root, force=False):
    from tools.make_digits_dataset import make_digits
    info = make_digits(os.path.join(ROOT, root), force=force)
    return f'{info["train"]} train / {info["val"]} val images', root


def _ade_data(root, force=False):
    from tools.make_ade20k_toy import make_ade20k_toy
    info = make_ade20k_toy(os.path.join(ROOT, root), force=force)
    return (f'{info["train"]} training / {info["val"]} validation scenes',
            os.path.join(root, 'ADEChallengeData2016'))


def _ade_panoptic_data(root, force=False):
    described, _ = _ade_data(root, force)
    return described, root  # Detectron2Dataset takes the datasets root


def _dhf1k_data(root, force=False):
    from tools.make_dhf1k_toy import make_dhf1k_toy
    info = make_dhf1k_toy(os.path.join(ROOT, root), force=force)
    return (f'{info["train"]} training / {info["val"]} validation videos of {info["frames"]} '
            'frames', root)


TASKS = {
    # three seeds: the difference from the control with its confidence interval
    'digits': dict(members=('resnet', 'convnext'), data='datasets/digits', make=_digits_data,
                   experiment=['configs/digits/resnet_convnext_bikd.yaml'], seeds=3),
    'ade20k_toy': dict(members=('mask2former', 'upernet'), data='datasets/ade20k_toy',
                       make=_ade_data, experiment=['configs/ade20k_toy/m2f_upernet_bikd.yaml']),
    # the official Mask2Former (detectron2) with the mmseg UPerNet (make d2 installs detectron2)
    'ade20k_toy_official': dict(members=('m2f_official', 'upernet'), data='datasets/ade20k_toy',
                                make=_ade_data, configs='ade20k_toy',
                                experiment=['configs/ade20k_toy/m2f_official_upernet_bikd.yaml']),
    # panoptic segmentation with the official Mask2Former (make d2): the data under detectron2's
    # datasets root; three seeds (about 80 s a run here), PQ, AP and mIoU each against the
    # control, since they need not agree
    'ade20k_panoptic_toy': dict(members=('m2f_r18', 'm2f_wide'), data='datasets/ade20k_toy',
                                make=_ade_panoptic_data, data_keys=(
                                    'train_dataloader.dataset.datasets_root',
                                    'val_dataloader.dataset.datasets_root',
                                    'val_evaluator.datasets_root'),
                                experiment=['configs/ade20k_panoptic_toy/r18_wide_bikd.yaml'],
                                metrics=('PQ', 'AP', 'mIoU'), seeds=3),
    'dhf1k_toy': dict(members=('tmfinet', 'vinet_a'), data='datasets/dhf1k_toy',
                      make=_dhf1k_data, experiment=['configs/dhf1k_toy/tmfi_vinetA_bikd.yaml']),
    # Table 6's question on the digits: the pair, then a third and a fourth member
    'digits_kway': dict(members=('resnet', 'convnext', 'regnet', 'mobilenet'),
                        data='datasets/digits', make=_digits_data, configs='digits',
                        experiment=['configs/digits/resnet_convnext_bikd.yaml',
                                    'configs/digits/resnet_convnext_regnet_bikd.yaml',
                                    'configs/digits/resnet_convnext_regnet_mobilenet_bikd.yaml']),
}


def run(cmd):
    print('\n$ ' + ' '.join(cmd), flush=True)
    subprocess.run([sys.executable] + cmd, cwd=ROOT, check=True)


def pretrain_members(task: dict, force: bool, data: list, out: str, configs: str) -> bool:
    """Pretrain each member of the task (or reuse its checkpoint in ``checkpoints/<configs>``)
    and export it there; False when a pretraining failed (its output says why)."""
    from bikd.experiments.follow import run_python
    checkpoints = f'checkpoints/{configs}'
    for m in task['members']:
        if os.path.isfile(os.path.join(ROOT, checkpoints, f'{m}.pth')) and not force:
            print(f'member {m}: using {checkpoints}/{m}.pth (--force-pretrain to redo)')
            continue
        cfg = f'configs/{configs}/pretrain_{m}.yaml'
        work = f'{out}/pretrain_{m}'
        # a pretraining stopped before continues; --force-pretrain moves an earlier one aside
        again = ['--overwrite'] if force else ['--resume', 'auto']
        if run_python(['tools/train_net.py', '--config-file', cfg, f'work_dir={work}', *data,
                       *again],
                      os.path.join(ROOT, out, 'logs', f'pretrain_{m}.log'),
                      f'\npretraining member {m}: tools/train_net.py --config-file {cfg}',
                      cwd=ROOT):
            return False
        run(['tools/export_members.py', '--config-file', cfg, '--output-dir', checkpoints,
             f'work_dir={work}'])
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', choices=sorted(TASKS), default='digits')
    parser.add_argument('--force-pretrain', action='store_true',
                        help='pretrain the members again even if their checkpoints exist')
    args = parser.parse_args(argv)
    start = time.time()
    task = TASKS[args.task]
    out = f'work_dirs/{args.task}'
    configs = task.get('configs', args.task)  # the K-way task shares the digits' members

    try:
        described, data_root = task['make'](task['data'])
    except ValueError as e:  # the demo's own data, made by an earlier version: make it again
        print(f'{e}\nmaking it again for the demo')
        described, data_root = task['make'](task['data'], force=True)
    print(f'{args.task}: {described} in {task["data"]}')
    data = [f'{key}={data_root}' for key in task.get('data_keys', (
        'train_dataloader.dataset.data_root', 'val_dataloader.dataset.data_root'))]

    if not pretrain_members(task, args.force_pretrain, data, out, configs):
        return 1

    cmd = ['tools/run_experiment.py', '--methods', 'bikd,independent', '--output-dir', out]
    if task.get('seeds'):
        cmd += ['--seeds', str(task['seeds'])]
    if task.get('metrics'):  # each reported metric against the control, not only the first
        cmd += ['--metrics', ','.join(task['metrics'])]
    for cfg in task['experiment']:
        cmd += ['--config-file', cfg]
    # the configs start from the members in checkpoints/<task>/; a demo run keeps its last
    # checkpoint only (what export and --resume need), not the one before it as well
    run(cmd + data + ['default_hooks.checkpoint.max_keep_ckpts=1'])  # (its result last)
    print(f'demo finished in {time.time() - start:.0f} s; each run\'s own table: '
          f'{out}/runs/<run>/summary.json and its log')
    return 0


if __name__ == '__main__':
    sys.exit(main())
