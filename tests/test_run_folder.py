"""A run's folder belongs to one run: who may take a work_dir (a live holder refuses it, a gone
one never blocks its own requeue), digests written with what is saved and checked before it is
trusted, wrong values named where a config is read, flags anywhere on the command line. Fast
checks in this process; the runs themselves are in test_interrupted_runs.py."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT

CONFIG = os.path.join(ROOT, 'configs/digits/resnet_convnext_bikd.yaml')


# ----------------------------------------------------------------------------- one owner
def holder_file(work, **fields):
    """An owner file as another run would have written it."""
    holder = dict(host=socket.gethostname(), pid=os.getpid(), pid_start=None, slurm_job=None,
                  slurm_restart=0, torchrun_run=None, torchrun_restart=0, command='train_net',
                  since='2026-12-07 10:00:00', token='0' * 32)
    holder.update(fields)
    (work / 'owner.lock').write_text(json.dumps(holder))
    return holder


@pytest.fixture
def sleeper():
    """A live process of this machine that is not this one."""
    proc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    yield proc
    proc.kill()
    proc.wait()


def test_a_live_holder_refuses_the_work_dir_and_names_itself(tmp_path, sleeper):
    from bikd.engine.ownership import WorkDirHeld, WorkDirOwner
    holder_file(tmp_path, pid=sleeper.pid, slurm_job='4242', slurm_restart=1)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(WorkDirHeld) as caught:
        WorkDirOwner(str(tmp_path)).acquire()
    message = str(caught.value)
    assert f'pid {sleeper.pid} on {socket.gethostname()} (Slurm job 4242, restart 1)' in message
    assert 'since 2026-12-07 10:00:00' in message and 'last sign of life' in message
    assert sorted(os.listdir(tmp_path)) == before  # nothing left behind


def test_a_holder_whose_process_ended_is_taken_over(tmp_path):
    from bikd.engine.ownership import WorkDirOwner
    gone = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                          capture_output=True, text=True).stdout.strip()
    holder_file(tmp_path, pid=int(gone))
    owner = WorkDirOwner(str(tmp_path)).acquire()
    assert f'its process {gone} on this machine has ended' in owner.took_over
    assert json.loads((tmp_path / 'owner.lock').read_text())['pid'] == os.getpid()
    owner.release()
    assert not (tmp_path / 'owner.lock').exists()


def test_on_another_machine_a_holder_counts_until_it_shows_no_sign_of_life(tmp_path,
                                                                          monkeypatch):
    from bikd.engine.ownership import WorkDirHeld, WorkDirOwner
    holder_file(tmp_path, host='node-that-is-not-here', pid=1)
    with pytest.raises(WorkDirHeld, match='free after 300 s without a sign of life'):
        WorkDirOwner(str(tmp_path)).acquire()
    old = time.time() - 301  # its last heartbeat, five minutes ago (a lost node)
    os.utime(tmp_path / 'owner.lock', (old, old))
    owner = WorkDirOwner(str(tmp_path)).acquire()
    assert 'no sign of life for 30' in owner.took_over
    owner.release()
    holder_file(tmp_path, host='node-that-is-not-here', pid=1)
    monkeypatch.setenv('BIKD_OWNER_STALE_S', '5')
    old = time.time() - 6
    os.utime(tmp_path / 'owner.lock', (old, old))
    WorkDirOwner(str(tmp_path)).acquire().release()


@pytest.mark.parametrize('job, restart, taken', [
    (dict(SLURM_JOB_ID='77', SLURM_RESTART_COUNT='1'), dict(slurm_job='77', slurm_restart=0),
     True),
    (dict(SLURM_JOB_ID='78', SLURM_RESTART_COUNT='1'), dict(slurm_job='77', slurm_restart=0),
     False),
    (dict(TORCHELASTIC_RUN_ID='run9', TORCHELASTIC_RESTART_COUNT='2'),
     dict(torchrun_run='run9', torchrun_restart=1), True)])
def test_a_requeued_or_restarted_job_takes_its_own_work_dir_back_at_once(
        job, restart, taken, tmp_path, monkeypatch):
    """The earlier start of the same Slurm job (or torchrun run) ended before the scheduler
    started this one, on whatever node: its fresh heartbeat does not block."""
    from bikd.engine.ownership import WorkDirHeld, WorkDirOwner
    for key in ('SLURM_JOB_ID', 'SLURM_RESTART_COUNT', 'TORCHELASTIC_RUN_ID',
                'TORCHELASTIC_RESTART_COUNT'):
        monkeypatch.delenv(key, raising=False)
    for key, value in job.items():
        monkeypatch.setenv(key, value)
    holder_file(tmp_path, host='the-node-it-ran-on', pid=1, **restart)
    if taken:
        owner = WorkDirOwner(str(tmp_path)).acquire()
        assert 'earlier start of this' in owner.took_over
        owner.release()
    else:
        with pytest.raises(WorkDirHeld):
            WorkDirOwner(str(tmp_path)).acquire()


def test_two_takers_at_once_one_wins(tmp_path):
    """Four processes race for a free work_dir: exactly one holds it (until the test lets it
    go), the others are refused."""
    work, go = tmp_path / 'work', tmp_path / 'go'
    work.mkdir()
    script = ('import os, sys, time\nfrom bikd.engine.ownership import WorkDirOwner, WorkDirHeld\n'
              'try:\n    o = WorkDirOwner(sys.argv[1]).acquire()\n'
              'except WorkDirHeld as e:\n    print("REFUSED", e, flush=True)\n'
              'else:\n    print("HELD", flush=True)\n'
              '    while not os.path.exists(sys.argv[2]):\n        time.sleep(0.05)\n'
              '    o.release()\n')
    procs = [subprocess.Popen([sys.executable, '-c', script, str(work), str(go)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        firsts = [p.stdout.readline() for p in procs]  # each one's answer, while one holds
    finally:
        go.write_text('')
    outs = [first + p.communicate(timeout=60)[0] for first, p in zip(firsts, procs)]
    assert sum(out.startswith('HELD') for out in outs) == 1, outs
    assert all(out.startswith(('HELD', 'REFUSED')) for out in outs), outs
    assert not (work / 'owner.lock').exists()


# ----------------------------------------------------------------------------- digests
def test_what_is_saved_carries_a_digest_that_sha256sum_checks_and_loading_verifies(tmp_path):
    import torch
    from bikd.checkpoint import load_weights_file
    from bikd.fileio import DigestMismatch, save_torch, verify, write_bytes
    path = tmp_path / 'w.pth'
    save_torch({'w': torch.arange(100000.)}, str(path))
    side = (tmp_path / 'w.pth.sha256').read_text()
    assert side.endswith('  w.pth\n') and len(side.split()[0]) == 64
    if subprocess.run(['which', 'sha256sum'], capture_output=True).returncode == 0:
        subprocess.run(['sha256sum', '-c', 'w.pth.sha256'], cwd=tmp_path, check=True,
                       capture_output=True)
    assert verify(str(path)) == 'verified'
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = os.urandom(64)  # the size kept
    path.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch, match=r'w\.pth does not match its digest'):
        load_weights_file(str(path))
    # a file written without one loads unverified; bytes written with one verify
    plain = tmp_path / 'plain.pth'
    torch.save({'w': torch.zeros(3)}, plain)
    assert verify(str(plain)) == 'unverified' and 'w' in load_weights_file(str(plain))
    write_bytes(b'abc', str(tmp_path / 'b.bin'), digest=True)
    assert verify(str(tmp_path / 'b.bin')) == 'verified'


def test_a_replaced_file_never_keeps_the_digest_of_the_one_before(tmp_path, monkeypatch):
    """Killed between the rename of a new file and its digest: the file is left without a
    digest (unverified), not with the old file's (which would look damaged)."""
    import torch
    from bikd import fileio
    path = str(tmp_path / 'best.pth')
    fileio.save_torch({'w': torch.zeros(3)}, path)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(fileio, 'write_text_durably', killed)
    with pytest.raises(KeyboardInterrupt):
        fileio.save_torch({'w': torch.ones(3)}, path)
    assert fileio.verify(path) == 'unverified'
    assert torch.equal(torch.load(path)['w'], torch.ones(3))


