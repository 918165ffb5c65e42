"""A run killed at any moment and resumed ends as a run never interrupted: its weights,
optimiser, each member's best weights in best/ and summary.json (every evaluation listed).
Also what decides where a run continues from (--resume auto with load_from, a copied
work_dir, a changed run), full disks, and a bug's traceback. On the real digits, CPU."""
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, digits_overrides, run_tool

CONFIG = os.path.join(ROOT, 'configs/digits/resnet_convnext_bikd.yaml')
TRAIN_NET = os.path.join(ROOT, 'tools', 'train_net.py')
LIMIT = 600

#: runs tools/<argv[1]> with a SIGKILL of its own process at the moment BIKD_KILL names
#: (``moment:iteration``); with torchrun, only in the first round and on rank BIKD_KILL_RANK
KILLER = r'''
import os, runpy, signal, sys
moment, at = os.environ['BIKD_KILL'].split(':')
at = int(at)
armed = os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') == '0' and \
    os.environ.get('RANK', '0') == os.environ.get('BIKD_KILL_RANK', os.environ.get('RANK', '0'))


def die(what):
    print(f'KILLED {what}', flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if armed and moment == 'mid_epoch':  # before the step of iteration `at`
    from mmengine.runner import EpochBasedTrainLoop
    run_iter = EpochBasedTrainLoop.run_iter

    def patched(self, idx, data_batch):
        if self.iter == at:
            die(f'before iteration {at}')
        run_iter(self, idx, data_batch)
    EpochBasedTrainLoop.run_iter = patched
elif armed and moment == 'checkpoint':  # its file written, not yet flushed and renamed
    sync = os.fsync

    def fsync(fd):
        if os.path.basename(os.readlink(f'/proc/self/fd/{fd}')).startswith(f'.epoch_{at}.pth.'):
            die(f'writing epoch_{at}.pth')
        sync(fd)
    os.fsync = fsync
elif armed and moment == 'evaluation':  # the first batch of the evaluation at `at`
    from mmengine.runner import ValLoop
    run_iter = ValLoop.run_iter

    def patched(self, idx, data_batch):
        if idx == 0 and self.runner.iter == at:
            die(f'evaluating at iteration {at}')
        run_iter(self, idx, data_batch)
    ValLoop.run_iter = patched
elif armed and moment == 'best':  # a best weights file written, before its rename
    from bikd.engine import best
    after_val_epoch, replace, now = best.BestMembersHook.after_val_epoch, os.replace, [0]

    def patched(self, runner, metrics=None):
        now[0] = runner.iter
        after_val_epoch(self, runner, metrics)
    best.BestMembersHook.after_val_epoch = patched

    def replaced(src, dst):
        if f'{os.sep}best{os.sep}' in str(dst) and now[0] == at:
            die(f'saving {dst}')
        replace(src, dst)
    os.replace = replaced
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def opts(digits_root, work, *more):
    """Two epochs of 10 steps (batch 128), a checkpoint and an evaluation after each."""
    return [*digits_overrides(digits_root, str(work)), 'train_dataloader.batch_size=128',
            'train_cfg.max_epochs=2', 'train_cfg.val_interval=1',
            'default_hooks.logger.interval=5', *more]


#: every run of a comparison alike: two threads (the number of threads changes the order of
#: floating-point sums; with the same number, runs are equal bit for bit)
THREADS = dict(OMP_NUM_THREADS='2')


def env(**more):
    return {**os.environ, 'PYTHONUNBUFFERED': '1', **THREADS, **more}


def train_net(*args, expect_ok=True):
    return run_tool('train_net.py', *args, expect_ok=expect_ok, env=THREADS)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def error_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith('error: ')]
    assert len(lines) == 1, out[-3000:]
    return lines[0]


def comparable_summary(work):
    """summary.json without what names the folder."""
    summary = read_json(os.path.join(work, 'summary.json'))
    summary.pop('work_dir')
    return summary


def same_values(a, b) -> bool:
    """Equal nested containers, tensors equal bit for bit."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_values(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_values(x, y) for x, y in zip(a, b))
    return a == b


def assert_same_run(expected, got, last='epoch_2.pth'):
    """Weights, optimiser state and run state (its random states too) of the last checkpoint,
    every best/ file (weights bit for bit, records) and summary.json equal; no temporary file
    left anywhere."""
    a = torch.load(os.path.join(expected, last), map_location='cpu', weights_only=True)
    b = torch.load(os.path.join(got, last), map_location='cpu', weights_only=True)
    assert a['state_dict'].keys() == b['state_dict'].keys()
    differ = [k for k, v in a['state_dict'].items() if not torch.equal(v, b['state_dict'][k])]
    assert not differ, differ[:5]
    for x, y in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert same_values(a['bikd_run_state'], b['bikd_run_state']), 'the run states differ'
    assert sorted(os.listdir(os.path.join(expected, 'best'))) == \
        sorted(os.listdir(os.path.join(got, 'best')))
    records = read_json(os.path.join(expected, 'best', 'best.json'))
    assert records == read_json(os.path.join(got, 'best', 'best.json'))
    for metrics in records.values():
        for record in metrics.values():
            wa = torch.load(os.path.join(expected, 'best', record['file']), weights_only=True)
            wb = torch.load(os.path.join(got, 'best', record['file']), weights_only=True)
            assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert comparable_summary(expected) == comparable_summary(got)
    left = [os.path.join(d, f) for d, dirs, files in os.walk(got) for f in files + dirs
            if f.endswith('.tmp')]
    assert not left, left


@pytest.fixture(scope='module')
def uninterrupted(digits_root, tmp_path_factory):
    work = tmp_path_factory.mktemp('interrupted') / 'whole'
    train_net('--config-file', CONFIG, '--resume', 'auto',
              *opts(digits_root, work))
    summary = read_json(work / 'summary.json')
    assert [e['iteration'] for e in summary['evaluations']] == [10, 20]
    return work


@pytest.mark.parametrize('moment', ['checkpoint:2', 'best:10'])
def test_a_run_killed_at_any_moment_resumes_to_the_uninterrupted_result(
        moment, digits_root, tmp_path, uninterrupted):
    """SIGKILL while a checkpoint or a best/ file is written (a kill mid-epoch and one during
    an evaluation: tests/test_cluster.py, on either process of a torchrun)."""
    work = tmp_path / 'killed'
    args = ['--config-file', CONFIG, '--resume', 'auto', *opts(digits_root, work)]
    killed = subprocess.run([sys.executable, '-c', KILLER, TRAIN_NET, *args], cwd=ROOT,
                            env=env(BIKD_KILL=moment), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=LIMIT)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:]
    assert 'KILLED' in killed.stdout
    assert not (work / 'summary.json').exists()
    resumed = train_net(*args).stdout
    assert '--resume auto: continuing from' in resumed
    if moment == 'best:10':  # the evaluation its checkpoint owed runs first
        assert 'Finishing what the checkpoint of iteration 10 owed' in resumed
    assert 'temporary file(s) that an interrupted save left' in resumed  # and are gone
    assert_same_run(uninterrupted, work)


def test_resume_auto_with_load_from_continues_the_work_dirs_own_run(digits_root, tmp_path,
                                                                    uninterrupted):
    """A job script passing --resume auto and load_from (the weights to start from): the
    first start takes load_from, every restart continues the work_dir's own checkpoint."""
    work = tmp_path / 'job'
    start = str(uninterrupted / 'epoch_1.pth')
    first = train_net('--config-file', CONFIG, '--resume', 'auto',
                      *opts(digits_root, work, 'train_cfg.max_epochs=1', f'load_from={start}'))
    assert f'starting afresh from load_from={start}' in first.stdout
    again = train_net('--config-file', CONFIG, '--resume', 'auto',
                      *opts(digits_root, work, 'train_cfg.max_epochs=2', f'load_from={start}'))
    assert f'--resume auto: continuing from {work}/epoch_1.pth' in again.stdout
    assert f'load_from={start} is a fresh start\'s weights and is not used' in again.stdout
    assert 'resumed epoch: 1' in again.stdout and (work / 'epoch_2.pth').is_file()


def test_a_copied_work_dir_continues_from_its_own_checkpoint(digits_root, tmp_path,
                                                             uninterrupted):
    import shutil
    copy = tmp_path / 'copy'
    shutil.copytree(uninterrupted, copy)
    # a copy taken when epoch 1 was the last: its marker names the original folder's file
    os.remove(copy / 'epoch_2.pth')
    marker = str(uninterrupted / 'epoch_1.pth')
    (copy / 'last_checkpoint').write_text(marker)
    out = train_net('--config-file', CONFIG, '--resume', 'auto',
                    *opts(digits_root, copy)).stdout
    assert (f'the last_checkpoint marker names {marker}, outside this work_dir: continuing '
            f'from this work_dir\'s own epoch_1.pth') in out
    assert f'member resnet: weights from the checkpoint {copy}/epoch_1.pth' in out
    assert_same_run(uninterrupted, copy)


@pytest.mark.parametrize('change, listed', [('model.ties=skip', "ties: 'later' -> 'skip'"),
                                            ('model.detach_teacher=false',
                                             'detach_teacher: True -> False')])
def test_a_change_of_what_the_method_computes_is_refused_on_resume(change, listed, digits_root,
                                                                   tmp_path, uninterrupted):
    import shutil
    work = tmp_path / 'run'
    shutil.copytree(uninterrupted, work)
    before = digests(work)
    proc = train_net('--config-file', CONFIG, '--resume',
                     *opts(digits_root, work, 'train_cfg.max_epochs=3', change),
                     expect_ok=False)
    assert proc.returncode == 2, proc.stdout[-3000:]
    line = error_line(proc.stdout)
    assert 'the config describes another run' in line and listed in line, line
    assert 'Traceback' not in proc.stdout
    assert digests(work) == before  # the config copy too: every file byte for byte


#: a launcher of mmengine's own: the config's runner_type built by mmengine's RUNNERS, which
#: decides what the run starts from
MMENGINE_LAUNCHER = r'''
import sys
import classification_bikd  # (the config's custom_imports would import it too)
from mmengine.registry import RUNNERS
from bikd.engine import load_config
runner = RUNNERS.build(load_config(sys.argv[1], sys.argv[2:]))
start = runner.prepare_start()
print('runner:', type(runner).__name__, start.kind, start.checkpoint)
'''


def test_a_runner_built_by_mmengines_registry_owns_the_run(digits_root, tmp_path,
                                                          uninterrupted):
    """mmengine's RUNNERS.build(cfg) gives the suite's runner, which decides as train_net
    does: the config's resume=auto continues the work_dir's own checkpoint, not load_from."""
    import shutil
    work = tmp_path / 'launched'
    shutil.copytree(uninterrupted, work)
    (work / 'last_checkpoint').write_text(str(work / 'epoch_2.pth'))
    proc = subprocess.run([sys.executable, '-c', MMENGINE_LAUNCHER, CONFIG,
                           *opts(digits_root, work, 'resume=auto', 'train_cfg.max_epochs=3',
                                 f'load_from={uninterrupted}/epoch_1.pth')],
                          cwd=ROOT, env=env(), text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=LIMIT)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert f'runner: BiKDRunner resume {work}/epoch_2.pth' in proc.stdout
    assert 'is a fresh start\'s weights and is not used' in proc.stdout


#: train_net with a KeyError raised inside the third training step: a bug, not the input's
BUG = r'''
import runpy, sys
from bikd import BiKDMetaArch
step, calls = BiKDMetaArch.loss_from_outputs, [0]
def broken(self, *args, **kwargs):
    calls[0] += 1
    if calls[0] == 3:
        {}['a key the code forgot']
    return step(self, *args, **kwargs)
