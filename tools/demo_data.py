"""The demos' generated datasets (digits, the ADE20K and DHF1K toys): each is written once
into a staging folder and published whole, with a marker file holding the settings it was made
with, so that an interrupted write never leaves a half dataset and a folder made with other
settings is not silently reused."""
import json
import os
import shutil
from typing import Any, Callable, Dict, Optional

from bikd.fileio import save_json


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
