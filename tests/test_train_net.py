"""tools/train_net.py and tools/export_members.py as a user runs them, on the real digits."""
import json
import os
import re

import pytest
import timm
import torch

from conftest import ROOT, digits_overrides, run_tool

CONFIG = os.path.join(ROOT, 'configs/digits/resnet_convnext_bikd.yaml')


def read_summary(work_dir):
    with open(os.path.join(work_dir, 'summary.json')) as f:
        return json.load(f)


#: member checkpoints that do not exist: a run must not read them when load_from or --resume
#: gives every member's weights
NOWHERE = ['model.members.0.checkpoint=/nonexistent/resnet.pth',
           'model.members.1.checkpoint=/nonexistent/convnext.pth']


def without_random_init(overrides):
    return [o for o in overrides if not o.startswith('model.random_init=')]


@pytest.fixture(scope='module')
def one_epoch_run(digits_root, tmp_path_factory):
    """One epoch of Bi-KD (two randomly initialised members), kept for several tests."""
    work = str(tmp_path_factory.mktemp('runs') / 'bikd')
    proc = run_tool('train_net.py', '--config-file', CONFIG,
                    *digits_overrides(digits_root, work), 'train_cfg.max_epochs=1',
                    'train_cfg.val_interval=1')
    return work, proc.stdout


def test_train_writes_checkpoint_and_summary(one_epoch_run):
    work, out = one_epoch_run
    summary = read_summary(work)
    assert summary['method'] == 'BiKDMetaArch'
    assert summary['primary_metric'] == 'top1'
    assert set(summary['members']) == {'resnet', 'convnext'}
    iters = summary['iterations']
    assert iters == 40  # ceil(1257 train images / batch 32)
    for name, m in summary['members'].items():
        for k in ('top1', 'top5'):
            assert 0 <= m['before'][k] <= 100 and 0 <= m['after'][k] <= 100
            assert m['delta'][k] == pytest.approx(m['after'][k] - m['before'][k])
        assert m['before']['top1'] <= m['before']['top5']
    # the teacher shares are fractions of the samples and sum to one
    assert sum(summary['teacher_share'].values()) == pytest.approx(1.0)
    assert os.path.isfile(os.path.join(work, 'epoch_1.pth'))
    # the table is printed, with each member's row and the ensemble
    assert 'Result of BiKDMetaArch' in out
    assert re.search(r'resnet\s+\d+\.\d\d\s+\d+\.\d\d\s+[+-]\d+\.\d\d', out)
    assert 'ensemble (initial members)' in out
    # the environment, config and hook-order dumps go to the log file, not the terminal
    assert 'System environment' not in out and 'Config:\n' not in out
    assert 'Hooks will be executed' not in out
    logs = [os.path.join(d, f) for d, _, files in os.walk(work) for f in files
            if f.endswith('.log')]
    assert logs and 'System environment' in open(logs[0]).read()
    assert 'Hooks will be executed' in open(logs[0]).read()
    # per-member task losses, the distillation loss and teacher shares are logged
    for key in ('task_loss/resnet', 'task_loss/convnext', 'distill_loss', 'teacher_share/resnet'):
        assert key in out, key
    # and written for TensorBoard: losses, teacher shares and the learning rate
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    (events, ) = [os.path.join(d, f) for d, _, files in os.walk(work) for f in files
                  if f.startswith('events.out.tfevents')]
    tags = EventAccumulator(events).Reload().Tags()['scalars']
    assert {'task_loss/resnet', 'distill_loss', 'teacher_share/convnext', 'lr'} <= set(tags), tags


def test_flips_match_the_per_sample_outcomes_and_the_delta(one_epoch_run):
    """Flips against each initial member, from the per-sample files; against a member's own
    initial self, positive - negative flips is its top-1 delta."""
    import numpy as np
    work = one_epoch_run[0]
    summary = read_summary(work)
    before = np.load(os.path.join(work, 'per_sample_before.npz'))
    after = np.load(os.path.join(work, 'per_sample_after.npz'))
    assert set(before.files) == set(after.files) == {'resnet', 'convnext', 'ensemble'}
    assert len(after['resnet']) == 539  # every validation image, in dataset order
    for m in ('resnet', 'convnext'):
        assert 100 * after[m].mean() == pytest.approx(summary['members'][m]['after']['top1'])
        for j in ('resnet', 'convnext'):
            f = summary['flips'][m][j]
            assert f['positive'] == pytest.approx(100 * (~before[j] & after[m]).mean())
            assert f['negative'] == pytest.approx(100 * (before[j] & ~after[m]).mean())
        own = summary['flips'][m][m]
        assert own['positive'] - own['negative'] == pytest.approx(
            summary['members'][m]['delta']['top1'])


