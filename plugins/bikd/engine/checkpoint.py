"""Resuming mmengine checkpoints under torch >= 2.6's ``weights_only`` loading.

mmengine's checkpoints hold a few of its own objects (the message hub's history buffers) and
numpy scalars and arrays; ``torch.load(weights_only=True)`` rejects them, so ``Runner.resume``
fails. The fix is to allow-list exactly those classes, not to turn the check off: a
checkpoint holding anything else is still refused.

One more obstacle: a history buffer pickles its statistics methods (``HistoryBuffer.min``,
...) by reference, through the builtin ``getattr``, which must not be allow-listed (it would
reach any attribute of any allowed object). Those methods are class-level and registered again
on import, so our checkpoints leave them out; ``HistoryBuffer.__setstate__`` already restores
them when they are absent.
"""
import numpy as np
import torch


def _numpy_globals():
    out = [np.dtype, np.ndarray]
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    out += [_reconstruct, scalar]
    out += [type(np.dtype(t)) for t in ('float64', 'float32', 'float16', 'int64', 'int32',
                                         'int16', 'int8', 'uint8', 'bool')]
    return out


def _history_buffer_state(self) -> dict:
    state = dict(self.__dict__)
    state.pop('statistics_methods', None)
    return state


def allow_mmengine_checkpoints() -> None:
    """Allow-list the classes mmengine writes into checkpoints and keep method references out
    of the checkpoints written from now on (idempotent)."""
    from mmengine.logging.history_buffer import HistoryBuffer
    HistoryBuffer.__getstate__ = _history_buffer_state
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is None:  # torch < 2.4 loads everything anyway
        return
    add([HistoryBuffer, *_numpy_globals()])
