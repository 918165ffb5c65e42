"""The suite's changes to mmengine, applied explicitly by the engine's entry points.

``setup_engine()`` is called by every way of making a model or a run of the suite:
:func:`bikd.build_model` and the suite's runner (:meth:`bikd.engine.BiKDRunner.from_cfg`, also
reached through mmengine's ``RUNNERS.build``); code that drives mmengine's own ``Runner`` with
the suite's configs calls it once first. Importing ``bikd`` changes nothing in mmengine. It
does two things, both idempotent:

* **Resume under torch >= 2.6.** mmengine's checkpoints hold a few of its own objects (the
  message hub's history buffers) and numpy scalars and arrays; ``torch.load(weights_only=True)``
  rejects them, so ``Runner.resume`` fails. The fix allow-lists exactly those classes, it does
  not turn the check off: a checkpoint holding anything else is still refused. A history
  buffer also pickles its statistics methods (``HistoryBuffer.min``, ...) by reference, through
  the builtin ``getattr``, which must not be allow-listed (it would reach any attribute of any
  allowed object); those methods are registered again on import, so checkpoints written from
  then on leave them out (``HistoryBuffer.__setstate__`` restores them when absent).
* **Atomic writes.** mmengine's local file backend (the prefix-less paths every local run uses)
  is replaced by :class:`AtomicLocalBackend`: checkpoints and every other ``put`` go through
  the suite's atomic writer (:mod:`bikd.fileio`: a temporary file in the same folder, flushed
  to disk and renamed over the target), so a run killed during a save leaves the previous one
  intact and a failed write names its file and cause. A binary ``put`` (a checkpoint) stores
  its SHA-256, computed from the bytes mmengine hands over, beside the file
  (``epoch_3.pth.sha256``), which ``--resume`` verifies before it trusts the file.
"""
import numpy as np
import torch
from mmengine.fileio.backends import LocalBackend, register_backend

from .. import compat
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


def setup_engine() -> None:
    """Apply both changes (see the module's description)."""
    allow_mmengine_checkpoints()
    use_atomic_local_writes()
