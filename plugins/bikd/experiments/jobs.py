"""Training runs as jobs: on a Slurm cluster or on this machine, through submitit (the
launcher detectron2's, DINOv2's and Mask2Former's users know), or followed in this terminal.

- :class:`TrainJob` is the one launcher of a run: what a submitted job runs, and what
  :meth:`TrainJob.run_here` runs in the terminal for an experiment on this machine:
  ``train_net`` on one run's config with ``--resume auto`` (on every node: torchrun with
  one process per GPU). Slurm may stop and requeue it (preemption, ``scontrol requeue``, a
  time limit); each start continues from the run's last checkpoint. ``train_net`` stops
  safely on Slurm's signals (a checkpoint at the end of the current iteration,
  :mod:`bikd.engine.signals`): before a time limit (USR2) :meth:`TrainJob.checkpoint` waits
  for that checkpoint and asks submitit to requeue the job;
  a job whose run stopped on SIGTERM (``scancel --signal=TERM``, a preemption) requeues
  itself, so it continues where it stopped.
- :func:`make_executor` makes submitit's executor for ``--launcher slurm`` (jobs submitted
  requeueable) or ``--launcher local``.
- :class:`JobBook` records which job runs which run (``jobs.json``, written atomically), and
  :func:`run_status` tells a run's state (done, running, pending, failed with the last error
  line of its log, not submitted) from its work_dir, the scheduler and submitit's files. It
  reads no accounting database (``sacct``), which many clusters (and a one-node test
  cluster) do not keep: only ``squeue`` and submitit's result files.
"""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

from ..errors import UserError
from ..fileio import save_json

LAUNCHERS = ('slurm', 'local')
#: how long a job waits for its run to write its stop checkpoint before it is requeued anyway
STOP_WAIT_S = 60
#: the exit statuses of a run that stopped safely on a signal (SIGTERM, SIGUSR2)
REQUEUE_STATUSES = (128 + signal.SIGTERM, 128 + signal.SIGUSR2)


@dataclass
class TrainJob:
    """One training run as a job (submitit pickles it and runs it on the node).

    Attributes:
        config: the run's config file.
        cwd: the folder the run's relative paths are read from (the submitting one).
        nodes: machines of the run.
        gpus_per_node: processes per machine (one per GPU); 0: one process on CPU.
    """
    config: str
    cwd: str
    nodes: int = 1
    gpus_per_node: int = 0

    def command(self, head: str = '', job_id: str = '') -> List[str]:
        """The command this job runs on its node (``head``: the first node's host name)."""
        train = ['-m', 'bikd.engine.cli', '--config-file', self.config, '--resume', 'auto']
        procs = max(1, int(self.gpus_per_node))
        if self.nodes == 1 and procs == 1:
            return [sys.executable, *train]
        if self.nodes == 1:
            return [sys.executable, *train[:2], '--num-gpus', str(procs), *train[2:]]
        port = 29500 + int(job_id or 0) % 1000  # the same after a requeue
        return [sys.executable, '-m', 'torch.distributed.run', '--nnodes', str(self.nodes),
                '--nproc-per-node', str(procs), '--rdzv-backend', 'c10d', '--rdzv-endpoint',
                f'{head}:{port}', '--rdzv-id', str(job_id or 'bikd'), *train]

    _proc = None  # the running train_net (not a field: not pickled)

    def __getstate__(self):  # (submitit pickles the job: the running process stays here)
        state = dict(self.__dict__)
        state.pop('_proc', None)
        return state

    def __call__(self) -> str:
        head, job_id = '', ''
        try:
            import submitit
            env = submitit.JobEnvironment()
            head, job_id = env.hostnames[0], str(env.job_id)
        except (ImportError, RuntimeError):  # not inside a submitit job
            pass
        cmd = self.command(head, job_id)
        print('running:', ' '.join(cmd), flush=True)
        self._proc = proc = subprocess.Popen(cmd, cwd=self.cwd)
        while proc.poll() is None:  # (a signal's handler, checkpoint(), runs in between)
            time.sleep(0.5)
        if proc.returncode == 0:
            return self.config
        if proc.returncode in REQUEUE_STATUSES and os.environ.get('SLURM_JOB_ID'):
            requeue_slurm_job(os.environ['SLURM_JOB_ID'], proc.returncode)
        raise RuntimeError(f'train_net exited with status {proc.returncode} on '
                           f'{self.config} (its log: the lines above)')

    def run_here(self, log_file: str, label: str) -> int:
        """Run the job in this process's terminal (``--launcher local`` of an experiment): the
        same command a submitted job runs, its output into ``log_file`` and its progress
        followed in a few lines (:func:`~bikd.experiments.follow.follow_run`). Returns its exit
        status (2: an input error it has said in one line; over 128: stopped on a signal with
        a checkpoint)."""
        from .follow import run_command
        return run_command(self.command(), log_file, label, cwd=self.cwd)

    def checkpoint(self, *args, **kwargs):
        """Before a time limit (or a preemption signalled with USR2): let the run write its
        checkpoint at the end of its current iteration (it has the signal too; it is passed
        on in case), then have submitit requeue the job: the next start resumes (``--resume
        auto``) with the next batch."""
        import submitit
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.send_signal(signal.SIGUSR2)
                proc.wait(timeout=STOP_WAIT_S)
            except (OSError, subprocess.TimeoutExpired):
                pass
        return submitit.helpers.DelayedSubmission(TrainJob(self.config, self.cwd, self.nodes,
                                                           self.gpus_per_node))


