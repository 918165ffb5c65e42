"""Grids of pairs x methods x seeds (tools/run_experiment.py --grid): the shipped paper tables
name real configs, members and methods; a digits grid runs here and on a real one-node Slurm
cluster (Debian's slurm-wlm and munge, started and stopped by these tests on this machine),
where a failed job is reported with its error and submitted again, and a requeued job
resumes to the weights of an uninterrupted run. The global batch size is kept whatever the
number of processes."""
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, digits_overrides

RUN_EXPERIMENT = os.path.join(ROOT, 'tools', 'run_experiment.py')
TABLES = sorted(glob.glob(os.path.join(ROOT, 'configs', 'tables', '*.yaml')))
LIMIT = 900


def env(**more):
    return {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1', **more}


def tool(*args, status=0, **more):
    """run_experiment.py's output (stdout and stderr), its exit status checked unless
    ``status`` is None."""
    proc = subprocess.run([sys.executable, RUN_EXPERIMENT, *map(str, args)], cwd=ROOT,
                          env=env(**more), text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=LIMIT)
    if status is not None:
        assert proc.returncode == status, proc.stdout[-4000:]
    return proc.stdout


def write_grid(path, cells, methods=('bikd', 'independent'), seeds=(0, ), overrides=()):
    import yaml
    path.write_text(yaml.safe_dump(dict(title='a digits grid', methods=list(methods),
                                        seeds=list(seeds), overrides=list(overrides),
                                        cells=cells), sort_keys=False))
    return path


def quick(digits_root, *more):
    """Digits runs of one epoch of 10 steps, random members (the work_dir is the grid's)."""
    return [o for o in digits_overrides(digits_root, 'unused') if not o.startswith('work_dir')] \
        + ['train_dataloader.batch_size=128', 'train_cfg.max_epochs=1',
           'train_cfg.val_interval=1', *more]


# ----------------------------------------------------------------------------- the tables
@pytest.mark.parametrize('path', TABLES, ids=os.path.basename)
def test_each_paper_table_names_real_configs_members_and_methods(path):
    from bikd.engine import load_config
    from bikd.experiment_runs import member_names
    from bikd.experiments.methods import registered_methods
    from bikd.experiments.grid import load_grid
    grid = load_grid(path)
    assert set(grid.methods) <= set(registered_methods())
    for cell in grid.cells:
        names = member_names(load_config(cell.config, cell.overrides).model)
        for method, numbers in cell.paper.items():
            assert set(numbers) <= set(names), (cell.name, method, names)
            for value in numbers.values():  # one number, or one per metric of the grid
                assert not isinstance(value, dict) or set(value) == set(grid.metrics), cell.name


def test_a_grid_with_a_misspelt_key_is_named(tmp_path):
    from bikd.errors import UserError
    from bikd.experiments.grid import load_grid
    bad = tmp_path / 'bad.yaml'
    bad.write_text('methods: [bikd]\nseed: [0]\ncells: [{config: configs/digits/'
                   'resnet_convnext_bikd.yaml}]\n')
    with pytest.raises(UserError, match=r"unknown key\(s\) \['seed'\]"):
        load_grid(str(bad))
    out = tool('--grid', bad, status=None)
    assert "error: grid" in out and "unknown key(s) ['seed']" in out and 'Traceback' not in out


def test_seeds_that_all_give_the_same_difference_get_no_verdict():
    """A metric that moves in steps (one image of a small split) can give every seed the
    same difference: the interval then has no width, which measures no noise."""
    from bikd.experiments.stats import paired_difference
    same = paired_difference([0.1855, 0.1855 + 1e-15])
    assert same['low'] == same['high'] and 'the same on all 2 seeds' in same['verdict']
    assert paired_difference([0.2, 0.21, 0.22])['verdict'] == 'better'


def test_slurms_answer_is_read_as_a_lab_reads_it(tmp_path, monkeypatch):
    """One squeue per look at a grid, whatever its number of runs. Slurm not answering (a busy
    controller times out) says nothing about a job: ``unknown``, followed again. Waiting jobs
    carry Slurm's reason (a hold after a requeue); a cancelled or timed-out job is named so,
    from Slurm's state or, once Slurm has forgotten the job, from the line its step daemon
    wrote into the job's log; a job that ended on its own error is ``failed`` with it."""
    from bikd.experiments import jobs
    from bikd.experiments.plan import ConfigPlan
    from bikd.experiments.run_grid import grid_status
    calls = []

    def squeue(answer):
        code, out, err = answer

        def run(cmd, **kwargs):
            calls.append(cmd)
            return subprocess.CompletedProcess(cmd, code, out, err)
        monkeypatch.setattr(jobs.subprocess, 'run', run)

    record = dict(launcher='slurm', job_id='42', folder=str(tmp_path / 'jobs' / '%j'))
    log = tmp_path / 'jobs' / '42' / '42_0_log.err'
    for answer, expected, detail in (
            ((1, '', 'slurm_load_jobs error: Socket timed out on send/recv'), 'unknown',
             'squeue did not answer'),
            ((0, '42|PENDING|JobHeldAdmin\n', ''), 'pending', 'PENDING (JobHeldAdmin)'),
            ((0, '42|REQUEUE_HOLD|JobHeldUser\n', ''), 'pending', 'REQUEUE_HOLD (JobHeldUser)'),
            ((0, '42|RUNNING|None\n', ''), 'running', 'Slurm job 42: RUNNING'),
            ((0, '42|CANCELLED|None\n', ''), 'cancelled', 'scancel'),
            ((0, '42|TIMEOUT|None\n', ''), 'timed out', 'time limit'),
            ((1, '', 'slurm_load_jobs error: Invalid job id specified'), 'failed',
             'ended without a result')):
        squeue(answer)
        state, said = jobs.run_status(str(tmp_path / 'work'), record)
        assert (state, detail in said) == (expected, True), (answer, said)
    # forgotten by Slurm: the step daemon's line in the job's log says what ended it
    log.parent.mkdir(parents=True)
    squeue((0, '', ''))
    for line, expected in (('slurmstepd: error: *** JOB 42 ON n1 CANCELLED AT 2026-12-08T03:'
                            '10:00 DUE TO JOB REQUEUE ***', 'failed'),
                           ('slurmstepd: error: *** JOB 42 ON n1 CANCELLED AT 2026-12-08T03:'
                            '20:00 ***', 'cancelled'),
                           ('slurmstepd: error: *** JOB 42 ON n1 CANCELLED AT 2026-12-08T03:'
                            '30:00 DUE TO TIME LIMIT ***', 'timed out')):
        with open(log, 'a') as f:
            f.write(line + '\n')
        assert jobs.run_status(str(tmp_path / 'work'), record)[0] == expected, line
    # a look at a grid of 6 runs: one squeue; unknown runs keep their last known state
    plan = ConfigPlan('c.yaml', 'c', str(tmp_path / 'c'), {}, {}, [], None)
    plan.runs = {f'r{i}': None for i in range(6)}
    plan.seed_of = {f'r{i}': None for i in range(6)}
    book = jobs.JobBook(str(tmp_path / 'jobs.json'))
    for i in range(6):
        book.record(f'c/r{i}', 'slurm', str(100 + i), str(tmp_path / 'jobs' / '%j'))
    calls.clear()
    squeue((0, ''.join(f'{100 + i}|RUNNING|None\n' for i in range(6)), ''))
    assert {row[3] for row in grid_status({'c': plan}, book)} == {'running'}
    assert len(calls) == 1 and calls[0][:4] == ['squeue', '-h', '-t', 'all']
    squeue((1, '', 'Socket timed out on send/recv'))
    rows = grid_status({'c': plan}, book, last={('c', 'r0'): 'running'})
    assert rows[0][3] == 'unknown' and rows[0][4].endswith('; last seen running')


def test_the_global_batch_is_kept_whatever_the_processes():
    from bikd.engine import load_config
    from bikd.engine.runner import global_batch
    from bikd.errors import UserError
    config = os.path.join(ROOT, 'configs/imagenet/vitb_vitt_bikd.yaml')
    cfg = load_config(config, import_modules=False)
    assert 'x 16' in global_batch(cfg, 8) and cfg.train_dataloader.batch_size == 16
    cfg = load_config(config, import_modules=False)
    global_batch(cfg, 1)
    assert cfg.train_dataloader.batch_size == 128  # one process: the paper's batch
    cfg = load_config(config, ['global_batch_policy=scale_lr'], import_modules=False)
    assert 'scaled' in global_batch(cfg, 8)  # mmengine's linear scaling from the base batch
    assert cfg.train_dataloader.batch_size == 128
    assert cfg.auto_scale_lr == dict(enable=True, base_batch_size=128)
    with pytest.raises(UserError, match='does not divide among 3 processes'):
        global_batch(load_config(config, import_modules=False), 3)


# ----------------------------------------------------------------------------- here
def test_a_local_grid_runs_and_collects_with_the_paper_column_empty_where_it_has_none(
        digits_root, tmp_path):
    grid = write_grid(tmp_path / 'local.yaml', [dict(
        config=os.path.join(ROOT, 'configs/digits/resnet_convnext_bikd.yaml'),
        paper={'bikd': {'convnext': 0.5}})], methods=('bikd', ), overrides=quick(digits_root))
    out = tmp_path / 'out'
    first = tool('--grid', grid, '--output-dir', out)
    assert first.count('submitted as local job') == 1 and '1 done' in first
    table = (out / 'table.md').read_text()
    assert table in first  # printed
    rows = {cells[1]: cells for cells in (
        [c.strip() for c in line.strip().strip('|').split('|')] for line in table.splitlines()
        if line.startswith('| resnet_convnext_bikd'))}
    assert set(rows) == {'resnet', 'convnext'}
    assert rows['convnext'][3] == '0.5' and rows['resnet'][3] == ''  # the paper's, or empty
    summary = json.loads((out / 'resnet_convnext_bikd/runs/bikd/summary.json').read_text())
    measured = summary['members']['convnext']['delta']['top1']
    assert rows['convnext'][2] == f'{measured:+.2f} (1)'
    assert (out / 'table.png').is_file() and (out / 'resnet_convnext_bikd/report.md').is_file()
    # again: nothing is submitted (everything is done), the table is collected again
    again = tool('--grid', grid, '--output-dir', out)
    assert 'submitted' not in again and (out / 'table.md').read_text() in again
    status = tool('--grid', grid, '--output-dir', out, '--status')
    assert status.count(' done ') == 1 and '1 done' in status
    # --status plans without writing: a grid never submitted leaves its folder unmade
    status = tool('--grid', grid, '--output-dir', tmp_path / 'never', '--status')
    assert '1 not submitted' in status and not (tmp_path / 'never').exists()


def test_a_grid_checks_what_its_runs_read_before_it_submits_and_fails_when_runs_fail(
        digits_root, tmp_path):
    """A missing member checkpoint or data folder: one line each naming the cell, the key
    and the member, exit status 2, nothing submitted. A run that fails anyway (a data folder
    with no images) says why as it fails, and the grid ends with exit status 1."""
    config = os.path.join(ROOT, 'configs/digits/resnet_convnext_bikd.yaml')
    gone = tmp_path / 'gone'
    grid = write_grid(tmp_path / 'missing.yaml', [dict(config=config, overrides=[
        'model.random_init=false', f'model.members.0.checkpoint={gone}/resnet.pth',
        f'model.members.1.checkpoint={digits_root}',  # (there: a folder)
        f'val_dataloader.dataset.data_root={gone}/digits'])],
        methods=('bikd', ), overrides=quick(digits_root))
    out = tmp_path / 'out'
    proc = subprocess.run([sys.executable, RUN_EXPERIMENT, '--grid', grid, '--output-dir', out],
                          cwd=ROOT, env=env(), text=True, capture_output=True, timeout=LIMIT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line.strip() for line in proc.stderr.splitlines()]
    assert 'nothing submitted, 2 path(s) the runs read are not there' in proc.stderr
    cell = 'resnet_convnext_bikd'
    assert f"{cell}: model.members.0.checkpoint (member 'resnet'): no file or folder " \
           f"{gone}/resnet.pth" in lines, proc.stderr
    assert f'{cell}: val_dataloader.dataset.data_root: no folder {gone}/digits' in lines
    assert 'submitted' not in proc.stdout and not (out / 'jobs.json').exists()

    empty = tmp_path / 'empty'
    empty.mkdir()
    grid = write_grid(tmp_path / 'fails.yaml', [dict(config=config, overrides=[
        f'train_dataloader.dataset.data_root={empty}'])], methods=('bikd', ),
        overrides=quick(digits_root))
    proc = subprocess.run([sys.executable, RUN_EXPERIMENT, '--grid', grid, '--output-dir', out],
                          cwd=ROOT, env=env(), text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=LIMIT)
    assert proc.returncode == 1, proc.stdout[-3000:]
    failed = [line for line in proc.stdout.splitlines() if ' bikd: failed: job ' in line]
    assert len(failed) == 1 and 'error: ' in failed[0], proc.stdout[-3000:]
    assert proc.stdout.rstrip().endswith('only what is missing or unfinished is submitted')


# ----------------------------------------------------------------------------- on Slurm
def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


SLURM_CONF = '''ClusterName=bikdtest
SlurmctldHost=localhost
SlurmctldPort={ctld}
SlurmdPort={slurmd}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={socket},cred_expire=30
CredType=cred/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MpiDefault=none
NodeName=bikdnode NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=bikdnode Default=YES MaxTime=INFINITE State=UP
'''


@pytest.fixture(scope='module')
def slurm(tmp_path_factory):
    """A one-node Slurm cluster on this machine (slurmctld + slurmd on free ports, its own
    munged), for the tests of this module; stopped after them. Credentials live 30 s
    (``cred_expire``; Slurm's default is 120): a requeued job waits that long before it may
    start again, and is not refused as "already killed" when it does. Shorter is not safe: a
    job step that a busy machine launches after its credential expired fails, so the jobs of
    a grid would fail for no fault of theirs."""
    needed = ['munged', 'slurmctld', 'slurmd', 'sbatch', 'squeue', 'scontrol', 'sinfo']
    missing = [b for b in needed if not shutil.which(b) and not os.path.exists(f'/usr/sbin/{b}')]
    if missing:
        pytest.skip(f'Slurm is not installed here ({", ".join(missing)} missing; Debian: '
                    'apt-get install slurm-wlm munge, which .ci/run does)')
    if os.geteuid() != 0:
        pytest.skip('a test Slurm cluster runs its daemons as root (.ci/run runs as root)')
    d = tmp_path_factory.mktemp('slurm')
    for sub in ('state', 'spool'):
        (d / sub).mkdir()
    key, sock = d / 'munge.key', d / 'munge.socket'
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)

    def sbin(name):  # (the daemons are in /usr/sbin, which a user's PATH may lack)
        return shutil.which(name) or f'/usr/sbin/{name}'

    subprocess.run([sbin('munged'), '--force', f'--key-file={key}', f'--socket={sock}',
                    f'--pid-file={d}/munged.pid', f'--log-file={d}/munged.log',
                    f'--seed-file={d}/munged.seed'], check=True, capture_output=True)
    conf = d / 'slurm.conf'
    conf.write_text(SLURM_CONF.format(ctld=free_port(), slurmd=free_port(), socket=sock, dir=d,
                                      host=socket.gethostname().split('.')[0],
                                      cpus=os.cpu_count()))
    old = os.environ.get('SLURM_CONF')
    os.environ['SLURM_CONF'] = str(conf)
    try:
        subprocess.run([sbin('slurmctld'), '-f', str(conf)], check=True, capture_output=True)
        subprocess.run([sbin('slurmd'), '-f', str(conf), '-N', 'bikdnode'], check=True,
                       capture_output=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(['sinfo', '-h', '-o', '%T'], capture_output=True,
                                   text=True).stdout.strip()
            if state == 'idle':
                break
            time.sleep(1)
        else:
            logs = ''.join((d / f).read_text()[-1500:] for f in ('slurmctld.log', 'slurmd.log')
                           if (d / f).exists())
            pytest.fail(f'the test Slurm cluster did not come up (sinfo: {state!r}):\n{logs}')
        yield d
    finally:
        subprocess.run(['scancel', '--user', 'root'], capture_output=True)
        subprocess.run(['scontrol', 'shutdown'], capture_output=True)
        for pid_file in ('slurmd.pid', 'slurmctld.pid', 'munged.pid'):
            try:
                os.kill(int((d / pid_file).read_text().split()[0]), 15)
            except (OSError, ValueError):
                pass
        if old is None:
            os.environ.pop('SLURM_CONF', None)
        else:
            os.environ['SLURM_CONF'] = old


def test_a_grid_on_slurm_finishes_reports_a_failed_job_and_submits_only_it_again(
        slurm, digits_root, tmp_path):
    """2 configs x 2 methods (one seed: the grid's seeds are the library's, tested on recorded
    runs). The second config's data folder has no images at first: its jobs fail, the status
    says why, the first table marks its cell as not finished, the command ends with exit
    status 1; once the data is there, the second submit runs only those jobs."""
    late = tmp_path / 'late_digits'  # there, but without images: the runs fail, not the check
    late.mkdir()
    grid = write_grid(tmp_path / 'slurm.yaml', [
        dict(config=os.path.join(ROOT, 'configs/digits/resnet_convnext_bikd.yaml')),
        dict(config=os.path.join(ROOT, 'configs/digits/resnet_convnext_regnet_bikd.yaml'),
             overrides=[f'train_dataloader.dataset.data_root={late}',
                        f'val_dataloader.dataset.data_root={late}'])],
        overrides=quick(digits_root))
    out = tmp_path / 'out'
    first = tool('--grid', grid, '--output-dir', out, '--launcher', 'slurm', '--wait',
                 '--poll', 2, status=1)
    assert first.count('submitted as slurm job') == 4, first
    assert '2 done, 2 failed' in first and '2 run(s) of the grid did not finish' in first, first
    status = tool('--grid', grid, '--output-dir', out, '--status')
    failed = [line for line in status.splitlines() if ' failed ' in line]
    assert len(failed) == 2 and all('resnet_convnext_regnet_bikd' in line and
                                    f'error: dataset folder not found: {late}' in line
                                    for line in failed), status
    table = (out / 'table.md').read_text()
    assert table.count('[not finished: 0/1 runs done]') == 6  # 3 members x 2 methods
    shutil.rmtree(late)
    shutil.copytree(digits_root, late)
    second = tool('--grid', grid, '--output-dir', out, '--launcher', 'slurm', '--wait',
                  '--poll', 2)
    assert second.count('failed before, submitted again') == 2
    assert 'submitted as slurm job' not in second and '4 done' in second
    table = (out / 'table.md').read_text()
    assert '[not finished' not in table and table.count('| resnet_convnext_regnet_bikd |') == 3
    assert all(line.count('(1)') == 2 for line in table.splitlines()
               if line.startswith('| resnet_'))  # both methods, every member


def test_a_signalled_job_loses_no_iteration_and_ends_as_an_uninterrupted_run(
        slurm, digits_root, tmp_path):
    """``scancel --signal=TERM`` (what a preemption or ``scontrol requeue`` sends too) in epoch
    2 of a running job: the run stops with a checkpoint at the end of its iteration, the job
    requeues itself and continues with the next batch, and at the end every weight and
    optimiser state equals the same config trained here without a stop, bit for bit."""
    grid = write_grid(tmp_path / 'requeue.yaml', [dict(
        config=os.path.join(ROOT, 'configs/digits/resnet_convnext_bikd.yaml'))],
        methods=('bikd', ), overrides=quick(digits_root, 'train_cfg.max_epochs=2',
                                            'default_hooks.logger.interval=2'))
    out = tmp_path / 'out'
    submitted = tool('--grid', grid, '--output-dir', out, '--launcher', 'slurm')
    job = submitted.split('submitted as slurm job ')[1].split()[0]
    work = out / 'resnet_convnext_bikd' / 'runs' / 'bikd'
    deadline = time.time() + 300  # a 20 s run, stopped once and started again 30 s later

    def log():  # the job's output and errors (appended to at every start)
        return ''.join(p.read_text() for p in sorted((out / 'logs').glob(f'{job}/*'))
                       if p.suffix in ('.out', '.err'))

    def when(seen, what):
        while not seen():
            assert time.time() < deadline, f'waited for {what}:\n' + log()[-3000:]
            time.sleep(0.3)

    when(lambda: re.search(r'Epoch\(train\)\s+\[2\]\[\s*2/10\]', log()), 'epoch 2')
    subprocess.run(['scancel', '--signal=TERM', job], check=True)
    when(lambda: 'stopped by SIGTERM at epoch 2 of 2' in log(), 'the stop')
    followed = tool('--grid', grid, '--output-dir', out, '--launcher', 'slurm', '--wait',
                    '--poll', 2)
    assert '1 done' in followed and 'submitted' not in followed
    text = log()
    stops = re.findall(r'stopped by SIGTERM at epoch \d of 2, iteration (\d+) of 20; '
                       r'checkpoint (\S+) written', text)
    assert len(stops) == 1 and 'requeued: its next start continues the run' in text, \
        text[-3000:]
    iteration, checkpoint = stops[0]  # the next start continued from the stop's checkpoint
    assert checkpoint == f'{work}/iter_{iteration}.pth'
    assert f'--resume auto: continuing from {checkpoint} (verified' in text
    # the uninterrupted run: the same config, here
    whole = tmp_path / 'whole'
    subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'train_net.py'), '--config-file',
                    out / 'resnet_convnext_bikd' / 'configs' / 'bikd.py', f'work_dir={whole}'],
                   cwd=ROOT, env=env(), check=True, capture_output=True, timeout=LIMIT)
    a = torch.load(whole / 'epoch_2.pth', map_location='cpu', weights_only=True)
    b = torch.load(work / 'epoch_2.pth', map_location='cpu', weights_only=True)
    differ = [k for k, v in a['state_dict'].items() if not torch.equal(v, b['state_dict'][k])]
    assert not differ, differ[:5]
    for x, y in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert all(torch.equal(x[k], y[k]) for k in x)