def test_resume_skips_a_damaged_checkpoint_for_the_newest_that_verifies(tmp_path):
    import torch
    from bikd.checkpoint import last_good_checkpoint
    from bikd.fileio import save_torch
    for step in (1, 2):
        save_torch(dict(state_dict={'w': torch.full((1000, ), float(step))}),
                   str(tmp_path / f'epoch_{step}.pth'))
        os.utime(tmp_path / f'epoch_{step}.pth', (step, step))
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_2.pth'))
    found = last_good_checkpoint(str(tmp_path))
    assert found.path == str(tmp_path / 'epoch_2.pth') and found.verification == 'verified'
    data = bytearray((tmp_path / 'epoch_2.pth').read_bytes())
    data[600:700] = os.urandom(100)
    (tmp_path / 'epoch_2.pth').write_bytes(bytes(data))
    os.utime(tmp_path / 'epoch_2.pth', (2, 2))
    found = last_good_checkpoint(str(tmp_path))
    assert found.path == str(tmp_path / 'epoch_1.pth')
    assert len(found.skipped) == 1 and 'epoch_2.pth does not match its digest' in \
        found.skipped[0] and found.skipped[0].count('sha256') >= 2
    assert 'newest checkpoint that matches its digest' in found.why


# ----------------------------------------------------------------------------- the command line
def train_net_in_process(capsys, *argv):
    """tools/train_net.py's main with ``argv``; (exit status, stderr)."""
    from bikd.engine.cli import run_cli
    with pytest.raises(SystemExit) as end:
        run_cli(list(map(str, argv)))
    return end.value.code, capsys.readouterr().err


