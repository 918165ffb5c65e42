"""Every private part of a dependency the suite relies on, fenced in one module.

A private name (``_metadata``, ``numpy._core``, a class's undocumented attribute) can change in
any minor release of its library. Each use lives here, behind a function that says what the
suite needs it for, and :data:`PRIVATE_APIS` lists them all; ``tests/test_compat.py`` checks
every entry against the installed versions (a change fails with a message naming the symbol,
its library and what it serves) and greps the tree so that no private name of a dependency is
used anywhere else. Where a public API does the job the suite uses it instead; each entry says
why there is none.
"""
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple


class CompatibilityError(RuntimeError):
    """A dependency no longer has a private part the suite relies on."""


@dataclass(frozen=True)
class PrivateAPI:
    """One private part of a dependency the suite uses.

    Attributes:
        library: the distribution it belongs to (``torch``, ``mmengine``, ...).
        symbol: the private name, as the code of this module spells it.
        why: what the suite needs it for, and why no public API serves.
        probe: uses it as the suite does, or raises.
    """
    library: str
    symbol: str
    why: str
    probe: Callable[[], None]

    def check(self) -> None:
        """:class:`CompatibilityError`, naming the symbol and its library, when the installed
        version lacks it (or it no longer behaves as the suite uses it)."""
        try:
            self.probe()
        except CompatibilityError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the library changed
            raise _missing(self.library, self.symbol,
                           f'for {self.why} ({type(e).__name__}: {e})') from e


def _version(library: str) -> str:
    try:
        return importlib.import_module(library).__version__
    except Exception:  # noqa: BLE001 - only for the message
        return '(version unknown)'


def _missing(library: str, symbol: str, why: str) -> CompatibilityError:
    return CompatibilityError(
        f'{library} {_version(library)} has no {symbol}, which bikd uses {why}; bikd is tested '
        f'with the versions in its pyproject.toml: install those, or update bikd.compat')


# ----------------------------------------------------------------------------- torch
#: state dicts carry the modules' versions in an ``_metadata`` attribute, which
#: ``Module.load_state_dict`` reads (e.g. batch norm's layout before version 2)
_METADATA = '_metadata'


def state_dict_metadata(state: Any) -> Optional[dict]:
    """The module versions a state dict carries (``None`` when it has none)."""
    return getattr(state, _METADATA, None)


def set_state_dict_metadata(state: Any, metadata: dict) -> None:
    """Give a state dict the module versions ``load_state_dict`` will read."""
    setattr(state, _METADATA, metadata)


def _check_metadata() -> None:
    import torch
    if not hasattr(torch.nn.Linear(1, 1).state_dict(), _METADATA):
        raise _missing('torch', 'OrderedDict._metadata in Module.state_dict()',
                       'to carry module versions from a checkpoint to load_state_dict')


# ----------------------------------------------------------------------------- numpy
#: what numpy arrays and scalars pickle through (mmengine's checkpoints hold some; official
#: Mask2Former .pkl files are made of them): numpy >= 2 names its core ``numpy._core``
NUMPY_CORE = ('numpy._core.multiarray', 'numpy.core.multiarray')
NUMPY_PICKLE_NAMES = ('_reconstruct', 'scalar')


def numpy_pickle_globals() -> List[Any]:
    """The numpy callables an array or a scalar unpickles through, for torch's allow-list of
    ``weights_only`` loading."""
    for module in NUMPY_CORE:
        try:
            core = importlib.import_module(module)
            return [getattr(core, name) for name in NUMPY_PICKLE_NAMES]
        except (ImportError, AttributeError):
            continue
    raise _missing('numpy', f'{" or ".join(NUMPY_CORE)} with {" and ".join(NUMPY_PICKLE_NAMES)}',
                   'to unpickle arrays in checkpoints')


def numpy_pickle_names() -> List[Tuple[str, str]]:
    """``(module, name)`` of the same callables under both of numpy's spellings, for an
    unpickler that allows nothing else."""
    return [(module, name) for module in NUMPY_CORE for name in NUMPY_PICKLE_NAMES]