def test_training_improves_random_members(one_epoch_run):
    """From random weights, one epoch of Bi-KD on the digits must raise both members' top-1
    well above chance (10%)."""
    summary = read_summary(one_epoch_run[0])
    for name, m in summary['members'].items():
        assert m['after']['top1'] > m['before']['top1'] + 10, name


def test_resume_continues_from_stored_iteration(digits_root, tmp_path, one_epoch_run):
    first_work, _ = one_epoch_run
    work = str(tmp_path / 'resumed')
    # start from a copy of the finished one-epoch run, then ask for a second epoch
    os.makedirs(work)
    for f in ('epoch_1.pth', ):
        with open(os.path.join(first_work, f), 'rb') as src, open(os.path.join(work, f), 'wb') as dst:
            dst.write(src.read())
    with open(os.path.join(work, 'last_checkpoint'), 'w') as f:
        f.write(os.path.join(work, 'epoch_1.pth'))
    # the members' own files are not read when the checkpoint holds their weights: here they
    # do not even exist (a changed run: the first start had random_init, so resume_changed)
    proc = run_tool('train_net.py', '--config-file', CONFIG, '--resume',
                    *without_random_init(digits_overrides(digits_root, work)),
                    *NOWHERE, 'train_cfg.max_epochs=2', 'train_cfg.val_interval=1',
                    'resume_changed=true')
    assert 'resumed epoch: 1, iter: 40' in proc.stdout
    assert "members[resnet].weights.checkpoint: (absent) -> '/nonexistent/resnet.pth'" in \
        proc.stdout and "members[resnet].weights.source: 'random_init' -> (absent)" in \
        proc.stdout
    assert f'member resnet: weights from the checkpoint {work}/epoch_1.pth' in proc.stdout
    summary = read_summary(work)
    assert summary['iterations'] == 80
    # the "before" of a resumed run is the first start's, not an evaluation of epoch 1
    assert summary['members']['resnet']['before'] == read_summary(first_work)['members']['resnet']['before']
    assert os.path.isfile(os.path.join(work, 'epoch_2.pth'))


def test_eval_only_labels_what_it_evaluated(digits_root, tmp_path, one_epoch_run):
    """A trained checkpoint is labelled as the checkpoint at its iteration, not "before"."""
    first_work, _ = one_epoch_run
    ckpt = os.path.join(first_work, 'epoch_1.pth')
    proc = run_tool('train_net.py', '--config-file', CONFIG, '--eval-only',
                    *without_random_init(digits_overrides(digits_root, str(tmp_path / 'eval'))),
                    *NOWHERE, f'load_from={ckpt}')
    assert f'Evaluation of the checkpoint {ckpt} (iteration 40)' in proc.stdout
    assert 'before' not in proc.stdout.split('Evaluation of the checkpoint')[1]
    assert 'ensemble (these members)' in proc.stdout
    with open(tmp_path / 'eval' / 'eval.json') as f:
        ev = json.load(f)
    assert ev['checkpoint'] == ckpt and ev['iteration'] == 40
    # evaluating the trained checkpoint gives the run's "after" numbers
    after = read_summary(first_work)['members']
    for name in ('resnet', 'convnext'):
        assert ev['members'][name]['top1'] == pytest.approx(after[name]['after']['top1'])
    proc = run_tool('train_net.py', '--config-file', CONFIG, '--eval-only',
                    *digits_overrides(digits_root, str(tmp_path / 'initial')))
    assert 'Evaluation of the initial members (their configured weights)' in proc.stdout


