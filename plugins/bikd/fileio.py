"""Writes that never leave a half-written file: write to a temporary file, then rename."""
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator

import torch


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path in ``path``'s folder; it replaces ``path`` only on success."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp',
                               dir=os.path.dirname(path))
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_json(obj: Any, path: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=2)
            f.write('\n')


def save_torch(obj: Any, path: str) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def publish_dir(tmp: str, out: str) -> None:
    """Move a fully written folder ``tmp`` to ``out`` (replacing it), so that ``out`` appears
    complete or not at all."""
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    os.replace(tmp, out)