def _check_numpy() -> None:
    numpy_pickle_globals()


# ----------------------------------------------------------------------------- mmengine
def exclude_history_buffer_methods_from_pickles() -> None:
    """mmengine's ``HistoryBuffer`` pickles its statistics methods (``HistoryBuffer.min``,
    ...) by reference through the builtin ``getattr``, which a ``weights_only`` allow-list must
    not admit (it reaches any attribute); its ``__setstate__`` restores them when absent, so
    the checkpoints written from now on leave them out. mmengine offers no switch for it."""
    from mmengine.logging.history_buffer import HistoryBuffer

    def state_without_methods(self) -> dict:
        state = dict(self.__dict__)
        state.pop('statistics_methods', None)
        return state

    HistoryBuffer.__getstate__ = state_without_methods


def _check_history_buffer() -> None:
    from mmengine.logging.history_buffer import HistoryBuffer
    buffer = HistoryBuffer()
    buffer.__setstate__(dict(buffer.__dict__))  # restores the methods when they are absent
    if not hasattr(HistoryBuffer, '_statistics_methods'):
        raise _missing('mmengine', 'HistoryBuffer._statistics_methods',
                       'to keep method references out of weights-only checkpoints')


def replace_cached_file_backends(old: type, new: Callable[[], Any]) -> None:
    """mmengine caches the file backends it has made (``mmengine.fileio.io.backend_instances``);
    registering a new backend class does not replace those, so each cached instance of ``old``
    is replaced by ``new()``. mmengine has no public way to drop its cache."""
    from mmengine.fileio import io
    for key, backend in list(io.backend_instances.items()):
        if type(backend) is old:
            io.backend_instances[key] = new()


def _check_backend_cache() -> None:
    from mmengine.fileio import io
    if not isinstance(getattr(io, 'backend_instances', None), dict):
        raise _missing('mmengine', 'mmengine.fileio.io.backend_instances',
                       'to make the cached local file backend write atomically')


def count_optimizer_update(wrapper: Any) -> None:
    """Count one training step in an mmengine optimiser wrapper (gradient accumulation)
    without a backward: ``OptimWrapper.backward`` counts as it back-propagates, but the lean
    step back-propagates member by member and a dropped step not at all, and the wrapper has
    no public counter to advance."""
    wrapper._inner_count += 1


def _check_inner_count() -> None:
    import torch
    from mmengine.optim import OptimWrapper
    wrapper = OptimWrapper(torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1))
    if not isinstance(getattr(wrapper, '_inner_count', None), int):
        raise _missing('mmengine', 'OptimWrapper._inner_count',
                       'to count the lean and the dropped steps for gradient accumulation')


def amp_wrapper_without_accelerator(wrapper: Any, dtype: Any) -> None:
    """Finish setting up an mmengine ``AmpOptimWrapper`` on a machine without an accelerator
    (bf16 autocast on CPU), whose constructor mmengine refuses to run there: no loss scaling
    (a disabled scaler, and no argument for its update) and the autocast dtype."""
    import torch
    wrapper._scale_update_param = None
    wrapper.loss_scaler = torch.amp.GradScaler('cpu', enabled=False)
    wrapper.cast_dtype = dtype


def _check_amp_wrapper() -> None:
    import inspect

    from mmengine.optim import AmpOptimWrapper
    if '_scale_update_param' not in inspect.getsource(AmpOptimWrapper.step):
        raise _missing('mmengine', 'AmpOptimWrapper._scale_update_param (read by its step)',
                       'to run bf16 autocast on CPU')


# ----------------------------------------------------------------------------- detectron2
def detectron2_ops_built() -> bool:
    """Whether detectron2's C++ ops are built (a source build, not a stub package of the same
    name): ``detectron2._C`` imports. detectron2 has no public flag for it."""
    try:
        importlib.import_module('detectron2._C')
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------- transformers
#: the methods by which a ``transformers`` image processor class could prepare images
#: otherwise than its backend (its torchvision or PIL one): a class that has none of its own
#: takes the backend's steps, which :mod:`bikd.members.hf.processors` reproduces. The private
#: ones are the backends' steps themselves (transformers 5.x): no public hook names them.
PROCESSOR_METHODS = ('preprocess', '_preprocess', '_preprocess_image_like_inputs', 'resize',
                     'center_crop', 'rescale_and_normalize', '_fuse_mean_std_and_rescale_factor',
                     'rescale', 'normalize', 'pad', 'process_image', '_standardize_kwargs')