BiKDMetaArch.loss_from_outputs = broken
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def test_a_bug_shows_its_traceback_exits_1_and_leaves_the_work_dir(digits_root, tmp_path):
    work = tmp_path / 'bug'
    proc = subprocess.run([sys.executable, '-c', BUG, TRAIN_NET, '--config-file', CONFIG,
                           *opts(digits_root, work)], cwd=ROOT, env=env(), text=True,
                          capture_output=True, timeout=LIMIT)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'Traceback (most recent call last)' in proc.stderr
    assert "KeyError: 'a key the code forgot'" in proc.stderr
    assert not any(line.startswith('error: ') for line in proc.stderr.splitlines())
    # left for diagnosis: the log of the run that failed
    logs = [f for d, _, files in os.walk(work) for f in files if f.endswith('.log')]
    assert logs and 'a key the code forgot' in ''.join(
        open(os.path.join(d, f)).read() for d, _, files in os.walk(work) for f in files
        if f.endswith('.log'))


# ----------------------------------------------------------------------------- full disks
@pytest.fixture
def small_disk(tmp_path):
    """Mounts a tmpfs of a given size (KiB) at a folder; unmounted after the test."""
    mounted = []

    def mount(path, kib):
        os.makedirs(path, exist_ok=True)
        proc = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={kib}k', 'tmpfs',
                               str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f'a small tmpfs cannot be mounted here (needs root and mount '
                        f'rights): {proc.stderr.strip()}')
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(['umount', '-l', str(path)], capture_output=True)


