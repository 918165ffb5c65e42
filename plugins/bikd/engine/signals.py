"""Stop safely on a signal: SIGTERM (what Slurm sends at preemption, ``scancel`` and before its
kill), SIGINT (Ctrl-C) and SIGUSR2 (what a job asks Slurm for before its time limit, as
submitit does) finish the current iteration, write a checkpoint there and end the run.

While a run trains, :class:`StopRequests` holds the handlers of those signals. The first
signal asks for a stop; :class:`SafeStopHook` (the last hook of every iteration) sees it
(under several processes: any process's request, agreed on by all every iteration), writes a
checkpoint at that iteration, ``iter_<I>.pth``, and the run ends with :class:`RunInterrupted`:
one line (``stopped by SIGTERM at epoch E, iteration I; checkpoint <file> written; continue
with --resume auto``) and exit status 128 + the signal's number (143, 130, 140), which
torchrun restarts on and a job script reads as "requeue me". A resume continues with the
next batch of the same epoch (:class:`bikd.engine.loops.BiKDEpochBasedTrainLoop`) and ends as a
run never stopped. During an evaluation the stop comes at once: the checkpoint before it is
complete and a resumed run first runs the evaluation it owed.

A second signal ends the process at once by that signal's own default action, from the
handler (the shell then says 143 or 130, as for a process killed by it): no exception is
raised through code that may be inside a library's native writer (torch's zip writer turns
one into its own error). Every save is atomic, so the last complete checkpoint stays as it
was; the temporary file of a save cut short is removed by the next start. The same signal again
within :data:`REPEAT_WINDOW_S` is the same request forwarded (torchrun passes its own SIGINT
and SIGTERM on to its processes, which Slurm or the terminal have signalled already) and is
not counted. The handlers write with ``os.write``: a buffered ``print`` could be re-entered.

Processes the run forks do not inherit the handlers (``os.register_at_fork``): a pool of
evaluation workers still ends on the SIGTERM its pool sends. Data loader workers ignore the
stop signals (:class:`LoaderWorkerInit`): Slurm and a terminal signal every process, and a
worker that died would fail the batch the run is finishing; they end when the run ends them,
or when it is gone. At its exit the run ends the ones left with SIGKILL (multiprocessing would
send them SIGTERM, which they ignore, and wait).
"""
import os
import signal
import threading
import time
from typing import Callable, Dict, Optional

import torch
import torch.distributed as dist
from mmengine.dist import get_rank, is_distributed
from mmengine.hooks import Hook

from ..registry import HOOKS

#: the signals that stop a run safely
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
#: the same signal again within this many seconds is the same request, forwarded (a launcher
#: passes it on within milliseconds, or a few seconds on a loaded machine)
REPEAT_WINDOW_S = 3.0


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class RunInterrupted(Exception):
    """The run stopped on a signal (``signum``); ``message`` says where and what to do."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def last_marked_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint the work_dir's ``last_checkpoint`` marker names (read, not verified:
    what a handler can afford)."""
    try:
        with open(os.path.join(work_dir, 'last_checkpoint')) as f:
            named = f.read().strip()
    except OSError:
        return None
    return os.path.join(work_dir, os.path.basename(named)) if named else None


def _say(text: str) -> None:
    os.write(2, (text + '\n').encode())


#: the requests whose handlers are installed in this process (``None``: none)
_INSTALLED: Optional['StopRequests'] = None


def _restore_in_child() -> None:
    """After a fork: the child gets back the handlers there were before the run's."""
    if _INSTALLED is not None:
        try:
            _INSTALLED.uninstall()
        except ValueError:  # forked from a thread that is not the main one
            pass


def _end_loader_workers() -> None:
    """At exit: the daemonic children left (data loader workers that ignore SIGTERM) are
    ended with SIGKILL before multiprocessing sends them SIGTERM and waits."""
    import multiprocessing
    children = [c for c in multiprocessing.active_children() if c.daemon]
    if children:  # (torch's SIGCHLD handler would report each as a failed worker)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()


class LoaderWorkerInit:
    """A data loader's ``worker_init_fn`` (wrapping the loader's own) that makes the worker
    ignore the stop signals: the run it serves acts on them (see the module's
    description)."""

    def __init__(self, worker_init_fn: Optional[Callable[[int], None]] = None):
        self.worker_init_fn = worker_init_fn

    def __call__(self, worker_id: int) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if self.worker_init_fn is not None:
            self.worker_init_fn(worker_id)


