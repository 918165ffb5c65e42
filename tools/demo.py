#!/usr/bin/env python
"""The embedded defaults: Bi-KD and its Independent control on data the project makes.

    python tools/demo.py [--task digits|digits_kway|ade20k_toy|dhf1k_toy] [--force-pretrain]

- ``digits`` (the README's main job): scikit-learn's handwritten digits as PNG files in the
  ImageFolder layout; a ResNet-10-T and a ConvNeXt-Atto (timm).
- ``digits_kway``: the digits pair, then with a RegNetX and a MobileNetV3 added (K = 2, 3, 4),
  Bi-KD and the control for each through tools/run_experiment.py, and the K-way report.
- ``ade20k_toy``: synthetic street scenes in ADE20K's layout; a small Mask2Former and a small
  UPerNet (mmseg).
- ``dhf1k_toy``: synthetic videos of moving discs with fixations, in DHF1K's layout; a reduced
  TMFI-Net and a reduced ViNet-A (exported in their releases' checkpoint layouts).

For each: 1. write the data (once); 2. "pretrain" the two members from scratch on different
recipes (configs/<task>/pretrain_<member>.yaml) and export them in their native format
(checkpoints/<task>/), once; 3. fine-tune both with Bi-KD and with the Independent control on
the identical schedule; 4. print each run's table and the comparison, and write a PNG of the
deltas (work_dirs/<task>/deltas.png). Every step is the command a user would type
(tools/train_net.py, tools/export_members.py).
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)




def _digits_data(root):
    from tools.make_digits_dataset import make_digits
    info = make_digits(os.path.join(ROOT, root))
    return f'{info["train"]} train / {info["val"]} val images', root


def _ade_data(root):
    from tools.make_ade20k_toy import make_ade20k_toy
    info = make_ade20k_toy(os.path.join(ROOT, root))
    return (f'{info["train"]} training / {info["val"]} validation scenes',
            os.path.join(root, 'ADEChallengeData2016'))


def _dhf1k_data(root):
    from tools.make_dhf1k_toy import make_dhf1k_toy
    info = make_dhf1k_toy(os.path.join(ROOT, root))
    return (f'{info["train"]} training / {info["val"]} validation videos of {info["frames"]} '
            'frames', root)


TASKS = {
    'digits': dict(members=('resnet', 'convnext'), data='datasets/digits', make=_digits_data,
                   runs='configs/digits/resnet_convnext_{method}.yaml'),
    'ade20k_toy': dict(members=('mask2former', 'upernet'), data='datasets/ade20k_toy',
                       make=_ade_data, runs='configs/ade20k_toy/m2f_upernet_{method}.yaml'),
    'dhf1k_toy': dict(members=('tmfinet', 'vinet_a'), data='datasets/dhf1k_toy',
                      make=_dhf1k_data, runs='configs/dhf1k_toy/tmfi_vinetA_{method}.yaml'),
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


def plot_deltas(summaries: dict, members, title: str, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    methods = list(summaries)
    metric = summaries[methods[0]]['primary_metric']
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        deltas = [summaries[method]['members'][m]['delta'][metric] for m in members]
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(members))]
        bars = ax.bar(xs, deltas, width, label=method)
        ax.bar_label(bars, fmt='%+.2f', fontsize=8)
    ax.axhline(0, color='black', linewidth=0.8)
    ax.set_xticks(range(len(members)), members)
    ax.set_ylabel(f'{metric} after - before (points)')
    ax.set_title(f'{title}: change of each member')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', choices=sorted(TASKS), default='digits')
    parser.add_argument('--force-pretrain', action='store_true',
                        help='pretrain the members again even if their checkpoints exist')
    args = parser.parse_args(argv)
    start = time.time()
    task = TASKS[args.task]
    members, out = task['members'], f'work_dirs/{args.task}'
    configs = task.get('configs', args.task)  # the K-way task shares the digits' members
    checkpoints = f'checkpoints/{configs}'

    from bikd.summary import format_table, metric_digits

    described, data_root = task['make'](task['data'])
    print(f'{args.task}: {described} in {task["data"]}')
    data = [f'train_dataloader.dataset.data_root={data_root}',
            f'val_dataloader.dataset.data_root={data_root}']

    for m in members:
        if os.path.isfile(os.path.join(ROOT, checkpoints, f'{m}.pth')) and not args.force_pretrain:
            print(f'member {m}: using {checkpoints}/{m}.pth (--force-pretrain to redo)')
            continue
        cfg = f'configs/{configs}/pretrain_{m}.yaml'
        work = f'{out}/pretrain_{m}'
        run(['tools/train_net.py', '--config-file', cfg, f'work_dir={work}', *data])
        run(['tools/export_members.py', '--config-file', cfg, '--output-dir', checkpoints,
             f'work_dir={work}'])

    if 'experiment' in task:
        cmd = ['tools/run_experiment.py', '--methods', 'bikd,independent', '--output-dir', out]
        for cfg in task['experiment']:
            cmd += ['--config-file', cfg]
        run(cmd + data)
        print(f'demo finished in {time.time() - start:.0f} s')
        return 0

    ckpts = [f'model.members.{i}.checkpoint={checkpoints}/{m}.pth' for i, m in enumerate(members)]
    summaries = {}
    for method in ('bikd', 'independent'):
        work = f'{out}/{method}'
        run(['tools/train_net.py', '--config-file', task['runs'].format(method=method),
             f'work_dir={work}', *data, *ckpts])
        with open(os.path.join(ROOT, work, 'summary.json')) as f:
            summaries[method] = json.load(f)

    print('\n' + '=' * 72)
    for method, summary in summaries.items():
        print(format_table(summary, f'{summary["method"]} ({out}/{method}/summary.json)'))
        print()
    metric = summaries['bikd']['primary_metric']
    print(f'Bi-KD vs Independent, change of {metric}:')
    digits = metric_digits(summaries['bikd']['members'][m]['before'][metric] for m in members)
    for m in members:
        b = summaries['bikd']['members'][m]['delta'][metric]
        i = summaries['independent']['members'][m]['delta'][metric]
        print(f'  {m:<12} Bi-KD {b:+.{digits}f}   Independent {i:+.{digits}f}   '
              f'difference {b - i:+.{digits}f}')
    png = os.path.join(ROOT, out, 'deltas.png')
    plot_deltas(summaries, members, args.task, png)
    print(f'plot: {os.path.relpath(png, ROOT)}')
    print(f'demo finished in {time.time() - start:.0f} s')


if __name__ == '__main__':
    sys.exit(main())
