"""A work_dir belongs to one run: :class:`WorkDirOwner` holds it for the run's whole life.

A training run takes ``<work_dir>/owner.lock`` before it writes anything there and gives it
back when it ends (all processes of one run count as one owner: process 0 holds it). A second
start into a held work_dir is refused in one line that names the holder (host, process, Slurm
job and restart, torchrun restart, since when, last sign of life).

How a holder is known to be gone, without trusting locks that a shared file system may not
carry between machines (NFS, Lustre mounted ``localflock``):

- The file is created whole or not at all: written under a temporary name, then hard-linked to
  ``owner.lock``, which fails if the name exists (atomic on local file systems, NFS and Lustre).
- The holder touches it every :data:`HEARTBEAT_S` seconds. Its age is read against the file
  server's clock (the modification time of a file the reader has just written in the same
  folder), so clocks that differ between machines do not matter.
- On the holder's own machine: it is gone when its process is (the process id and the
  process's start time, so a reused id does not count).
- The same Slurm job at a later restart (``SLURM_RESTART_COUNT``), or the same torchrun run at
  a later restart (``TORCHELASTIC_RUN_ID``, ``TORCHELASTIC_RESTART_COUNT``): the holder is
  this job's earlier start, which the scheduler ended before starting this one, so a requeued
  or restarted job takes its own work_dir back at once, on any node.
- Anywhere else: gone after :func:`stale_after` seconds without a sign of life (300 by
  default, ``BIKD_OWNER_STALE_S``), the guarantee on a shared file system for a holder whose
  machine was lost. Taking a stale lock over is itself serialised (``owner.lock.takeover``,
  created exclusively), so two starts cannot both take it.
"""
import json
import os
import os.path as osp
import socket
import sys
import threading
import time
import uuid
from typing import Optional

from ..errors import UserError

#: the file that says who holds a work_dir
OWNER_FILE = 'owner.lock'
#: how often the holder shows a sign of life (seconds)
HEARTBEAT_S = 30.0
#: how long a takeover may hold its guard before another start may break it (seconds)
TAKEOVER_GUARD_S = 60.0


def stale_after() -> float:
    """Seconds without a sign of life after which a holder on another machine is taken to be
    gone (``BIKD_OWNER_STALE_S``, default 300: a heartbeat every 30 s, plus the minute NFS
    may cache a file's attributes)."""
    value = os.environ.get('BIKD_OWNER_STALE_S', '300')
    try:
        seconds = float(value)
    except ValueError:
        raise UserError(f'BIKD_OWNER_STALE_S={value!r}: give seconds, e.g. 300') from None
    if seconds <= 0:
        raise UserError(f'BIKD_OWNER_STALE_S={value!r}: give a positive number of seconds')
    return seconds


def _process_start(pid: int) -> Optional[str]:
    """The start time of process ``pid`` in clock ticks since boot (``None``: no such
    process, or no /proc to tell)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(')') + 2:].split()
    if fields and fields[0] == 'Z':  # a zombie: ended, not yet reaped
        return None
    return fields[19] if len(fields) > 19 else None


def _process_alive(pid: int, start: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's: it exists
    now = _process_start(pid)
    if osp.isdir('/proc') and now is None:
        return False
    return start is None or now is None or now == start


def _env_int(name: str) -> Optional[int]:
    value = os.environ.get(name)
    return int(value) if value is not None and value.isdigit() else None


def identity() -> dict:
    """Who this process is, as a holder: host, process, its start, Slurm's job and restart,
    torchrun's run and restart, the command and when."""
    run_id = os.environ.get('TORCHELASTIC_RUN_ID')
    return dict(host=socket.gethostname(), pid=os.getpid(), pid_start=_process_start(os.getpid()),
                slurm_job=os.environ.get('SLURM_JOB_ID'),
                slurm_restart=_env_int('SLURM_RESTART_COUNT') or 0,
                torchrun_run=run_id if run_id and run_id != 'none' else None,
                torchrun_restart=_env_int('TORCHELASTIC_RESTART_COUNT') or 0,
                command=' '.join(osp.basename(a) if i == 0 else a
                                 for i, a in enumerate(sys.argv))[:300],
                since=time.strftime('%Y-%m-%d %H:%M:%S'), token=uuid.uuid4().hex)


def describe(holder: dict, age: Optional[float] = None) -> str:
    """``pid 1234 on node7 (Slurm job 42, restart 0), since ...; last sign of life 12 s ago``"""
    jobs = []
    if holder.get('slurm_job'):
        jobs.append(f'Slurm job {holder["slurm_job"]}, restart {holder.get("slurm_restart", 0)}')
    if holder.get('torchrun_run'):
        jobs.append(f'torchrun run {holder["torchrun_run"]}, restart '
                    f'{holder.get("torchrun_restart", 0)}')
    text = f'pid {holder.get("pid")} on {holder.get("host")}' + \
        (f' ({"; ".join(jobs)})' if jobs else '') + f', since {holder.get("since")}'
    if age is not None:
        text += f', last sign of life {age:.0f} s ago'
    return text


class WorkDirHeld(UserError):
    """The work_dir is held by another run that is alive (or not yet known to be gone)."""


