"""A run that cannot go on for a reason outside the code: a file it must write cannot be
written (a full disk, a folder made read-only), or a file it reads broke. The hooks that save
call :func:`save_failed`; the run stops with :class:`RunStopped` (one line, exit status 2),
or, with the config's ``keep_training_on_save_error: true``, logs a warning and goes on.
"""
from ..errors import UserError

#: the config key that turns a failed save into a warning
KEEP_TRAINING_KEY = 'keep_training_on_save_error'


class RunStopped(UserError):
    """The run cannot go on for a reason outside the code (a file it must write cannot be
    written, a file it reads broke); the message says what and what to do."""


def save_failed(runner, message: str, error: Exception) -> None:
    """A save of the run failed (``message`` says which and what is intact): stop the run
    with :class:`RunStopped`, or with the config's ``keep_training_on_save_error: true`` log a
    warning and go on."""
    if runner.cfg.get(KEEP_TRAINING_KEY, False):
        runner.logger.warning(f'{message}; training goes on ({KEEP_TRAINING_KEY}=true)')
        return
    raise RunStopped(f'{message}. Free space (or make the work_dir writable), then continue '
                     f'with --resume auto; {KEEP_TRAINING_KEY}=true trains on without the '
                     'files that cannot be written') from error
