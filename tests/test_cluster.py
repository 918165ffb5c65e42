"""Runs that survive a cluster, on the real digits (CPU, gloo): ``--resume auto`` on every
start, a rank killed under ``torchrun --max-restarts 1`` (the restarted group resumes to the
weights of an uninterrupted run, bit for bit), two "nodes" with a c10d rendezvous on this
machine (the weights of one node with two processes), a resume that refuses a changed run, a
checkpoint save that fails (the previous checkpoint, marker and best/ intact; the run resumes
from them) and data that breaks mid-run (named; skip_bad_samples)."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, digits_overrides, run_tool

CONFIG = os.path.join(ROOT, 'configs/digits/resnet_convnext_bikd.yaml')
TRAIN_NET = os.path.join(ROOT, 'tools', 'train_net.py')
#: bound on every multi-process run of this file
LIMIT = 600


def opts(data_root, work, *more):
    """Two epochs, evaluated after each: 20 steps each with two processes of 32 (digits'
    overrides) or one process of 64; 10 with ``train_dataloader.batch_size=128``."""
    return [*digits_overrides(data_root, str(work)), 'train_cfg.max_epochs=2',
            'train_cfg.val_interval=1', 'default_hooks.logger.interval=2', *more]


def error_line(out: str) -> str:
    """The one line a user error prints (other lines may be library warnings)."""
    lines = [line for line in out.splitlines() if line.startswith('error: ')]
    assert len(lines) == 1, out[-3000:]
    return lines[0]


def state(path):
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    return ckpt['state_dict'], ckpt['optimizer']['state']


def assert_same_weights(a, b):
    (wa, oa), (wb, ob) = state(a), state(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, differ[:5]
    for x, y in zip(oa.values(), ob.values()):
        assert all(torch.equal(x[k], y[k]) for k in x)


def torchrun(*args):
    return [sys.executable, '-m', 'torch.distributed.run', *map(str, args)]


def env():
    return {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}


def finish(proc, timeout=LIMIT):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail('timed out:\n' + out[-3000:])
    return out


@pytest.fixture(scope='module')
def one_node(digits_root, tmp_path_factory):
    """The uninterrupted run: torchrun, one node, two processes of batch 32 (64 a step)."""
    work = tmp_path_factory.mktemp('cluster') / 'one_node'
    proc = subprocess.run(torchrun('--standalone', '--nproc-per-node', 2, TRAIN_NET,
                                   '--config-file', CONFIG, '--resume', 'auto',
                                   *opts(digits_root, work)),
                          cwd=ROOT, env=env(), text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=LIMIT)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert 'starting afresh' in proc.stdout
    return work


def worker_of_rank(parent: int, rank: int) -> int:
    """The pid of torchrun's worker process of ``rank``."""
    for pid in subprocess.run(['pgrep', '-P', str(parent)], capture_output=True,
                              text=True).stdout.split():
        try:
            environ = open(f'/proc/{pid}/environ', 'rb').read().split(b'\0')
        except OSError:
            continue
        if f'RANK={rank}'.encode() in environ:
            return int(pid)
    raise AssertionError(f'no worker of rank {rank} under {parent}')