def test_a_full_disk_during_a_best_save_is_one_line_and_nothing_half_written(
        digits_root, tmp_path, small_disk):
    work = tmp_path / 'run'
    small_disk(work / 'best', 64)  # too small for a member's weights
    proc = train_net('--config-file', CONFIG,
                     *opts(digits_root, work, 'train_cfg.max_epochs=1'), expect_ok=False)
    assert proc.returncode == 2, proc.stdout[-3000:]
    line = error_line(proc.stdout)
    assert line.startswith('error: best weights of resnet (top1) not saved at iteration 10: '
                           f'cannot write {work}/best/resnet.top1.pth: No space left on device '
                           '(ENOSPC); best/ is as it was'), line
    assert 'Traceback' not in proc.stdout
    assert os.listdir(work / 'best') == []  # nothing half-written
    assert (work / 'epoch_1.pth').is_file()  # the checkpoint before it is kept


def test_a_full_disk_during_an_export_is_one_line_and_nothing_half_written(
        digits_root, tmp_path, small_disk, uninterrupted):
    out = small_disk(tmp_path / 'export', 64)
    proc = run_tool('export_members.py', '--config-file', CONFIG, '--checkpoint',
                    uninterrupted / 'epoch_2.pth', '--output-dir', out,
                    *digits_overrides(digits_root, uninterrupted), expect_ok=False)
    assert proc.returncode == 2, proc.stdout[-3000:]
    line = error_line(proc.stdout)
    assert line == (f'error: cannot write {out}/resnet.pth: No space left on device (ENOSPC)'), \
        line
    assert os.listdir(out) == []


