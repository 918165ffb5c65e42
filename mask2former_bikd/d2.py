"""detectron2 and the official Mask2Former, as the suite finds and loads them: imports with an
install hint, the deformable-attention op or its PyTorch fallback, Mask2Former's configs by
path or by their name in its repository, and official ``.pkl`` checkpoints read without
running pickle code.

Nothing here is needed by the rest of the suite: only the official Mask2Former member and the
detectron2 plug-in import this module.
"""
import contextlib
import importlib.util
import io
import logging
import os
import pickle
import sys
import types
import warnings
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from mmengine.logging import print_log

from bikd import compat
from bikd.errors import UserError
from bikd.fileio import read_verified

INSTALL_HINT = ('install them with `make d2` (or `python tools/install_d2.py`), which builds '
                'detectron2 from source against the installed torch and puts the official '
                'Mask2Former on the path')


def require_detectron2():
    """``detectron2``, or an ImportError that says how to install it."""
    try:
        import detectron2  # noqa: F401
    except ImportError as e:
        raise ImportError(f'the official Mask2Former needs detectron2 ({e}); {INSTALL_HINT}') \
            from e
    if not compat.detectron2_ops_built():  # a stub package of the same name
        raise ImportError(f'the official Mask2Former needs detectron2 built with its C++ ops '
                          f'(the installed one has none); {INSTALL_HINT}')
    return sys.modules['detectron2']


#: the name Mask2Former's deformable-attention function imports its compiled op under
MSDA_MODULE = 'MultiScaleDeformableAttention'
_fallback_said = False


def deformable_attention_backend() -> str:
    """``'compiled op'`` when Mask2Former's CUDA op is built, else ``'PyTorch fallback'``.

    Without the op, Mask2Former's own code refuses to import; it runs its PyTorch version
    (``ms_deform_attn_core_pytorch``) whenever calling the op fails. An empty module under
    the op's name lets it import, so every call takes that fallback (also on CPU, where the
    compiled CUDA op could not run anyway)."""
    module = sys.modules.get(MSDA_MODULE)
    if module is None and importlib.util.find_spec(MSDA_MODULE) is None:
        module = types.ModuleType(MSDA_MODULE)
        module.__doc__ = ('bikd: stand-in for Mask2Former\'s deformable-attention op, which is '
                          'not built here; Mask2Former runs its PyTorch fallback')
        module.bikd_fallback = True
        sys.modules[MSDA_MODULE] = module
    elif module is None:
        module = importlib.import_module(MSDA_MODULE)
    return 'PyTorch fallback' if getattr(module, 'bikd_fallback', False) else 'compiled op'


def import_mask2former():
    """The official ``mask2former`` package (registers its models in detectron2), saying once
    which deformable attention it runs."""
    global _fallback_said
    require_detectron2()
    backend = deformable_attention_backend()
    # Mask2Former (2022) calls torch.cuda.amp.autocast, which torch now deprecates in favour of
    # torch.amp.autocast; the warning is about their code and repeats at every step.
    warnings.filterwarnings('ignore', message=r'`torch\.cuda\.amp\.autocast',
                            category=FutureWarning)
    # and its Swin backbone imports timm's old module path, which timm now warns about
    warnings.filterwarnings('ignore', message=r'Importing from timm\.models\.layers',
                            category=FutureWarning)
    try:
        import mask2former
    except ImportError as e:
        raise ImportError(f'the official Mask2Former is not importable ({e}); {INSTALL_HINT}') \
            from e
    if not _fallback_said:
        _fallback_said = True
        print_log(f'Mask2Former multi-scale deformable attention: {backend}'
                  + (' (its CUDA op is not built; set it up with Mask2Former\'s '
                     'mask2former/modeling/pixel_decoder/ops/make.sh to use it on a GPU)'
                     if backend == 'PyTorch fallback' else ''), logger='current',
                  level=logging.INFO)
    return mask2former