def requeue_slurm_job(job_id: str, status: int) -> None:
    """The run stopped safely on a signal (``status``, its checkpoint written): requeue the
    job so that it continues, and end this start without a result, as submitit does when it
    requeues. When Slurm refuses (a cancelled job, or one it is requeueing already) that is
    said, and the job still ends without a result: ``--status`` then tells what became of it."""
    proc = subprocess.run(['scontrol', 'requeue', job_id], capture_output=True, text=True)
    why = proc.stderr.strip() or proc.stdout.strip()
    print(f'train_net stopped on signal {status - 128} with a checkpoint; Slurm job {job_id} ' +
          ('requeued: its next start continues the run' if proc.returncode == 0 else
           f'not requeued by this job ({why}): cancelled, or requeued by Slurm itself; '
           '--resume auto (or run_experiment --grid) continues it'), flush=True)
    sys.exit(-1)


def parse_time(text: str) -> int:
    """``--time`` (Slurm's ``[D-]HH:MM[:SS]`` or minutes) in minutes."""
    try:
        if ':' not in text and '-' not in text:
            return int(text)
        days, _, rest = text.rpartition('-')
        parts = [int(p) for p in rest.split(':')]
        hours, minutes = parts[0], parts[1] if len(parts) > 1 else 0
        return (int(days) if days else 0) * 1440 + hours * 60 + minutes + \
            (1 if len(parts) > 2 and parts[2] else 0)
    except ValueError:
        raise UserError(f'--time {text!r}: give minutes or [D-]HH:MM[:SS], e.g. 24:00:00') \
            from None


def make_executor(launcher: str, folder: str, partition: Optional[str] = None,
                  nodes: int = 1, gpus_per_node: int = 0, cpus_per_task: Optional[int] = None,
                  time_min: int = 1440, mem: Optional[str] = None,
                  account: Optional[str] = None, timeout_requeues: int = 3):
    """submitit's executor for ``launcher``: Slurm jobs submitted requeueable (``--requeue``),
    one task per node, each requeued at most ``timeout_requeues`` times after reaching its
    time limit (submitit's ``max_num_timeout``; preemptions are not counted); or this
    machine's processes."""
    if launcher not in LAUNCHERS:
        raise UserError(f'--launcher must be one of {LAUNCHERS}, got {launcher!r}')
    import submitit
    if launcher == 'local':
        if nodes != 1:
            raise UserError(f'--launcher local runs on this machine: --nodes 1, got {nodes}')
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=time_min, gpus_per_node=gpus_per_node)
        return executor
    if timeout_requeues < 0:
        raise UserError(f'--timeout-requeues must be 0 or more, got {timeout_requeues}')
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=timeout_requeues)
    params = dict(nodes=nodes, ntasks_per_node=1, time=time_min,
                  additional_parameters=dict(requeue=True))
    if partition:
        params['partition'] = partition
    if gpus_per_node:
        params['gpus_per_node'] = gpus_per_node
    if cpus_per_task:
        params['cpus_per_task'] = cpus_per_task
    if mem:
        params['mem'] = mem
    if account:
        params['account'] = account
    executor.update_parameters(**params)
    return executor