#: 32 wrong values, each refused in one line that names its key
WRONG = [
    ('optim_wrapper.optimizer.lr=-1', 'optim_wrapper.optimizer.lr=-1'),
    ('default_hooks.checkpoint.interval=-2', 'default_hooks.checkpoint.interval'),
    ('optim_wrapper.optimizer.lr=.nan', 'optim_wrapper.optimizer.lr=nan'),
    ('optim_wrapper.optimizer.lr=.inf', 'optim_wrapper.optimizer.lr=inf'),
    ('optim_wrapper.optimizer.lr=fast', 'optim_wrapper.optimizer.lr'),
    ('optim_wrapper.optimizer.weight_decay=-1e-5', 'optim_wrapper.optimizer.weight_decay'),
    ('optim_wrapper.optimizer.betas=[1.5,0.9]', 'optim_wrapper.optimizer.betas'),
    ('optim_wrapper.optimizer.betas=[0.9]', 'optim_wrapper.optimizer.betas'),
    ('optim_wrapper.optimizer.eps=0', 'optim_wrapper.optimizer.eps'),
    ('optim_wrapper.accumulative_counts=0', 'optim_wrapper.accumulative_counts'),
    ('optim_wrapper.clip_grad={max_norm: -1}', 'optim_wrapper.clip_grad.max_norm'),
    ('train_dataloader.batch_size=0', 'train_dataloader.batch_size=0'),
    ('train_dataloader.batch_size=-3', 'train_dataloader.batch_size'),
    ('train_dataloader.batch_size=2.5', 'train_dataloader.batch_size'),
    ('val_dataloader.batch_size=0', 'val_dataloader.batch_size'),
    ('train_dataloader.num_workers=-1', 'train_dataloader.num_workers'),
    ('train_cfg.max_epochs=0', 'train_cfg.max_epochs'),
    ('train_cfg.max_epochs=-2', 'train_cfg.max_epochs'),
    ('train_cfg.val_interval=0', 'train_cfg.val_interval'),
    ('train_cfg.val_begin=-1', 'train_cfg.val_begin'),
    ('default_hooks.checkpoint.interval=0', 'default_hooks.checkpoint.interval'),
    ('default_hooks.checkpoint.max_keep_ckpts=0', 'default_hooks.checkpoint.max_keep_ckpts'),
    ('default_hooks.logger.interval=0', 'default_hooks.logger.interval'),
    ('log_processor.window_size=0', 'log_processor.window_size'),
    ('model.temperature=0', 'model.temperature'),
    ('model.temperature=-1', 'model.temperature'),
    ('model.members.0.num_classes=0', 'model.members.0.num_classes'),
    ('model.members.1.input_size=[32,-32]', 'model.members.1.input_size'),
    ('model.members.5.checkpoint=x.pth', 'model.members has 2 entries'),
    ('model.members.first.checkpoint=x.pth', 'model.members is a list'),
    ('randomness.seed=-1', 'randomness.seed'),
    ('global_batch_size=0', 'global_batch_size=0'),
    ('skip_bad_samples=-1', 'skip_bad_samples=-1'),
]


@pytest.mark.parametrize('override, named', WRONG, ids=[w[0] for w in WRONG])
def test_a_wrong_value_is_one_line_naming_its_key(override, named, capsys, tmp_path):
    status, err = train_net_in_process(capsys, '--config-file', CONFIG,
                                       f'work_dir={tmp_path / "run"}', override)
    lines = [line for line in err.splitlines() if line.startswith('error: ')]
    assert status == 2 and len(lines) == 1, err
    assert named in lines[0] and 'Traceback' not in err, lines[0]
    assert not (tmp_path / 'run').exists()


def test_flags_may_follow_the_overrides(capsys):
    from bikd.engine.cli import default_argument_parser
    parser = default_argument_parser()
    args = parser.parse_args(['--config-file', CONFIG, 'work_dir=w', 'train_cfg.max_epochs=4',
                              '--resume', 'auto', 'a.b=1', '--overwrite', '--resume'])
    assert args.opts == ['work_dir=w', 'train_cfg.max_epochs=4', 'a.b=1']
    assert args.resume == 'strict' and args.overwrite
    args = parser.parse_args(['work_dir=w', '--resume', '--config-file', CONFIG, 'x=1'])
    assert args.resume == 'strict' and args.opts == ['work_dir=w', 'x=1']
    import importlib
    for tool in ('export_members', 'find_partners', 'benchmark', 'run_experiment'):
        with pytest.raises(SystemExit) as end:  # a flag after an override is a flag
            importlib.import_module(f'tools.{tool}').main(['a.b=1', '--help'])
        assert end.value.code == 0 and 'key=value' in capsys.readouterr().out, tool


def test_a_wrong_value_is_one_line_through_the_tool(tmp_path):
    """tools/train_net.py as a user runs it (the values above go through its main)."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'train_net.py'),
                           '--config-file', CONFIG, 'optim_wrapper.optimizer.lr=-1',
                           f'work_dir={tmp_path / "run"}'], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.startswith('error: optim_wrapper.optimizer.lr=-1 '), proc.stderr