def mask2former_root() -> str:
    """The Mask2Former checkout (its ``configs/`` folder is there)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(import_mask2former().__file__)))


def resolve_config(config: str) -> str:
    """A detectron2 config of Mask2Former: a path, or a name relative to the Mask2Former
    repository (``configs/ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml``)."""
    if os.path.isfile(config):
        return os.path.abspath(config)
    in_repo = os.path.join(mask2former_root(), config)
    if os.path.isfile(in_repo):
        return in_repo
    raise FileNotFoundError(f'Mask2Former config not found: {config} (neither a file nor a '
                            f'config of the Mask2Former repository, {in_repo})')


def load_d2_config(config: str, opts: Optional[Sequence[Any]] = None):
    """The detectron2 config (a ``CfgNode``) of a Mask2Former model: detectron2's defaults,
    DeepLab's and Mask2Former's additions, the file and ``opts`` (``['KEY', value, ...]``).

    A config of your own may name a Mask2Former config as its ``_BASE_`` by its name in the
    repository (``_BASE_: configs/ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml``,
    as ``configs/ade20k/members/maskformer2_r18_tiny.yaml`` does), or a file beside it that does
    so in turn. Mask2Former's own configs
    compute a value with a YAML ``!!python/object/apply:eval`` tag; such tags are honoured only
    in files of the Mask2Former repository, any other file is read with a safe loader."""
    import_mask2former()
    from detectron2.config import CfgNode, get_cfg
    from detectron2.projects.deeplab import add_deeplab_config
    from mask2former import add_maskformer2_config

    path = resolve_config(config)
    trusted = os.path.commonpath([path, mask2former_root()]) == mask2former_root()
    own = {}
    if not trusted:
        import yaml
        with open(path) as f:
            own = yaml.safe_load(f) or {}
    base = own.pop('_BASE_', None)
    if base:  # a file beside this one (which may name its own bases either way) or a name
        # in the Mask2Former repository
        beside = os.path.join(os.path.dirname(path), base)
        cfg = load_d2_config(beside if os.path.isfile(beside) else base)
        cfg.merge_from_other_cfg(CfgNode(own))
    else:
        cfg = get_cfg()
        add_deeplab_config(cfg)
        add_maskformer2_config(cfg)
        with _quiet_trusted_load(path if trusted else ''):
            cfg.merge_from_file(path, allow_unsafe=trusted)
    if opts:
        cfg.merge_from_list([str(o) if not isinstance(o, str) else o for o in opts])
    return cfg


class _TrustedLoad(logging.Filter):
    """Drops fvcore's warning that a config is read with ``yaml.unsafe_load``, for a file of
    the Mask2Former repository (the only files read so, see :func:`load_d2_config`): printed
    at every read, it told a user of a safe-loading suite that their machine may be at risk."""

    def filter(self, record: logging.LogRecord) -> bool:
        return 'unsafe_load' not in record.getMessage()


@contextlib.contextmanager
def _quiet_trusted_load(path: str):
    logger, quiet = logging.getLogger('fvcore.common.config'), _TrustedLoad()
    if path:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers; any other object is refused."""
    ALLOWED = {('numpy', 'ndarray'), ('numpy', 'dtype'), ('collections', 'OrderedDict'),
               *compat.numpy_pickle_names()}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f'{module}.{name}')


def load_pickle(path: str, trust: bool = False) -> Any:
    """An official ``.pkl`` checkpoint (pickled numpy arrays in dicts), read once: checked
    against the digest written beside it, if any, from the same bytes it is unpickled from.
    Anything else in the file is refused, naming it, unless ``trust`` (only for files from a
    source you trust)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    with io.BytesIO(read_verified(path)) as f:
        if trust:
            return pickle.load(f, encoding='latin1')
        try:
            return _ArraysOnly(f, encoding='latin1').load()
        except pickle.UnpicklingError as e:
            raise UserError(
                f'refusing to load {path}: it holds a Python object of type {e} beyond numpy '
                'arrays and plain containers, and unpickling it could run arbitrary code. If '
                'you trust the file, pass trust_checkpoint=True.') from e


def pickle_state(data: Any, source: str):
    """A loaded ``.pkl`` -> ``(flat state dict of tensors, needs name matching)``, as
    detectron2's checkpointer reads them: a detectron2-format file (``model`` and
    ``__author__``) has the model's own names; other files (ImageNet backbones converted for
    detectron2, Caffe2 models) are matched to the model by name heuristics."""
    if not isinstance(data, dict):
        raise UserError(f'{source} holds no state dict')
    if 'model' in data and '__author__' in data:
        state, heuristics = data['model'], bool(data.get('matching_heuristics', False))
    else:
        state, heuristics = data.get('blobs', data), True
        state = {k: v for k, v in state.items() if not k.endswith('_momentum')}
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise UserError(f'{source}: {key} is a {type(value).__name__}, not an array')
        out[key] = value
    return out, heuristics
