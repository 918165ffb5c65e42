"""Writes that never leave a half-written file: write to a temporary file, then rename."""
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional

import torch


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path in ``path``'s folder; it replaces ``path`` only on success."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # A unique hidden name in the same folder (same file system, so the rename is atomic),
    # created by the writer with the usual permissions.
    tmp = os.path.join(os.path.dirname(path),
                       f'.{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp')
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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


def read_marker(out: str, marker: str) -> Optional[dict]:
    """The JSON description a generated folder ends with, or ``None`` if it is not complete."""
    path = os.path.join(out, marker)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def staging_dir(out: str) -> str:
    """An empty folder beside ``out`` to write a generated dataset into (see publish_dir)."""
    tmp = out.rstrip('/') + '.partial'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    return tmp


def publish_dir(tmp: str, out: str, info: Optional[dict] = None, marker: str = '') -> None:
    """Write ``info`` as ``<tmp>/<marker>``, then move the fully written folder ``tmp`` to
    ``out`` (replacing it), so that ``out`` appears complete or not at all."""
    if info is not None:
        save_json(info, os.path.join(tmp, marker))
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    os.replace(tmp, out)


def make_dataset_once(out: str, settings: Dict[str, Any], write: Callable[[str], Dict[str, Any]],
                      force: bool = False, marker: str = 'dataset.json') -> Dict[str, Any]:
    """Generate a dataset into ``out`` once, for the tools that make the demos' data.

    ``write(folder)`` writes the data into an empty staging folder and returns facts about it
    (counts); the folder then replaces ``out`` whole, with ``<out>/<marker>`` holding
    ``settings`` and those facts. A complete dataset made with the same ``settings`` is
    returned as it is; one made with other settings is refused (naming the differences)
    unless ``force``, which makes it again.
    """
    settings = json.loads(json.dumps(settings))  # as the marker stores them (lists, not tuples)
    made = read_marker(out, marker)
    if made is not None and not force:
        differ = {k: (made.get(k), v) for k, v in settings.items() if made.get(k) != v}
        if not differ:
            return made
        raise ValueError(
            f'{out} holds data made with other settings ('
            + ', '.join(f'{k}: {old!r} there, {new!r} asked' for k, (old, new) in differ.items())
            + '); pass --force (force=True) to make it again, or choose another folder')
    tmp = staging_dir(out)
    info = dict(settings, **write(tmp))
    publish_dir(tmp, out, info, marker)
    return info