class WorkDirOwner:
    """Holds ``work_dir`` for one run (see the module's description): :meth:`acquire` before
    anything is written, :meth:`release` at the end (also at the process's exit)."""

    def __init__(self, work_dir: str):
        self.work_dir = osp.abspath(work_dir)
        self.path = osp.join(self.work_dir, OWNER_FILE)
        self.me = identity()
        self.held = False
        #: what :meth:`acquire` found and took over ('' when the work_dir was free)
        self.took_over = ''
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ reading the holder
    def _read(self) -> Optional[dict]:
        try:
            with open(self.path) as f:  # (opening revalidates NFS's cached attributes)
                text = f.read()
                mtime = os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
            if not isinstance(holder, dict):
                raise ValueError
        except ValueError:
            holder = dict(pid=None, host='?', since='?', token=None)
        holder['_mtime'] = mtime
        return holder

    def _server_now(self) -> float:
        """The file server's clock: the modification time of a file just written here."""
        probe = osp.join(self.work_dir, f'.owner-clock.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp')
        try:
            with open(probe, 'w') as f:
                f.write('.')
                return os.fstat(f.fileno()).st_mtime
        finally:
            try:
                os.remove(probe)
            except OSError:
                pass

    def _gone(self, holder: dict) -> str:
        """Why ``holder`` no longer holds the work_dir ('' when it may still)."""
        me = self.me
        if holder.get('token') is None:
            return 'its owner file is not readable (written by something else?)'
        if holder.get('host') == me['host'] and isinstance(holder.get('pid'), int):
            if holder['pid'] == me['pid']:
                return 'it was taken by an earlier run of this same process'
            if not _process_alive(holder['pid'], holder.get('pid_start')):
                return f'its process {holder["pid"]} on this machine has ended'
            return ''
        if me['slurm_job'] and holder.get('slurm_job') == me['slurm_job'] and \
                int(holder.get('slurm_restart') or 0) < me['slurm_restart']:
            return (f'it is the earlier start of this Slurm job {me["slurm_job"]} (restart '
                    f'{holder.get("slurm_restart")}, now {me["slurm_restart"]})')
        if me['torchrun_run'] and holder.get('torchrun_run') == me['torchrun_run'] and \
                int(holder.get('torchrun_restart') or 0) < me['torchrun_restart']:
            return (f'it is the earlier start of this torchrun run {me["torchrun_run"]} '
                    f'(restart {holder.get("torchrun_restart")}, now {me["torchrun_restart"]})')
        age = self._server_now() - holder['_mtime']
        limit = stale_after()
        if age > limit:
            return f'it has shown no sign of life for {age:.0f} s (more than {limit:.0f} s)'
        return ''

    # ------------------------------------------------------------------ taking it
    def _write_new(self) -> str:
        tmp = osp.join(self.work_dir, f'.{OWNER_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp')
        with open(tmp, 'w') as f:
            json.dump(self.me, f, indent=1)
            f.write('\n')
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def _link(self) -> bool:
        """Create the owner file whole if there is none; whether this start made it."""
        tmp = self._write_new()
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:
            # NFS may report a failed link that happened: the link count tells
            return os.stat(tmp).st_nlink == 2
        finally:
            os.remove(tmp)

    def _take_over(self, holder: dict) -> bool:
        """Replace a gone holder's file, one start at a time."""
        guard = self.path + '.takeover'
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                if self._server_now() - os.stat(guard).st_mtime > TAKEOVER_GUARD_S:
                    os.remove(guard)  # a takeover that died half-way
            except FileNotFoundError:
                pass
            return False
        os.close(fd)
        try:
            now = self._read()
            if now is not None and now.get('token') != holder.get('token'):
                return False  # someone else took it meanwhile
            tmp = self._write_new()
            os.replace(tmp, self.path)
            return True
        finally:
            os.remove(guard)

    def acquire(self) -> 'WorkDirOwner':
        """Hold the work_dir, or raise :class:`WorkDirHeld` naming its holder."""
        for _ in range(20):
            if self._link():
                break
            holder = self._read()
            if holder is None:
                continue  # released meanwhile
            why = self._gone(holder)
            if not why:
                age = self._server_now() - holder['_mtime']
                raise WorkDirHeld(
                    f'work_dir {self.work_dir} is held by another run: {describe(holder, age)}. '
                    'Let it finish, or choose another work_dir=...; if that run is gone (its '
                    f'machine lost), the work_dir is free after {stale_after():.0f} s without a '
                    f'sign of life, or remove {self.path}')
            if self._take_over(holder):
                self.took_over = f'{describe(holder)}: {why}'
                break
            time.sleep(0.2)
        else:
            raise WorkDirHeld(f'work_dir {self.work_dir}: could not take {self.path} (other '
                              'starts keep taking it); try again')
        current = self._read()
        if current is None or current.get('token') != self.me['token']:
            raise WorkDirHeld(f'work_dir {self.work_dir} was taken by another start at the same '
                              'moment: ' + (describe(current) if current else 'unknown'))
        self.held = True
        self._thread = threading.Thread(target=self._beat, name='bikd-owner-heartbeat',
                                        daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def still_held(self) -> bool:
        """Whether the owner file is still this run's."""
        holder = self._read()
        return holder is not None and holder.get('token') == self.me['token']

    def release(self) -> None:
        """Give the work_dir back (only the file this run wrote is removed)."""
        self._stop.set()
        if not self.held:
            return
        self.held = False
        try:
            if self.still_held():
                os.remove(self.path)
        except OSError:
            pass


__all__ = ['OWNER_FILE', 'WorkDirHeld', 'WorkDirOwner', 'describe', 'identity', 'stale_after']
