"""The suite's one type of user error.

A :class:`UserError` says that something the user gave is wrong: a config key or value, a
file, a checkpoint, a flag, a dataset's layout. It is raised where that input is checked, and
its message names the key, file or member at fault and what to do. The tools print it as one
line and exit with status 2 (``--debug`` shows the traceback); so are ``OSError``\\ s of the
files a run reads and writes (a missing dataset folder, a full disk).

Anything else is a bug of the code, not of the input: it shows its traceback and exits with
status 1, and the work_dir is left as it is for diagnosis. So an input check raises a
``UserError`` (or a subclass), never a bare ``ValueError`` or ``KeyError``; those stay for
what a caller of the Python API does wrong with the code itself.

``UserError`` derives from ``ValueError`` so that code which caught the ``ValueError`` of an
input check before keeps working.
"""


class UserError(ValueError):
    """Something the user gave is wrong; the message names it and says what to do."""


class ToolExit(Exception):
    """Ends a tool with ``exit_status`` and its message on stderr: neither an input error nor
    a bug of this process (e.g. a training run the tool started stopped on a signal, or
    failed and has shown its own traceback)."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


def error_message(error: BaseException) -> str:
    """The message of an error for its one line: a ``KeyError``'s without quotes, and of an
    error that a data loader worker raised, the original error's last line (not the worker's
    traceback)."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    if 'Original Traceback' in message:  # re-raised by torch's DataLoader from a worker
        last = [line for line in message.strip().splitlines() if line.strip()][-1]
        message = last.split(': ', 1)[1] if ': ' in last else last
    return message


__all__ = ['ToolExit', 'UserError', 'error_message']