class JobBook:
    """``jobs.json`` of a grid: run key -> the job that runs it (launcher, id, submitit's
    folder, when), written atomically after every submission."""

    def __init__(self, path: str):
        self.path = path
        self.jobs: Dict[str, dict] = {}
        if os.path.isfile(path):
            with open(path) as f:
                self.jobs = json.load(f)

    def record(self, key: str, launcher: str, job_id: str, folder: str) -> None:
        self.jobs[key] = dict(launcher=launcher, job_id=str(job_id), folder=folder,
                              submitted=time.strftime('%Y-%m-%d %H:%M:%S'))
        save_json(self.jobs, self.path)

    def get(self, key: str) -> Optional[dict]:
        return self.jobs.get(key)


#: what :func:`slurm_queue` gives when Slurm did not answer (a busy controller times out)
NO_ANSWER = 'NO_ANSWER'
#: Slurm's states of a job waiting to start (its reason says why: resources, a hold, ...)
SLURM_WAITING = ('PENDING', 'REQUEUED', 'REQUEUE_HOLD', 'REQUEUE_FED', 'RESV_DEL_HOLD',
                 'CONFIGURING', 'SPECIAL_EXIT')
#: Slurm's states of a job that has ended, as this suite names them (others: failed)
SLURM_ENDED = {'CANCELLED': 'cancelled', 'PREEMPTED': 'cancelled', 'TIMEOUT': 'timed out',
               'DEADLINE': 'timed out'}
#: Slurm's states of a job that ended by itself (a run that leaves no summary failed)
SLURM_FINISHED = ('COMPLETED', 'FAILED', 'NODE_FAIL', 'OUT_OF_MEMORY', 'BOOT_FAIL')


def slurm_queue(job_ids) -> Union[Dict[str, Tuple[str, str]], str]:
    """What Slurm says of ``job_ids``, in one ``squeue`` (a look at a grid asks once, not
    once per run): job id -> (state, reason), ended jobs included while Slurm still lists
    them; a job it no longer knows is left out. :data:`NO_ANSWER` when Slurm could not be
    asked (a busy controller times out): not a sign that any job ended."""
    ids = sorted({str(i) for i in job_ids})
    if not ids:
        return {}
    try:
        out = subprocess.run(['squeue', '-h', '-t', 'all', '-j', ','.join(ids),
                              '-o', '%i|%T|%r'], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return NO_ANSWER
    except OSError:
        return {}  # no squeue here: nothing is queued
    if out.returncode != 0:
        return {} if 'Invalid job id' in out.stderr else NO_ANSWER
    queue = {}
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split('|')]
        if len(parts) == 3:
            queue[parts[0]] = (parts[1], '' if parts[2] in ('None', '(null)') else parts[2])
    return queue


def _job_files(record: dict) -> Tuple[str, str, str]:
    """submitit's result, stdout and stderr files of a recorded job (its first task)."""
    from submitit.core.utils import JobPaths
    paths = JobPaths(record['folder'], job_id=record['job_id'], task_id=0)
    return str(paths.result_pickle), str(paths.stdout), str(paths.stderr)


