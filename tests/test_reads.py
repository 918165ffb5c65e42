"""Each file read once per use, counted through Python's audit hook for ``open``: resuming a
run opens its checkpoint once (the digest check, the start's checks — fingerprint, finished
or not, fit — and mmengine's load share that read), so does evaluating it with --eval-only,
and a member's own weights file is opened once (its digest check, its load and the run's
fingerprint), with a digest file beside it or without one."""
import os
import sys
from contextlib import contextmanager

import pytest

from conftest import ROOT

CONFIG = os.path.join(ROOT, 'configs/digits/resnet_convnext_bikd.yaml')
_COUNT = dict(on=False, opens=[])


def _audit(event, args):
    if event == 'open' and _COUNT['on'] and isinstance(args[0], (str, bytes, os.PathLike)):
        _COUNT['opens'].append(os.path.abspath(os.fsdecode(args[0])))


sys.addaudithook(_audit)  # (a hook stays for the process: it counts only inside counting())


@contextmanager
def counting():
    _COUNT.update(on=True, opens=[])
    try:
        yield _COUNT['opens']
    finally:
        _COUNT['on'] = False


def train_net(*argv):
    """tools/train_net.py in this process; its exit status."""
    from bikd.engine.cli import run_cli
    try:
        run_cli(list(map(str, argv)))
    except SystemExit as end:
        return end.code or 0
    return 0


def data(root, work):
    return ['--config-file', CONFIG, f'train_dataloader.dataset.data_root={root}',
            f'val_dataloader.dataset.data_root={root}', 'train_dataloader.num_workers=0',
            'val_dataloader.num_workers=0', 'train_dataloader.batch_size=128',
            'train_cfg.val_interval=1', f'work_dir={work}']


@pytest.fixture(scope='module')
def run(digits_root, tmp_path_factory):
    """A one-epoch digits run of random members."""
    work = tmp_path_factory.mktemp('reads') / 'run'
    assert train_net(*data(digits_root, work), 'model.random_init=true',
                     'train_cfg.max_epochs=1') == 0
    return work


def test_resume_and_eval_only_open_the_checkpoint_once(run, digits_root):
    argv = [*data(digits_root, run), 'model.random_init=true', 'train_cfg.max_epochs=2']
    with counting() as opens:
        assert train_net(*argv, '--resume', 'auto') == 0
    first = str(run / 'epoch_1.pth')
    assert opens.count(first) == 1, [p for p in opens if p.endswith('.pth')]
    with counting() as opens:
        assert train_net(*argv, '--eval-only', '--resume') == 0
    last = str(run / 'epoch_2.pth')
    assert opens.count(last) == 1, [p for p in opens if p.endswith('.pth')]
    import json
    with open(run / 'eval.json') as f:
        assert json.load(f)['iteration'] == 20  # (read from that one read)


@pytest.mark.parametrize('digest', [True, False], ids=['with_digest', 'without_digest'])
def test_a_members_file_is_opened_once(run, digits_root, tmp_path, digest):
    from tools.export_members import main as export
    out = tmp_path / 'export'
    export(['--config-file', CONFIG, f'work_dir={run}', '--output-dir', str(out),
            'model.random_init=true'])
    files = {m: out / f'{m}.pth' for m in ('resnet', 'convnext')}
    assert all(f.is_file() and (out / f'{m}.pth.sha256').is_file() for m, f in files.items())
    if not digest:
        for m in files:
            os.remove(out / f'{m}.pth.sha256')
    argv = [*data(digits_root, tmp_path / 'fresh'), '--eval-only',
            *(f'model.members.{i}.checkpoint={files[m]}' for i, m in enumerate(files))]
    with counting() as opens:
        assert train_net(*argv) == 0
    assert [opens.count(str(f)) for f in files.values()] == [1, 1], \
        [p for p in opens if p.endswith('.pth')]