def test_exported_members_load_back_into_timm(digits_root, tmp_path, one_epoch_run):
    from bikd.engine.export import load_trained

    first_work, _ = one_epoch_run
    out = tmp_path / 'export'
    run_tool('export_members.py', '--config-file', CONFIG, '--output-dir', out,
             f'work_dir={first_work}')
    listing = json.loads((out / 'members.json').read_text())
    assert [m['member'] for m in listing['members']] == ['resnet', 'convnext']

    # the trained meta-architecture, rebuilt from the runner checkpoint
    model = load_trained(CONFIG, os.path.join(first_work, 'epoch_1.pth'))
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)

    for member in model.members:
        info = json.loads((out / f'{member.name}.json').read_text())
        assert info['format'] == 'timm' and info['member'] == member.name
        net = timm.create_model(info['model_name'], checkpoint_path=str(out / info['checkpoint']),
                                **info['model_kwargs']).eval()
        x = (images.float() / 255 - torch.tensor(info['mean']).view(1, 3, 1, 1)) / \
            torch.tensor(info['std']).view(1, 3, 1, 1)
        with torch.no_grad():
            assert torch.allclose(net(x), member.logits(images), atol=1e-5), member.name
        # the notes describe the preprocessing the numbers came from (the config's validation
        # transform: bilinear to 32 px, no crop), not timm's ImageNet recipe and download
        cfg = info['pretrained_cfg']
        assert 'url' not in cfg and 'hf_hub_id' not in cfg
        assert info['evaluated_with']['transform'] == {
            'input_size': 32, 'is_training': False, 'crop_pct': 1.0,
            'interpolation': 'bilinear'}
        data_cfg = timm.data.resolve_data_config(pretrained_cfg=cfg)
        assert (tuple(data_cfg['input_size']), data_cfg['interpolation'], data_cfg['crop_pct']) == \
            ((3, 32, 32), 'bilinear', 1.0)
        # following them with timm's own transform gives what the run evaluated
        from PIL import Image
        from classification_bikd import ImageFolderDataset
        val = ImageFolderDataset(digits_root, 'val', transform=info['evaluated_with']['transform'])
        path = val.samples[0][0]
        followed = timm.data.create_transform(**data_cfg)(Image.open(path).convert('RGB'))
        with torch.no_grad():
            assert torch.allclose(net(followed[None]), member.logits(val[0]['inputs'][None]),
                                  atol=1e-4), member.name


def test_evaluation_in_two_processes_matches_one(digits_root, tmp_path, one_epoch_run):
    """539 validation images do not split evenly over two gloo processes: the sampler's
    padding must not be counted, so both runs give the same accuracies."""
    ckpt = os.path.join(one_epoch_run[0], 'epoch_1.pth')
    results = []
    for n in (1, 2):
        work = tmp_path / f'eval{n}'
        run_tool('train_net.py', '--config-file', CONFIG, '--eval-only', '--num-gpus', n,
                 *digits_overrides(digits_root, str(work)), f'load_from={ckpt}')
        results.append(json.loads((work / 'eval.json').read_text()))
    one, two = results
    for name in ('resnet', 'convnext'):
        assert one['members'][name] == two['members'][name]
    assert one['ensemble'] == two['ensemble']


def test_training_in_two_processes_uses_the_suites_ddp_wrapper(digits_root, tmp_path):
    """Two gloo processes train through the suite's DDP wrapper (mmengine's, whose step goes
    through the model's own update, which names non-finite loss terms to the optimiser
    wrapper)."""
    work = tmp_path / 'ddp'
    run_tool('train_net.py', '--config-file', CONFIG, '--num-gpus', 2,
             *digits_overrides(digits_root, str(work)), 'train_cfg.max_epochs=1',
             'train_cfg.val_interval=1', env=dict(OMP_NUM_THREADS='1'))  # (2 processes, 2 cores)
    summary = read_summary(work)
    assert summary['iterations'] == 20  # 1,258 images, batch 32 per process, 2 processes
    assert summary['skipped_steps'] == 0
    log = next(work.glob('*/*.log')).read_text()  # the config dump goes to the log file
    assert "type='bikd.BiKDDistributedDataParallel'" in log
    for name, m in summary['members'].items():
        assert m['after']['top1'] > m['before']['top1'], name


def test_bf16_and_channels_last_switches_train_from_the_command_line(digits_root, tmp_path):
    work = tmp_path / 'amp'
    run_tool('train_net.py', '--config-file', CONFIG, '--amp', 'bf16', '--channels-last',
             *digits_overrides(digits_root, str(work)), 'train_cfg.max_epochs=1',
             'train_cfg.val_interval=1')
    summary = read_summary(work)
    assert summary['iterations'] == 40
    for name, m in summary['members'].items():
        assert m['after']['top1'] > m['before']['top1'] + 10, name
    ckpt = torch.load(work / 'epoch_1.pth', map_location='cpu', weights_only=False)
    assert 'loss_scaler' in ckpt['optim_wrapper' if 'optim_wrapper' in ckpt else 'optimizer']
    convs = [v for k, v in ckpt['state_dict'].items() if v.dim() == 4 and v.shape[1] > 1]
    assert convs and all(v.is_contiguous(memory_format=torch.channels_last) for v in convs)