class StopRequests:
    """The handlers of :data:`STOP_SIGNALS` while a run trains (see the module's
    description); ``signum`` is the first signal received (``None``: none)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self.first_at = 0.0
        self._previous: Dict[int, object] = {}
        self.rank = 0
        self.work_dir = ''
        self.on_abort: Optional[Callable[[], None]] = None

    def install(self, work_dir: str = '', on_abort: Optional[Callable[[], None]] = None) -> bool:
        """Take the signals (only the main thread can; returns whether it did); a second
        signal calls ``on_abort`` (the work_dir given back) before the process ends."""
        global _INSTALLED
        if threading.current_thread() is not threading.main_thread():
            return False
        self.rank, self.work_dir, self.on_abort = get_rank(), work_dir, on_abort
        self.pid = os.getpid()
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        if not getattr(StopRequests, '_hooked', False):
            StopRequests._hooked = True
            os.register_at_fork(after_in_child=_restore_in_child)
            import atexit
            atexit.register(_end_loader_workers)
        _INSTALLED = self
        return True

    def ignore(self) -> None:
        """Ignore further stop signals (the stop's checkpoint is written: the process ends
        on its own, and a launcher's signal must not cut its last lines)."""
        if self._previous:
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)

    def uninstall(self) -> None:
        global _INSTALLED
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        if _INSTALLED is self:
            _INSTALLED = None

    def _handle(self, signum: int, frame=None) -> None:
        if os.getpid() != self.pid:  # (a child forked without the fork hook: as before)
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            os.kill(os.getpid(), signum)
            return
        now = time.monotonic()
        if self.signum is None:
            self.signum, self.first_at = signum, now
            who = f'process {self.rank}: ' if is_distributed() else ''
            _say(f'{who}{signal_name(signum)} received: stopping after this iteration with a '
                 f'checkpoint (a second signal, {REPEAT_WINDOW_S:.0f} s or more after it, stops '
                 'at once, without one)')
            return
        if signum == self.signum and now - self.first_at < REPEAT_WINDOW_S:
            return  # the same request, passed on by a launcher
        if self.rank == 0:
            last = last_marked_checkpoint(self.work_dir)
            _say(f'second {signal_name(signum)}: stopped at once, without a checkpoint at this '
                 'point; ' + (f'the last complete checkpoint is {last}; continue with --resume '
                              'auto' if last else 'no checkpoint had been written'))
        if self.on_abort is not None:
            try:
                self.on_abort()
            except Exception:  # noqa: BLE001 - ending anyway
                pass
        signal.signal(signum, signal.SIG_DFL)  # the process ends by the signal itself
        os.kill(os.getpid(), signum)


@HOOKS.register_module()
class SafeStopHook(Hook):
    """Turns a stop request (:class:`StopRequests`) into a checkpoint at the end of the
    current iteration, or into a stop at once during an evaluation (see the module's
    description). The suite's runner registers it in every run."""
    priority = 'LOWEST'  # after every other hook of the iteration (the checkpoint's too)

    def __init__(self):
        self.requests = StopRequests()
        self._group = None
        self._training = False

    def start(self, runner) -> None:
        """Take the stop signals for the training of ``runner`` (every process calls it:
        under several processes it makes the group the requests are agreed in)."""
        self._training = True
        if is_distributed() and self._group is None:  # agreed on the CPU: no device sync
            self._group = dist.new_group(backend='gloo') \
                if dist.get_backend() != 'gloo' else dist.group.WORLD
        self.requests.install(runner.work_dir, getattr(runner, 'release_work_dir', None))

    def finish(self) -> None:
        """Give the signals back (the end of the training, however it ended)."""
        self._training = False
        self.requests.uninstall()

    def requested(self) -> int:
        """The signal any process received (0: none)."""
        signum = self.requests.signum or 0
        if self._group is None:
            return signum
        flag = torch.tensor([signum], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return int(flag.item())

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        signum = self.requested()
        if not signum:
            return
        from .hooks import find_checkpoint_hook, save_stop_checkpoint
        path = save_stop_checkpoint(runner, find_checkpoint_hook(runner))
        if self._group is not None:  # no process ends (and makes a launcher signal the
            dist.barrier(group=self._group)  # others) before the checkpoint is complete
        self.requests.ignore()
        loop = runner.train_loop
        where = f'iteration {runner.iter + 1} of {loop.max_iters}'
        if hasattr(loop, 'max_epochs'):
            where = f'epoch {runner.epoch + 1} of {loop.max_epochs}, {where}'
        if path is None:
            from ..checkpoint import find_last_checkpoint
            last, _ = find_last_checkpoint(runner.work_dir)
            raise RunInterrupted(signum, f'stopped by {signal_name(signum)} at {where}; its '
                                         'checkpoint could not be written (see the warning '
                                         f'above); the last complete one is {last}; continue '
                                         'with --resume auto')
        raise RunInterrupted(signum, f'stopped by {signal_name(signum)} at {where}; checkpoint '
                                     f'{path} written; continue with --resume auto')

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if not self._training:
            return
        signum = self.requested()
        if not signum:
            return
        from ..checkpoint import find_last_checkpoint
        last, _ = find_last_checkpoint(runner.work_dir) if runner.iter else (None, '')
        if last is None:
            raise RunInterrupted(signum, f'stopped by {signal_name(signum)} during the '
                                         'evaluation before training: nothing was trained; '
                                         'start again with --resume auto')
        raise RunInterrupted(signum, f'stopped by {signal_name(signum)} during the evaluation '
                                     f'at iteration {runner.iter}; its checkpoint {last} is '
                                     'complete; continue with --resume auto (the evaluation '
                                     'runs first)')


def find_safe_stop_hook(runner) -> Optional[SafeStopHook]:
    return next((h for h in runner.hooks if isinstance(h, SafeStopHook)), None)


__all__ = ['LoaderWorkerInit', 'REPEAT_WINDOW_S', 'RunInterrupted', 'STOP_SIGNALS',
           'SafeStopHook', 'StopRequests',
           'find_safe_stop_hook', 'last_marked_checkpoint', 'signal_name']
