"""Memory a training step or an evaluation holds, measured with public, deterministic means.

Two counters, both keyed by tensor storage (views and tensors sharing memory count once) and
both independent of the machine: they count bytes of tensors whose sizes follow from the
shapes and dtypes alone, never what an allocator or a CPU kernel library chose to reserve.

- :func:`saved_tensors_peak`: the peak of the bytes autograd holds *saved for backward*
  (``torch.autograd.graph.saved_tensors_hooks``): the activations a training step keeps alive
  from its forward to its backward, the memory lean mode is about. On every device.
- :func:`live_tensors_peak`: the peak of the bytes of the tensors that torch functions return
  to Python code (``torch.overrides.TorchFunctionMode``), alive at once: the memory an
  evaluation without gradient holds (features, predictions, running sums). Temporaries a
  single operator allocates and frees inside itself are not seen.

On CUDA the allocator's own peak (``torch.cuda.max_memory_allocated``) adds everything else
(gradients, workspaces); ``tools/benchmark.py`` reports both there.
"""
import weakref
from typing import Callable, Dict, Iterable, Iterator, List, Set, Tuple

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode


def storage_key(t: Tensor) -> Tuple[object, int]:
    """``(key, bytes)`` of the memory ``t`` keeps alive: its storage (shared by its views), or
    for tensors without a plain storage (mkldnn, nested) the tensor itself."""
    try:
        storage = t.untyped_storage()
        return (t.device, storage.data_ptr()), storage.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):
        return ('tensor', id(t)), t.numel() * t.element_size()


def storages_of(tensors: Iterable[Tensor]) -> Set[object]:
    """The storage keys of ``tensors`` (e.g. a model's weights, kept out of a count)."""
    return {storage_key(t)[0] for t in tensors}


class _Ledger:
    """Bytes of distinct storages alive, and their peak."""

    def __init__(self, excluded: Set[object]):
        self.excluded = excluded
        self.count: Dict[object, List[int]] = {}  # key -> [bytes, holders]
        self.now = self.peak = 0

    def hold(self, key: object, nbytes: int) -> None:
        entry = self.count.get(key)
        if entry is not None:
            entry[1] += 1
            return
        self.count[key] = [nbytes, 1]
        self.now += nbytes
        self.peak = max(self.peak, self.now)

    def release(self, key: object) -> None:
        entry = self.count.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self.count[key]
            self.now -= entry[0]


class _Saved:
    """A tensor saved for backward, as autograd holds it while the graph lives."""
    __slots__ = ('tensor', '__weakref__')

    def __init__(self, tensor: Tensor):
        self.tensor = tensor


def saved_tensors_peak(fn: Callable[[], None], exclude: Iterable[Tensor] = ()) -> int:
    """Run ``fn`` and return the peak bytes of the distinct storages autograd held saved for
    backward at once (a graph's saved tensors are released by its backward). Storages of
    ``exclude`` (the model's weights, which a layer saves to compute its input's gradient)
    are not counted."""
    ledger = _Ledger(storages_of(exclude))

    def pack(t: Tensor):
        key, nbytes = storage_key(t)
        if key in ledger.excluded:
            return t
        # detached: a saved output holding its own grad_fn would make a reference cycle
        # through autograd's graph that no collector sees (nodes backward never runs, such as
        # a matching cost's, would then never free their tensors)
        saved = _Saved(t.detach())
        ledger.hold(key, nbytes)
        weakref.finalize(saved, ledger.release, key)
        return saved

    def unpack(saved):
        return saved.tensor if isinstance(saved, _Saved) else saved

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        fn()
    return ledger.peak


def _tensors(obj) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x)


class _LiveTensors(TorchFunctionMode):
    """Tracks every tensor a torch function returns until its Python object dies."""

    def __init__(self, ledger: _Ledger):
        super().__init__()
        self.ledger = ledger
        self.seen: Dict[int, object] = {}  # id -> key of the tensors tracked and alive

    def _forget(self, ident: int, key: object) -> None:
        self.seen.pop(ident, None)
        self.ledger.release(key)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in _tensors(out):
            if id(t) in self.seen:  # in-place operations return their input
                continue
            key, nbytes = storage_key(t)
            if key in self.ledger.excluded:
                continue
            self.seen[id(t)] = key
            self.ledger.hold(key, nbytes)
            weakref.finalize(t, self._forget, id(t), key)
        return out


def live_tensors_peak(fn: Callable[[], None], exclude: Iterable[Tensor] = ()) -> int:
    """Run ``fn`` and return the peak bytes of the distinct storages of the tensors torch
    functions returned during it that were alive at once (the Python objects holding them).
    Meant for code without autograd (evaluation under ``torch.no_grad``): a graph keeps
    tensors alive that no Python object holds. Storages of ``exclude`` are not counted."""
    ledger = _Ledger(storages_of(exclude))
    with _LiveTensors(ledger):
        fn()
    return ledger.peak
