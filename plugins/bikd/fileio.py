"""Writes that never leave a half-written file or folder: write to a temporary one beside it,
then rename it over. A write that fails (a full disk, a read-only folder, a quota) raises
:class:`SaveError`, which names the file it was writing; the file it would have replaced is
left as it was."""
import errno
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

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


@contextmanager
def failures_named(path: str) -> Iterator[None]:
    """An ``OSError`` of the writes inside becomes a :class:`SaveError` naming ``path``."""
    try:
        yield
    except SaveError:
        raise
    except OSError as e:
        raise SaveError(path, e) from e


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path in ``path``'s folder; it replaces ``path`` only on success."""
    path = os.path.abspath(path)
    with failures_named(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    # A unique hidden name in the same folder (same file system, so the rename is atomic),
    # created by the writer with the usual permissions.
    tmp = os.path.join(os.path.dirname(path),
                       f'.{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp')
    try:
        with failures_named(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield an empty temporary folder beside ``path``; once the block has written it, it
    replaces ``path`` (a folder of an earlier write is removed first), so that ``path`` holds a
    complete write or the previous one, never a mix."""
    path = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(path),
                       f'.{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp')
    with failures_named(path):
        os.makedirs(tmp)
    try:
        with failures_named(path):
            yield tmp
        old = None
        if os.path.isdir(path):
            old = tmp + '.old'
            os.replace(path, old)
        os.replace(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


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
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