def last_error_line(*logs: str) -> str:
    """The last ``error: ...`` line of a job's logs (train_net's one-line errors), else the
    last line of a traceback, else ''."""
    lines: List[str] = []
    for log in logs:
        if os.path.isfile(log):
            with open(log, errors='replace') as f:
                lines += [line.rstrip() for line in f if line.strip()]
    errors = [line for line in lines if line.startswith('error: ')]
    if errors:
        return errors[-1]
    tail = [line for line in lines if not line.startswith((' ', '\t', 'Traceback'))]
    exceptions = [line for line in tail if ': ' in line and line.split(':')[0].endswith(
        ('Error', 'Exception', 'Interrupt'))]
    return exceptions[-1] if exceptions else (tail[-1] if tail else '')


def run_status(work_dir: str, record: Optional[dict],
               queue: Union[None, str, Dict[str, Tuple[str, str]]] = None) -> Tuple[str, str]:
    """``(state, detail)`` of a run: ``done`` (its summary.json is written), ``pending``
    (waiting in Slurm's queue, with Slurm's reason: resources, a hold after a requeue, ...),
    ``running`` (Slurm's, or a local job's process alive), ``unknown`` (Slurm did not
    answer), or, for a job that ended without the summary, ``cancelled`` (scancel, a
    preemption that was not requeued), ``timed out`` (its time limit, no more requeues) or
    ``failed`` (the last error line of its log); ``not submitted``. ``queue``: one look's
    :func:`slurm_queue` of every job of the grid (asked for this job alone when not given)."""
    if os.path.isfile(os.path.join(work_dir, 'summary.json')):
        return 'done', os.path.join(work_dir, 'summary.json')
    if record is None:
        return 'not submitted', ''
    job = record['job_id']
    result, stdout, stderr = _job_files(record)
    ended = None
    if record['launcher'] == 'slurm':
        queue = slurm_queue([job]) if queue is None else queue
        if queue == NO_ANSWER:
            return 'unknown', f'Slurm job {job}: squeue did not answer (asked again at the ' \
                              'next look)'
        state, reason = queue.get(job, (None, ''))
        why = f' ({reason})' if reason else ''
        if state in SLURM_WAITING:
            return 'pending', f'Slurm job {job}: {state}{why}'
        if state is not None and state not in SLURM_ENDED and state not in SLURM_FINISHED:
            return 'running', f'Slurm job {job}: {state}'
        ended = SLURM_ENDED.get(state) or _ended_by_slurm(stderr)
    elif not os.path.isfile(result) and _local_alive(record):
        return 'running', f'local job {job}'
    if ended == 'cancelled':
        return 'cancelled', (f'Slurm job {job}: cancelled (scancel, or a preemption not '
                             'requeued); submitting the grid again continues it from its last '
                             f'checkpoint (log: {stderr})')
    if ended == 'timed out':
        return 'timed out', (f'Slurm job {job}: stopped at its time limit and not requeued '
                             'again; submitting the grid again continues it from its last '
                             f'checkpoint (a longer --time needs fewer starts; log: {stderr})')
    why = last_error_line(stderr, stdout) or ('its job ended without a result (killed, or '
                                              'cancelled?)')
    return 'failed', f'job {job}: {why} (log: {stderr})'


def _ended_by_slurm(stderr: str) -> Optional[str]:
    """How Slurm ended a job it no longer lists, from the last line its step daemon wrote
    into the job's log (``*** JOB 7 ON node CANCELLED AT ... [DUE TO TIME LIMIT] ***``);
    ``None`` when it did not end it (the run failed on its own)."""
    if not os.path.isfile(stderr):
        return None
    with open(stderr, errors='replace') as f:
        lines = [line for line in f if ' CANCELLED AT ' in line and '***' in line]
    if not lines or 'DUE TO JOB REQUEUE' in lines[-1]:  # (a requeue starts it again)
        return None
    return 'timed out' if 'DUE TO TIME LIMIT' in lines[-1] else 'cancelled'


def _local_alive(record: dict) -> bool:
    try:
        os.kill(int(record['job_id']), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


__all__ = ['JobBook', 'LAUNCHERS', 'TrainJob', 'last_error_line', 'make_executor',
           'parse_time', 'run_status', 'slurm_queue']