def run_until_epoch_2(args, act):
    """Run ``args`` (a torchrun) in a session of its own and ``act(proc)`` once epoch 2 has
    run four steps; the process and its whole output once it has ended."""
    proc = subprocess.Popen(args, cwd=ROOT, env=env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    seen, acted, deadline = [], False, time.time() + LIMIT
    try:
        for line in proc.stdout:
            seen.append(line)
            if not acted and re.search(r'Epoch\(train\)\s+\[2\]\[\s*4/20\]', line):
                acted = True
                act(proc)
            assert time.time() < deadline, 'timed out'
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc, ''.join(seen)


def test_a_killed_rank_restarts_the_group_which_resumes_to_the_same_weights(
        digits_root, tmp_path, one_node):
    work = tmp_path / 'killed'
    # two restarts allowed: twice on a 2-core machine (in the whole suite, and after the
    # Mask2Former tests) torchrun did not restart the group after the kill, and the output
    # kept then did not say why; not seen in four runs of this test alone
    killed = []

    def kill_rank_1(proc):
        killed.append(worker_of_rank(proc.pid, 1))
        os.kill(killed[0], signal.SIGKILL)
    proc, out = run_until_epoch_2(torchrun('--standalone', '--nproc-per-node', 2,
                                           '--max-restarts', 2, '--monitor-interval', 0.5,
                                           TRAIN_NET, '--config-file', CONFIG, '--resume',
                                           'auto', *opts(digits_root, work)), kill_rank_1)
    assert killed, out[-3000:]
    first = out.find('Traceback')  # the output around the first failure, and the end
    assert proc.returncode == 0, out[max(0, first - 1500):first + 3000] + '\n...\n' + out[-3000:]
    # the restarted group resumed from epoch 1's checkpoint, not from the start
    assert re.search(r'--resume auto: continuing from \S*epoch_1\.pth', out), out[-3000:]
    assert 'resumed epoch: 1' in out
    assert_same_weights(one_node / 'epoch_2.pth', work / 'epoch_2.pth')


def test_a_killed_rank_0_during_an_evaluation_resumes_to_the_uninterrupted_result(
        digits_root, tmp_path, one_node):
    """Rank 0 (the one that writes) is killed in the evaluation after epoch 1's checkpoint;
    the restarted group finishes that evaluation first, and weights, optimiser, best/ and
    summary.json end as the uninterrupted run's."""
    from test_interrupted_runs import KILLER, assert_same_run
    work, killer = tmp_path / 'rank0', tmp_path / 'killer.py'
    killer.write_text(KILLER)
    proc = subprocess.run(torchrun('--standalone', '--nproc-per-node', 2, '--max-restarts', 1,
                                   '--monitor-interval', 0.5, killer, TRAIN_NET, '--config-file',
                                   CONFIG, '--resume', 'auto', *opts(digits_root, work)),
                          cwd=ROOT, env={**env(), 'BIKD_KILL': 'evaluation:20',
                                         'BIKD_KILL_RANK': '0'},
                          text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=LIMIT)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    assert 'KILLED evaluating at iteration 20' in out and 'local_rank: 0' in out, out[-3000:]
    assert re.search(r'--resume auto: continuing from \S*epoch_1\.pth', out), out[-3000:]
    assert 'Finishing what the checkpoint of iteration 20 owed' in out
    assert_same_run(one_node, work, last='epoch_2.pth')


def test_two_nodes_train_to_the_weights_of_one_node_with_two_processes(
        digits_root, tmp_path, one_node):
    from bikd.engine.launch import free_port
    work, port = tmp_path / 'two_nodes', free_port()
    nodes = [subprocess.Popen(torchrun('--nnodes', 2, '--nproc-per-node', 1, '--rdzv-backend',
                                       'c10d', '--rdzv-endpoint', f'127.0.0.1:{port}',
                                       '--rdzv-id', 'bikd-test', TRAIN_NET, '--config-file',
                                       CONFIG, '--resume', 'auto', *opts(digits_root, work)),
                              cwd=ROOT, env=env(), text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for _ in range(2)]
    outs = [finish(p) for p in nodes]
    assert all(p.returncode == 0 for p in nodes), '\n'.join(o[-2000:] for o in outs)
    assert_same_weights(one_node / 'epoch_2.pth', work / 'epoch_2.pth')


def test_resume_auto_starts_afresh_then_resumes_and_refuses_a_changed_run(digits_root, tmp_path):
    work = tmp_path / 'run'
    first = run_tool('train_net.py', '--config-file', CONFIG, '--resume', 'auto',
                     *opts(digits_root, work, 'train_dataloader.batch_size=128',
                           'train_cfg.max_epochs=1', 'train_cfg.val_interval=1'))
    assert 'starting afresh' in first.stdout and (work / 'epoch_1.pth').is_file()
    record = torch.load(work / 'epoch_1.pth', map_location='cpu', weights_only=True)
    state = record['bikd_run_state']  # the run state: one key, its own version
    assert state['version'] == 1 and state['random'] and state['before']
    run = state['fingerprint']
    assert run['method'] == 'BiKDMetaArch' and run['temperature'] == 1.0
    assert [m['name'] for m in run['members']] == ['resnet', 'convnext']
    assert run['members'][0]['architecture']['model_name'] == 'resnet10t'
    assert run['data']['train']['data_root'] == str(digits_root)

    # a changed method setting and member: refused before anything is written, listing both
    before = sorted(os.listdir(work))
    changed = ['model.temperature=2.0', 'model.members.1.model_name=convnext_femto']
    proc = run_tool('train_net.py', '--config-file', CONFIG, '--resume', 'auto',
                    *opts(digits_root, work, 'train_dataloader.batch_size=128', *changed),
                    expect_ok=False)
    assert proc.returncode == 2
    message = error_line(proc.stdout)
    assert message.startswith('error: --resume: the config describes another run')
    assert "temperature: 1.0 -> 2.0" in message
    assert "members[convnext].architecture.model_name: 'convnext_atto' -> 'convnext_femto'" \
        in message
    assert sorted(os.listdir(work)) == before

    # the schedule may change: a second epoch resumes from the first
    second = run_tool('train_net.py', '--config-file', CONFIG, '--resume', 'auto',
                      *opts(digits_root, work, 'train_dataloader.batch_size=128',
                            'optim_wrapper.optimizer.lr=5e-5'))
    assert re.search(r'--resume auto: continuing from \S*epoch_1\.pth', second.stdout)
    assert 'resumed epoch: 1' in second.stdout and (work / 'epoch_2.pth').is_file()

    # resume_changed=true continues the changed run and says so
    third = run_tool('train_net.py', '--config-file', CONFIG, '--resume',
                     *opts(digits_root, work, 'train_dataloader.batch_size=128',
                           'train_cfg.max_epochs=3', 'model.temperature=2.0',
                           'resume_changed=true'))
    assert re.search(r'WARNING - resume_changed=true: resuming \S*epoch_2\.pth although the run '
                     r'changed: temperature: 1\.0 -> 2\.0', third.stdout)
    assert (work / 'epoch_3.pth').is_file()


#: train_net with os.fsync failing for the checkpoint of epoch 2 (ENOSPC)
FULL_DISK = '''
import errno, os, runpy, sys
sync = os.fsync
def fsync(fd):
    if 'epoch_2.pth' in os.readlink(f'/proc/self/fd/{fd}'):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    sync(fd)
os.fsync = fsync
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def test_a_full_disk_stops_the_run_with_the_last_checkpoint_intact_and_it_resumes(
        digits_root, tmp_path):
    work = tmp_path / 'full'
    args = ['--config-file', CONFIG, '--resume', 'auto',
            *opts(digits_root, work, 'train_dataloader.batch_size=128',
                  'train_cfg.val_interval=1')]
    proc = subprocess.run([sys.executable, '-c', FULL_DISK, TRAIN_NET, *args], cwd=ROOT,
                          env=env(), text=True, capture_output=True, timeout=LIMIT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = error_line(proc.stderr)
    assert error.startswith('error: checkpoint not saved at iteration 20: cannot write '
                               f'{work}/epoch_2.pth: No space left on device (ENOSPC); the '
                               f'last complete checkpoint {work}/epoch_1.pth and the '
                               'last_checkpoint marker are as they were'), error
    assert 'Traceback' not in proc.stderr
    assert (work / 'last_checkpoint').read_text().strip() == str(work / 'epoch_1.pth')
    assert not (work / 'epoch_2.pth').exists() and not list(work.glob('.*.tmp'))
    best = json.loads((work / 'best' / 'best.json').read_text())
    for member, metrics in best.items():
        for record in metrics.values():
            torch.load(work / 'best' / record['file'], weights_only=True)  # loads whole
    state(work / 'epoch_1.pth')

    # the disk has room again: the run resumes from what is left
    resumed = run_tool('train_net.py', *args)
    assert 'resumed epoch: 1' in resumed.stdout and (work / 'epoch_2.pth').is_file()

    # keep_training_on_save_error=true: a warning, and the run goes on to its end
    work2 = tmp_path / 'keep'
    args2 = ['--config-file', CONFIG, *opts(digits_root, work2,
                                            'train_dataloader.batch_size=128',
                                            'keep_training_on_save_error=true')]
    proc = subprocess.run([sys.executable, '-c', FULL_DISK, TRAIN_NET, *args2], cwd=ROOT,
                          env=env(), text=True, capture_output=True, timeout=LIMIT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r'WARNING - checkpoint not saved at iteration 20: cannot write \S+epoch_2'
                     r'\.pth: No space left on device \(ENOSPC\).*training goes on', proc.stdout)
    assert json.loads((work2 / 'summary.json').read_text())['iterations'] == 20


def test_data_that_breaks_mid_run_is_named_and_can_be_skipped(digits_root, tmp_path):
    data = tmp_path / 'digits'
    shutil.copytree(digits_root, data)
    work = tmp_path / 'run'
    base = [*opts(data, work, 'train_dataloader.batch_size=128', 'train_cfg.max_epochs=1',
                  'train_cfg.val_interval=1', 'train_dataloader.num_workers=2')]
    run_tool('train_net.py', '--config-file', CONFIG, '--resume', 'auto', *base)
    # after epoch 1 an image is cut short (a disk error, a sync cut off)
    image = sorted((data / 'train' / '7').iterdir())[3]
    image.write_bytes(image.read_bytes()[:40])
    more = [*base, 'train_cfg.max_epochs=2']
    proc = run_tool('train_net.py', '--config-file', CONFIG, '--resume', 'auto', *more,
                    expect_ok=False)
    assert proc.returncode == 2
    line = error_line(proc.stdout)
    assert line.startswith(f'error: cannot read image file {image}') and \
        'the run stopped at iteration' in line and \
        f'its last complete checkpoint {work}/epoch_1.pth is intact' in line, line
    assert 'Traceback' not in proc.stdout
    assert not (work / 'epoch_2.pth').exists()
    skipped = run_tool('train_net.py', '--config-file', CONFIG, '--resume', 'auto', *more,
                       'skip_bad_samples=3')
    assert 'skipped training sample' in skipped.stdout and str(image) in skipped.stdout
    summary = json.loads((work / 'summary.json').read_text())
    assert summary['skipped_samples'] == 1 and summary['iterations'] == 20


#: a worker that joins the group; in torchrun's first round rank 1 then dies, and in the
#: second round it joins late (the order in which the dead group's addresses were read)
LATE_JOINER = '''
import os, sys, time
import torch.distributed as dist
from bikd.engine.launch import init_process_group
attempt, rank = int(os.environ['TORCHELASTIC_RESTART_COUNT']), int(os.environ['RANK'])
if attempt == 1 and rank == 1:
    time.sleep(3)
init_process_group('gloo')
dist.barrier()
print(f'attempt {attempt} rank {rank}: joined', flush=True)
if attempt == 0 and rank == 1:
    os._exit(1)
'''


def test_a_restarted_group_does_not_meet_the_addresses_of_the_dead_one(tmp_path):
    """torchrun keeps one store for every round: with a plain init_process_group, rank 0 of
    the restarted group connects to the address the dead rank 1 left there (gloo:
    'Connection refused') whenever the new rank 1 is slower to join."""
    script = tmp_path / 'worker.py'
    script.write_text(LATE_JOINER)
    proc = subprocess.run(torchrun('--standalone', '--nproc-per-node', 2, '--max-restarts', 1,
                                   '--monitor-interval', 0.5, script),
                          cwd=ROOT, env=env(), text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=LIMIT)
    assert proc.returncode == 0, proc.stdout[-3000:]
    for rank in (0, 1):
        assert f'attempt 1 rank {rank}: joined' in proc.stdout


def test_a_sigterm_to_rank_0_stops_the_group_with_a_checkpoint_and_the_restart_ends_the_same(
        digits_root, tmp_path, one_node):
    """SIGTERM to process 0 alone mid-epoch: both processes stop after the same iteration,
    its checkpoint is written, torchrun restarts the group, which continues with the next
    batch and ends as the uninterrupted run (weights, optimiser, best/, summary.json)."""
    from test_interrupted_runs import SIGNALLER, assert_same_run
    work, script = tmp_path / 'signalled', tmp_path / 'signaller.py'
    script.write_text(SIGNALLER)
    proc = subprocess.run(torchrun('--standalone', '--nproc-per-node', 2, '--max-restarts', 1,
                                   '--monitor-interval', 0.5, script, TRAIN_NET, '--config-file',
                                   CONFIG, '--resume', 'auto', *opts(digits_root, work)),
                          cwd=ROOT, env={**env(), 'BIKD_SIGNAL': 'SIGTERM:25'}, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=LIMIT)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    assert (f'stopped by SIGTERM at epoch 2 of 2, iteration 26 of 40; checkpoint '
            f'{work}/iter_26.pth written') in out, out[-3000:]
    assert f'--resume auto: continuing from {work}/iter_26.pth (verified' in out
    assert 'continuing epoch 2 after its first 6 of 20 batches' in out
    assert_same_run(one_node, work, last='epoch_2.pth')


def test_ctrl_c_stops_every_process_of_a_torchrun_with_one_checkpoint(digits_root, tmp_path):
    """Ctrl-C in the terminal: SIGINT to torchrun and to its processes, which torchrun passes
    on to them again. One checkpoint at the iteration the processes agree on, one line, and
    torchrun ends (the resume of such a checkpoint is the test above)."""
    work = tmp_path / 'ctrl_c'
    args = torchrun('--standalone', '--nproc-per-node', 2, TRAIN_NET, '--config-file', CONFIG,
                    '--resume', 'auto', *opts(digits_root, work))
    # (what the terminal does: the signal to the whole foreground process group)
    proc, out = run_until_epoch_2(args, lambda proc: os.killpg(proc.pid, signal.SIGINT))
    stops = re.findall(r'stopped by SIGINT at epoch 2 of 2, iteration (\d+) of 40; checkpoint '
                       r'(\S+) written; continue with --resume auto', out)
    # (torchrun itself ends with its SignalException's traceback, as on any Ctrl-C)
    assert len(stops) == 1 and 'second SIGINT' not in out, out[-3000:]
    iteration, checkpoint = stops[0]
    assert checkpoint == f'{work}/iter_{iteration}.pth'
    assert (work / 'last_checkpoint').read_text() == checkpoint
    from bikd.fileio import verify
    assert verify(checkpoint) == 'verified' and proc.returncode != 0
    assert not (work / 'owner.lock').exists()