def test_a_start_on_a_full_disk_is_one_line_and_leaves_nothing(digits_root, tmp_path,
                                                               small_disk):
    disk = small_disk(tmp_path / 'disk', 256)
    fd = os.open(disk / 'filler', os.O_WRONLY | os.O_CREAT)
    try:  # fill it
        while os.write(fd, b'\0' * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    work = disk / 'run'
    proc = train_net('--config-file', CONFIG, *opts(digits_root, work),
                     expect_ok=False)
    assert proc.returncode == 2, proc.stdout[-3000:]
    line = error_line(proc.stdout)
    assert 'No space left on device (ENOSPC)' in line and str(work) in line, line
    assert 'Traceback' not in proc.stdout
    assert os.listdir(disk) == ['filler']


# ----------------------------------------------------------------------------- one run per folder
def digests(folder):
    """Every file under ``folder`` (its path relative to it) and its SHA-256."""
    import hashlib
    out = {}
    for parent, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(parent, name)
            with open(path, 'rb') as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def copy_run(source, target):
    import shutil
    shutil.copytree(source, target)
    return target


def damage(path, size=64 * 1024):
    """Random bytes written into the middle of a file's data, its size kept."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + size] = os.urandom(size)
    path.write_bytes(bytes(data))


def test_a_fresh_start_over_a_run_is_refused_and_overwrite_moves_the_run_aside(
        digits_root, tmp_path, uninterrupted):
    work = copy_run(uninterrupted, tmp_path / 'run')
    before = digests(work)
    proc = train_net('--config-file', CONFIG, *opts(digits_root, work), expect_ok=False)
    assert proc.returncode == 2, proc.stdout[-3000:]
    line = error_line(proc.stdout)
    assert f'work_dir {work} holds a run (best, epoch_1.pth, epoch_2.pth' in line, line
    assert all(way in line for way in ('--resume auto', 'another work_dir', '--overwrite')), line
    assert digests(work) == before  # every file byte for byte as it was
    # --overwrite (after the overrides): the run moves aside whole, a new one starts
    out = train_net('--config-file', CONFIG, *opts(digits_root, work, 'train_cfg.max_epochs=1'),
                    '--overwrite').stdout
    moved = [p for p in tmp_path.iterdir() if p.name.startswith('run.replaced-')]
    assert len(moved) == 1 and f'was moved to {moved[0]}' in out, out[-3000:]
    assert digests(moved[0]) == before
    assert (work / 'epoch_1.pth').is_file() and not (work / 'epoch_2.pth').exists()
    assert read_json(work / 'summary.json')['iterations'] == 10


#: runs tools/<argv[1]> that waits before iteration BIKD_PAUSE_AT until the file BIKD_GO exists
PAUSER = r'''
import os, runpy, sys, time
at, go = int(os.environ['BIKD_PAUSE_AT']), os.environ['BIKD_GO']
from mmengine.runner import EpochBasedTrainLoop
run_iter = EpochBasedTrainLoop.run_iter
def patched(self, idx, data_batch):
    if self.iter == at:
        print('PAUSED', flush=True)
        while not os.path.exists(go):
            time.sleep(0.1)
    run_iter(self, idx, data_batch)
EpochBasedTrainLoop.run_iter = patched
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def test_a_second_start_while_a_run_holds_its_work_dir_is_refused(digits_root, tmp_path,
                                                                  uninterrupted):
    """A requeue (or a second job) resuming while the first still trains: refused in one line
    naming the holder; the first ends as a run that shared nothing."""
    work, go = tmp_path / 'shared', tmp_path / 'go'
    args = ['--config-file', CONFIG, '--resume', 'auto', *opts(digits_root, work)]
    first = subprocess.Popen([sys.executable, '-c', PAUSER, TRAIN_NET, *args], cwd=ROOT,
                             env=env(BIKD_PAUSE_AT='12', BIKD_GO=str(go)), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for line in first.stdout:
            if line.startswith('PAUSED'):
                break
        def files():  # (the first run's log folder may still be flushed by its own threads)
            return {k: v for k, v in digests(work).items() if not re.match(r'\d{8}_\d{6}', k)}
        before = files()
        second = train_net(*args, expect_ok=False)
        assert second.returncode == 2, second.stdout[-3000:]
        line = error_line(second.stdout)
        assert f'work_dir {work} is held by another run: pid {first.pid} on ' in line, line
        assert files() == before
        go.write_text('')
        out = first.communicate(timeout=LIMIT)[0]
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out[-3000:]
    assert_same_run(uninterrupted, work)
    assert not (work / 'owner.lock').exists()


def test_a_damaged_last_checkpoint_is_skipped_for_the_one_before_it(digits_root, tmp_path,
                                                                   uninterrupted):
    work = copy_run(uninterrupted, tmp_path / 'damaged')
    recorded = (work / 'epoch_2.pth.sha256').read_text().split()[0]
    damage(work / 'epoch_2.pth')
    out = train_net('--config-file', CONFIG, '--resume', 'auto', *opts(digits_root, work)).stdout
    assert f'skipped: {work}/epoch_2.pth does not match its digest' in out, out[-3000:]
    assert f'records sha256 {recorded}, the file now has ' in out
    assert f'resuming from the newest checkpoint that matches its digest, {work}/epoch_1.pth' \
        in out
    assert_same_run(uninterrupted, work)


def test_a_damaged_best_file_or_export_is_refused_when_loaded(digits_root, tmp_path,
                                                              uninterrupted):
    import shutil
    from bikd.errors import UserError
    from bikd.engine.export import export_members, load_trained
    best = tmp_path / 'best'
    shutil.copytree(uninterrupted / 'best', best)
    damage(best / 'resnet.top1.pth', 4096)
    proc = train_net('--config-file', CONFIG, '--eval-only',
                     *opts(digits_root, tmp_path / 'eval', 'model.random_init=false',
                           f'model.members.0.checkpoint={best}/resnet.top1.pth',
                           f'model.members.1.checkpoint={best}/convnext.top1.pth'),
                     expect_ok=False)
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert f'{best}/resnet.top1.pth does not match its digest' in error_line(proc.stdout)
    model = load_trained(CONFIG, str(uninterrupted / 'epoch_2.pth'),
                         digits_overrides(digits_root, str(tmp_path / 'x')))
    export_members(model, str(tmp_path / 'export'))
    assert (tmp_path / 'export' / 'convnext.pth.sha256').is_file()
    damage(tmp_path / 'export' / 'convnext.pth', 4096)
    with pytest.raises(UserError, match='convnext.pth does not match its digest'):
        model.members[1].load_export(str(tmp_path / 'export'), 'convnext')


def test_resume_auto_on_a_finished_run_changes_no_file(digits_root, tmp_path, uninterrupted):
    work = copy_run(uninterrupted, tmp_path / 'done')
    before = digests(work)
    proc = train_net('--config-file', CONFIG, *opts(digits_root, work), '--resume', 'auto')
    assert f'the run in {work} finished at epoch 2 (iteration 20)' in proc.stdout
    assert digests(work) == before


#: runs tools/<argv[1]> that sends itself BIKD_SIGNAL (``NAME:iteration``) before that
#: iteration (with BIKD_GROUP, to its whole process group, loader workers too, as Slurm and a
#: terminal do); with BIKD_AGAIN, the same signal again 3.5 s into the write of the stop's
#: checkpoint
SIGNALLER = r'''
import os, runpy, signal, sys, time
name, at = os.environ['BIKD_SIGNAL'].split(':')
at, signum = int(at), getattr(signal, name)
first = os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') == '0' and \
    os.environ.get('RANK', '0') == '0'
from mmengine.runner import EpochBasedTrainLoop
run_iter = EpochBasedTrainLoop.run_iter
def patched(self, idx, data_batch):
    if self.iter == at and first:
        print(f'SENDING {name} before iteration {at}', flush=True)
        if os.environ.get('BIKD_GROUP'):
            os.killpg(0, signum)
        else:
            os.kill(os.getpid(), signum)
    run_iter(self, idx, data_batch)
EpochBasedTrainLoop.run_iter = patched
if os.environ.get('BIKD_AGAIN'):
    from bikd.engine import patches
    write = patches.write_bytes
    def slow(data, path, *args, **kwargs):
        if os.path.basename(path).startswith('iter_'):
            time.sleep(3.5)  # (sooner, it counts as a launcher passing the first one on)
            os.kill(os.getpid(), signum)
        return write(data, path, *args, **kwargs)
    patches.write_bytes = slow
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


@pytest.mark.parametrize('sent, workers', [('SIGTERM:14', 2), ('SIGINT:12', 0)])
def test_a_signal_mid_epoch_stops_with_a_checkpoint_and_the_run_resumes_to_the_same_end(
        sent, workers, digits_root, tmp_path, uninterrupted):
    """SIGTERM (Slurm, scancel: to every process, loader workers too) and Ctrl-C mid-epoch:
    the iteration finishes, a checkpoint is written there, one line says so; --resume auto
    continues with the next batch and ends as the uninterrupted run (which loaded its data in
    this process: with loader workers that persist, each sample's augmentation is the
    same)."""
    name, at = sent.split(':')
    done = int(at) + 1
    loader = [f'train_dataloader.num_workers={workers}'] + \
        (['train_dataloader.persistent_workers=true'] if workers else [])
    work = tmp_path / 'stopped'
    args = ['--config-file', CONFIG, '--resume', 'auto', *opts(digits_root, work, *loader)]
    group = dict(BIKD_GROUP='1') if workers else {}
    stopped = subprocess.run([sys.executable, '-c', SIGNALLER, TRAIN_NET, *args], cwd=ROOT,
                             env=env(BIKD_SIGNAL=sent, **group), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=LIMIT,
                             start_new_session=True)
    out = stopped.stdout
    assert stopped.returncode == 128 + getattr(signal, name), out[-3000:]
    assert 'Traceback' not in out
    assert out.strip().splitlines()[-1] == (
        f'stopped by {name} at epoch 2 of 2, iteration {done} of 20; checkpoint '
        f'{work}/iter_{done}.pth written; continue with --resume auto'), out[-3000:]
    assert (work / 'last_checkpoint').read_text() == f'{work}/iter_{done}.pth'
    assert not (work / 'owner.lock').exists()
    resumed = train_net(*args).stdout
    assert f'continuing from {work}/iter_{done}.pth (verified' in resumed
    assert f'continuing epoch 2 after its first {done - 10} of 10 batches' in resumed
    assert_same_run(uninterrupted, work)
    assert not (work / f'iter_{done}.pth').exists()  # superseded by epoch_2.pth


def test_a_second_signal_during_the_save_stops_at_once_keeping_the_last_checkpoint(
        digits_root, tmp_path, uninterrupted):
    work = copy_run(uninterrupted, tmp_path / 'again')
    for name in ('epoch_2.pth', 'epoch_2.pth.sha256', 'summary.json'):
        os.remove(work / name)  # as if epoch 2 were being trained
    (work / 'last_checkpoint').write_text(str(work / 'epoch_1.pth'))
    kept = digests(work)['epoch_1.pth']
    stopped = subprocess.run([sys.executable, '-c', SIGNALLER, TRAIN_NET, '--config-file', CONFIG,
                              '--resume', 'auto', *opts(digits_root, work)], cwd=ROOT,
                             env=env(BIKD_SIGNAL='SIGTERM:15', BIKD_AGAIN='1'), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=LIMIT)
    assert stopped.returncode == -signal.SIGTERM, stopped.stdout[-3000:]  # ended by it
    assert stopped.stdout.strip().splitlines()[-1] == (
        f'second SIGTERM: stopped at once, without a checkpoint at this point; the last '
        f'complete checkpoint is {work}/epoch_1.pth; continue with --resume auto')
    assert not (work / 'iter_16.pth').exists() and digests(work)['epoch_1.pth'] == kept
    assert (work / 'last_checkpoint').read_text() == str(work / 'epoch_1.pth')
    assert not (work / 'owner.lock').exists()  # given back on the way out