def processor_own_methods(cls) -> List[str]:
    """The preprocessing methods of :data:`PROCESSOR_METHODS` that the processor class
    ``cls`` has of its own, beside its backend's (all, for a processor of the older kind that
    derives from no backend)."""
    from transformers.image_processing_backends import PilBackend, TorchvisionBackend
    backend = TorchvisionBackend if issubclass(cls, TorchvisionBackend) else PilBackend
    if not issubclass(cls, backend):
        return ['preprocess']  # a processor of the older kind: it does all its own way
    return [m for m in PROCESSOR_METHODS
            if getattr(cls, m, None) is not getattr(backend, m, None)]


def _check_processor_methods() -> None:
    try:
        from transformers.image_processing_backends import TorchvisionBackend
    except ModuleNotFoundError as e:
        if e.name == 'transformers':
            return  # not installed: nothing of it is used
        raise
    missing = [m for m in PROCESSOR_METHODS if not hasattr(TorchvisionBackend, m)]
    if missing:
        raise _missing('transformers', f'TorchvisionBackend.{missing[0]}',
                       'to tell an image processor that prepares images its own way from one '
                       'that takes its backend\'s steps')


def _check_detectron2() -> None:
    try:
        importlib.import_module('detectron2')
    except ImportError:
        return  # not installed: nothing of it is used
    if not detectron2_ops_built():
        raise _missing('detectron2', 'detectron2._C',
                       'to tell a source build with its C++ ops from a stub package')


#: every private part of a dependency the suite uses (tests/test_compat.py checks the list
#: against the installed versions and against a grep of the tree)
PRIVATE_APIS: List[PrivateAPI] = [
    PrivateAPI('torch', '_metadata', 'module versions of a state dict, which '
               'load_state_dict reads; torch documents no other carrier', _check_metadata),
    PrivateAPI('numpy', 'numpy._core.multiarray._reconstruct / scalar', 'the callables numpy '
               'arrays unpickle through, allow-listed for weights_only loading and read by the '
               'official Mask2Former .pkl reader; numpy has no public name for them',
               _check_numpy),
    PrivateAPI('mmengine', 'HistoryBuffer.__getstate__ / _statistics_methods', 'replaced so '
               'that checkpoints need no getattr in the weights_only allow-list',
               _check_history_buffer),
    PrivateAPI('mmengine', 'mmengine.fileio.io.backend_instances', 'the cache of file '
               'backends, refreshed after the atomic local backend is registered',
               _check_backend_cache),
    PrivateAPI('mmengine', '_inner_count', 'OptimWrapper\'s step counter, advanced by the lean '
               'and the dropped steps', _check_inner_count),
    PrivateAPI('mmengine', '_scale_update_param', 'AmpOptimWrapper\'s scaler argument, set '
               'when the wrapper runs bf16 on CPU', _check_amp_wrapper),
    PrivateAPI('detectron2', 'detectron2._C', 'its C++ ops, which tell a source build from a '
               'stub', _check_detectron2),
    PrivateAPI('transformers', 'TorchvisionBackend._preprocess / '
               '_preprocess_image_like_inputs / _fuse_mean_std_and_rescale_factor / '
               '_standardize_kwargs', 'the image processor backends\' steps, compared with a '
               'processor class\'s own to tell whether it prepares images its own way',
               _check_processor_methods),
]


def check_private_apis() -> Dict[str, str]:
    """Check every entry of :data:`PRIVATE_APIS`; returns symbol -> what failed (empty: all
    present)."""
    problems = {}
    for api in PRIVATE_APIS:
        try:
            api.check()
        except Exception as e:  # noqa: BLE001 - reported, whatever went wrong
            problems[api.symbol] = f'{type(e).__name__}: {e}'
    return problems
