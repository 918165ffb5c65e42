"""The one atomic writer of the suite: every file a run, an export or a tool writes goes to a
temporary file (or folder) beside its target and is renamed over it once complete, so a kill
or a failed write never leaves a half-written file, and the file it would have replaced is
left as it was.

A write that fails for a reason outside the code (a full disk, a read-only folder, a quota)
raises :class:`SaveError`, which names the file and the cause (``ENOSPC``, ``EROFS``, ...),
whatever library did the writing: an ``OSError`` keeps its ``errno``; an error of another
type (torch's ``RuntimeError`` "unexpected pos" when its zip writer hits a full disk, a
safetensors error) is put down to the folder's state when the folder is full or not
writable, and is otherwise a bug that keeps its traceback.

Temporary names are ``.<name>.<pid>.<id>.tmp``: :func:`remove_stale_temporaries` removes the
ones a killed process left (the next start of a run calls it on the whole work_dir).
"""
import errno
import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional

import torch


class SaveError(OSError):
    """A write of ``path`` failed with ``cause``; the file it would have replaced is intact.
    Keeps the cause's ``errno`` (``ENOSPC``, ``EROFS``, ``EDQUOT``, ...)."""

    def __init__(self, path: str, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause), path)
        self.path, self.cause = path, cause

    def __str__(self) -> str:
        code = errno.errorcode.get(self.errno or 0)
        return f'cannot write {self.path}: {self.strerror}' + (f' ({code})' if code else '')


def folder_cannot_take_writes(folder: str) -> Optional[OSError]:
    """Why nothing more can be written in ``folder`` (full, read-only, not writable), as the
    ``OSError`` a write would have raised; ``None`` when it looks writable."""
    try:
        st = os.statvfs(folder)
    except OSError as e:
        return e
    if st.f_flag & os.ST_RDONLY:
        return OSError(errno.EROFS, os.strerror(errno.EROFS))
    if not os.access(folder, os.W_OK | os.X_OK):
        return OSError(errno.EACCES, os.strerror(errno.EACCES))
    if st.f_bavail == 0 or (st.f_files and st.f_favail == 0):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


@contextmanager
def failures_named(path: str) -> Iterator[None]:
    """A failed write inside becomes a :class:`SaveError` naming ``path`` and the cause (see
    the module's description); other errors pass unchanged."""
    try:
        yield
    except SaveError:
        raise
    except OSError as e:
        raise SaveError(path, e) from e
    except Exception as e:  # noqa: BLE001 - a library's own error type for a failed write
        cause = folder_cannot_take_writes(os.path.dirname(os.path.abspath(path)))
        if cause is None:
            raise
        raise SaveError(path, cause) from e


def temporary_name(path: str) -> str:
    """The temporary sibling of ``path`` an atomic write goes through."""
    return os.path.join(os.path.dirname(path),
                        f'.{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp')


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


@contextmanager
def atomic_write(path: str, folder: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (an empty folder with ``folder=True``); once the
    block has written it, it replaces ``path`` (a folder of an earlier write is moved aside
    first and removed after), so that ``path`` holds a complete write or the previous one,
    never a mix. Failures are :class:`SaveError`\\ s naming ``path``."""
    path = os.path.abspath(path)
    tmp = temporary_name(path)
    with failures_named(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if folder:
            os.makedirs(tmp)
    try:
        with failures_named(path):
            yield tmp
            old = None
            if folder and os.path.isdir(path):
                old = temporary_name(path)
                os.replace(path, old)
            os.replace(tmp, path)
        if old:
            _remove(old)
    finally:
        _remove(tmp)


def atomic_path(path: str):
    """:func:`atomic_write` of a file."""
    return atomic_write(path)


def atomic_dir(path: str):
    """:func:`atomic_write` of a folder."""
    return atomic_write(path, folder=True)


def write_bytes(data: bytes, path: str) -> None:
    """``data`` to ``path`` atomically and durably (flushed to disk before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def save_json(obj: Any, path: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=2)
            f.write('\n')


def save_text(text: str, path: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, 'w') as f:
            f.write(text)


def save_torch(obj: Any, path: str) -> None:
    """``torch.save`` atomically and durably. torch writes through the open file, so a write
    that fails is the file system's ``OSError``."""
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())


#: what :func:`temporary_name` makes: the hidden name, the writer's pid, a random id
TEMPORARY = re.compile(r'^\..+\.(\d+)\.[0-9a-f]{8}\.tmp(?:\.old)?$')


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def remove_stale_temporaries(folder: str) -> List[str]:
    """Remove the temporary files and folders of atomic writes that a killed process left
    anywhere under ``folder`` (those of processes still running are kept); returns them."""
    removed = []
    for parent, dirs, files in os.walk(folder):
        for name in list(dirs) + files:
            m = TEMPORARY.match(name)
            if not m:
                continue
            pid = int(m.group(1))
            if pid != os.getpid() and _process_exists(pid):
                continue  # its writer is still running
            path = os.path.join(parent, name)
            _remove(path)
            removed.append(path)
            if name in dirs:
                dirs.remove(name)
    return removed
