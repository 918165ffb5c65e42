"""The suite's changes to mmengine, applied explicitly by the engine's entry points.

``setup_engine()`` is called by every way of making a model or a run of the suite:
:func:`bikd.build_model` and the suite's runner (:meth:`bikd.engine.BiKDRunner.from_cfg`, also
reached through mmengine's ``RUNNERS.build``); code that drives mmengine's own ``Runner`` with
the suite's configs calls it once first. Importing ``bikd`` changes nothing in mmengine. It
does three things, all idempotent:

* **Resume under torch >= 2.6.** mmengine's checkpoints hold a few of its own objects (the
  message hub's history buffers) and numpy scalars and arrays; ``torch.load(weights_only=True)``
  rejects them, so ``Runner.resume`` fails. The fix allow-lists exactly those classes, it does
  not turn the check off: a checkpoint holding anything else is still refused. A history
  buffer also pickles its statistics methods (``HistoryBuffer.min``, ...) by reference, through
  the builtin ``getattr``, which must not be allow-listed (it would reach any attribute of any
  allowed object); those methods are registered again on import, so checkpoints written from
  then on leave them out (``HistoryBuffer.__setstate__`` restores them when absent).
* **One read of a checkpoint.** mmengine's loader of local files (``CheckpointLoader``'s
  prefix-less scheme) takes the contents from :func:`bikd.checkpoint.read_checkpoint`, which
  the start's checks read already: resuming or loading a run's checkpoint reads its file
  once, digest check included (tensors on the CPU, where the optimiser's load moves them to
  its parameters' device).
* **Atomic writes.** mmengine's local file backend (the prefix-less paths every local run uses)
  is replaced by :class:`AtomicLocalBackend`: checkpoints and every other ``put`` go through
  the suite's atomic writer (:mod:`bikd.fileio`: a temporary file in the same folder, flushed
  to disk and renamed over the target), so a run killed during a save leaves the previous one
  intact and a failed write names its file and cause. A binary ``put`` (a checkpoint) stores
  its SHA-256, computed from the bytes mmengine hands over, beside the file
  (``epoch_3.pth.sha256``), which ``--resume`` verifies before it trusts the file.
"""
import os

import numpy as np
import torch
from mmengine.fileio.backends import LocalBackend, register_backend

from .. import compat
from ..checkpoint import read_checkpoint
from ..fileio import write_bytes


def _numpy_globals():
    dtypes = [type(np.dtype(t)) for t in ('float64', 'float32', 'float16', 'int64', 'int32',
                                          'int16', 'int8', 'uint8', 'bool')]
    return [np.dtype, np.ndarray, *compat.numpy_pickle_globals(), *dtypes]


def allow_mmengine_checkpoints() -> None:
    """Allow-list the classes mmengine writes into checkpoints and keep method references out
    of the checkpoints written from now on."""
    from mmengine.logging.history_buffer import HistoryBuffer
    compat.exclude_history_buffer_methods_from_pickles()
    torch.serialization.add_safe_globals([HistoryBuffer, *_numpy_globals()])


class AtomicLocalBackend(LocalBackend):
    """mmengine's local backend whose writes are atomic (temporary file, fsync, rename)."""

    def put(self, obj: bytes, filepath) -> None:
        write_bytes(obj, str(filepath), digest=True)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        write_bytes(obj.encode(encoding), str(filepath))


def use_atomic_local_writes() -> None:
    """Make :class:`AtomicLocalBackend` mmengine's backend for local paths (also in place of
    the backends mmengine has already made and cached)."""
    register_backend('local', AtomicLocalBackend, force=True, prefixes='')
    compat.replace_cached_file_backends(LocalBackend, AtomicLocalBackend)


def read_checkpoints_once() -> None:
    """Make :func:`bikd.checkpoint.read_checkpoint` mmengine's loader of local checkpoints."""
    from mmengine.runner.checkpoint import CheckpointLoader

    def load_from_local(filename, map_location):  # (the tensors stay on the CPU)
        filename = os.path.expanduser(filename)
        if not os.path.isfile(filename):
            raise FileNotFoundError(f'{filename} can not be found.')
        return read_checkpoint(filename)

    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)


def setup_engine() -> None:
    """Apply the three changes (see the module's description)."""
    allow_mmengine_checkpoints()
    use_atomic_local_writes()
    read_checkpoints_once()