def test_each_members_best_weights_are_kept_exported_and_scored_on_another_split(digits_root,
                                                                                 tmp_path):
    """Three evaluations: each member's best (chosen on the validation split) is the best of
    its logged evaluations, its weights are kept and exported by --which best, and a test
    split scores the last and the best weights."""
    import shutil
    data = tmp_path / 'digits'
    shutil.copytree(digits_root, data)
    shutil.copytree(data / 'val', data / 'test')
    work = tmp_path / 'run'
    config = tmp_path / 'with_test_split.yaml'  # what a user adds for a split of its own
    config.write_text(f"""_base_: {CONFIG}
test_dataloader:
  batch_size: 256
  num_workers: 0
  sampler: {{type: DefaultSampler, shuffle: false}}
  collate_fn: {{type: default_collate}}
  dataset:
    type: ImageFolderDataset
    data_root: {data}
    split: test
    transform: {{input_size: 32, is_training: false, crop_pct: 1.0, interpolation: bilinear}}
test_evaluator: {{type: ClassificationEvaluator, topk: [1, 5]}}
test_cfg: {{type: TestLoop}}
""")
    proc = run_tool('train_net.py', '--config-file', config,
                    *digits_overrides(data, str(work)), 'train_dataloader.batch_size=64',
                    'train_cfg.max_epochs=3', 'train_cfg.val_interval=1',
                    'optim_wrapper.optimizer.lr=0.003')
    summary = read_summary(work)
    # the best of the evaluations during training, from the log (the one before it excluded)
    (scalars, ) = [work / d / 'vis_data' / 'scalars.json' for d in os.listdir(work)
                   if (work / d / 'vis_data' / 'scalars.json').is_file()]
    records = [json.loads(line) for line in open(scalars) if 'resnet/top1' in line]
    assert [r['step'] for r in records] == [0, 1, 2, 3]  # epochs; 20 iterations each
    for member in ('resnet', 'convnext'):
        scores = [(r[f'{member}/top1'], r['step'] * 20) for r in records[1:]]
        value, step = max(scores, key=lambda x: (x[0], -x[1]))  # ties: the earlier
        assert summary['best'][member]['top1'] == dict(iteration=step, value=value,
                                                       file=f'{member}.top1.pth')
    assert re.search(r'best \(iteration\)', proc.stdout)
    # --which best exports those weights
    out = tmp_path / 'export'
    run_tool('export_members.py', '--config-file', config, '--which', 'best', '--output-dir',
             out, f'work_dir={work}', 'model.random_init=true')
    for member in ('resnet', 'convnext'):
        kept = torch.load(work / 'best' / f'{member}.top1.pth', weights_only=True)
        exported = torch.load(out / f'{member}.pth', weights_only=True)
        assert kept.keys() == exported.keys()  # best/ holds the export's native payload
        assert all(torch.equal(exported[k], kept[k]) for k in exported), member
    # the last weights are not written over the best ones (one folder per choice)
    refused = run_tool('export_members.py', '--config-file', config, '--output-dir', out,
                       f'work_dir={work}', 'model.random_init=true', expect_ok=False)
    assert refused.returncode == 2 and f"{out} holds the 'best top1' weights of resnet, " \
        'convnext' in refused.stdout, refused.stdout[-2000:]
    with open(out / 'members.json') as f:
        assert [e['which'] for e in json.load(f)['members']] == ['best top1'] * 2
    # a best file is a member's checkpoint: evaluated as such, it scores its recorded best
    evaluated = tmp_path / 'best_as_members'
    run_tool('train_net.py', '--config-file', config, '--eval-only',
             *[o for o in digits_overrides(data, str(evaluated)) if 'random_init' not in o],
             *[f'model.members.{i}.checkpoint={work}/best/{m}.top1.pth'
               for i, m in enumerate(('resnet', 'convnext'))])
    scores = json.loads((evaluated / 'eval.json').read_text())['members']
    for member in ('resnet', 'convnext'):
        assert scores[member]['top1'] == pytest.approx(summary['best'][member]['top1']['value'])
    # the test split scored the last and the best weights, the last as the validation did
    test = summary['test']
    assert test['best_iterations'] == {m: summary['best'][m]['top1']['iteration']
                                       for m in ('resnet', 'convnext')}
    for member in ('resnet', 'convnext'):
        assert test['last'][f'{member}/top1'] == pytest.approx(
            summary['members'][member]['after']['top1'])
        assert test['best'][f'{member}/top1'] == pytest.approx(
            summary['best'][member]['top1']['value'])
    assert 'on the test split, last / best weights (chosen on the validation top1)' in \
        proc.stdout
