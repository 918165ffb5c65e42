"""Each file read once per use, counted through Python's audit hook for ``open``: resuming a
run opens its checkpoint once (the digest check, the start's checks — fingerprint, finished
or not, fit — and mmengine's load share that read), so does evaluating it with --eval-only,
and a member's own weights file is opened once (its digest check, its load and the run's
fingerprint), with a digest file beside it or without one, as is a ``save_pretrained`` folder's
weights file (counted by the kernel: safetensors opens files from Rust, unseen by Python)."""
import os
import shutil
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


@contextmanager
def opens_of(path):
    """How many times ``path`` is opened inside the block, by Python or by native code (a
    library that opens files from C or Rust, as safetensors does, escapes the audit hook):
    Linux's inotify ``IN_OPEN`` events; a list that holds the count once the block ends."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK)
    # IN_OPEN, and the closes between opens: the kernel merges identical events in a row
    if fd < 0 or libc.inotify_add_watch(fd, os.fsencode(path), 0x20 | 0x10 | 0x08) < 0:
        pytest.skip(f'inotify is not available here (errno {ctypes.get_errno()})')
    count = []
    try:
        yield count
        events = b''
        while True:
            try:
                events += os.read(fd, 1 << 16)
            except BlockingIOError:
                break
        n, i = 0, 0
        while i < len(events):  # struct inotify_event: wd, mask, cookie, len, name[len]
            mask, length = int.from_bytes(events[i + 4:i + 8], 'little'), \
                int.from_bytes(events[i + 12:i + 16], 'little')
            n += bool(mask & 0x20)
            i += 16 + length
        count.append(n)
    finally:
        os.close(fd)


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


@pytest.mark.parametrize('digests', [True, False], ids=['with_SHA256SUMS', 'without'])
def test_a_save_pretrained_folders_weights_are_opened_once(tmp_path, digests):
    """A Hugging Face member's ``checkpoint`` folder: its weights file is read once for the
    folder's digest check, the load and the run's fingerprint; the weights are the export's,
    and a damaged file is still refused by name."""
    pytest.importorskip('transformers')
    import classification_bikd  # noqa: F401
    import torch

    from bikd.fileio import DigestMismatch
    from bikd.method.meta_arch import build_member, member_class
    from test_transformers_members import tiny_vit
    tiny_vit(str(tmp_path / 'vit'))
    cfg = dict(type='TransformersClassifierMember', model=str(tmp_path / 'vit'), name='vit',
               pretrained=False)
    trained = build_member(cfg)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.5)  # weights the folder of the release does not have
    trained.export(str(tmp_path / 'out'), 'vit')
    folder = tmp_path / 'copied'  # (files this process has not written: nothing remembered)
    shutil.copytree(tmp_path / 'out' / 'vit', folder)
    if not digests:
        os.remove(folder / 'SHA256SUMS')
    weights = str(folder / 'model.safetensors')
    cfg = dict(cfg, checkpoint=str(folder))
    member = build_member(cfg)
    with opens_of(weights) as opens:
        member.take_weights()
        fingerprint = member_class(cfg).fingerprint(cfg)
    assert opens == [1]
    assert fingerprint['weights']['checkpoint_sha256']['model.safetensors'] == \
        __import__('hashlib').sha256(open(weights, 'rb').read()).hexdigest()
    for (k, ours), theirs in zip(member.state_dict().items(), trained.state_dict().values()):
        assert torch.equal(ours, theirs), k
    if digests:  # a byte changed after the export: refused, naming the file
        with open(weights, 'r+b') as f:
            f.seek(-1, 2)
            last = f.read(1)
            f.seek(-1, 2)
            f.write(bytes([last[0] ^ 1]))
        with pytest.raises(DigestMismatch, match='model.safetensors does not match'):
            build_member(cfg).take_weights()


@pytest.mark.parametrize('digest', [True, False], ids=['with_digest', 'without_digest'])
def test_an_official_pkl_is_opened_once(tmp_path, digest):
    """The official Mask2Former's ``model_final_*.pkl`` as a member's ``checkpoint``: one open
    for its digest check, its load and the run's fingerprint."""
    pytest.importorskip('detectron2', reason='detectron2 is not installed (make d2)')
    import hashlib

    from mask2former_bikd import Mask2FormerMember
    from test_mask2former_d2 import TINY, official_pkl, tiny
    path = str(tmp_path / 'model_final_test.pkl')
    official_pkl(tiny(), path)
    with open(path, 'rb') as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    if digest:
        with open(path + '.sha256', 'w') as f:
            f.write(f'{sha}  model_final_test.pkl\n')
    shutil.copy(path, tmp_path / 'copied.pkl')  # (a file this process has not hashed)
    path = str(tmp_path / 'copied.pkl')
    if digest:
        shutil.copy(tmp_path / 'model_final_test.pkl.sha256', path + '.sha256')
    cfg = dict(type='Mask2FormerMember', config=TINY, name='m2f', checkpoint=path)
    member = Mask2FormerMember(**{k: v for k, v in cfg.items() if k != 'type'})
    with opens_of(path) as opens:
        member.take_weights()
        fingerprint = Mask2FormerMember.fingerprint(cfg)
    assert opens == [1]
    assert fingerprint['weights']['checkpoint_sha256'] == sha
