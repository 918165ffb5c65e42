"""Reading weights users give: safe by default, with errors that name what is wrong."""
import os
from collections import OrderedDict
from typing import Dict, Iterable, Optional

import torch
from torch import Tensor, nn

# Keys under which common training codes nest the weights (timm / DeiT / MAE: 'model',
# mmengine and Lightning: 'state_dict', some EMA exports: 'state_dict_ema' is not taken).
NESTED_KEYS = ('state_dict', 'model', 'module', 'net')


def load_weights_file(path: str, trust: bool = False) -> Dict[str, Tensor]:
    """Read a checkpoint file and return its flat state dict.

    Loads with ``weights_only=True``: a file that needs arbitrary Python objects to unpickle is
    refused unless ``trust=True`` (only for files from a source you trust).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    try:
        obj = torch.load(path, map_location='cpu', weights_only=not trust)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        if not trust and 'weights_only' in str(e):
            raise RuntimeError(
                f'refusing to load {path}: it contains Python objects beyond tensors and plain '
                'containers, and unpickling them could run arbitrary code. If you trust the file, '
                'pass trust_checkpoint=True.') from e
        raise RuntimeError(f'cannot read checkpoint {path}: {e}') from e
    return _flat_state_dict(obj, path)


def download_weights(url: str, owner: str, alternatives: str,
                     trust: bool = False) -> Dict[str, Tensor]:
    """The flat state dict at ``url`` (torch.hub's cache, or a download when reachable), loaded
    as :func:`load_weights_file` loads files; if it cannot be had, an error naming the member
    ``owner`` and what to pass instead (``alternatives``)."""
    try:
        obj = torch.hub.load_state_dict_from_url(url, map_location='cpu', weights_only=not trust)
    except Exception as e:  # noqa: BLE001 - network failures come in many types
        raise RuntimeError(f'member {owner!r}: could not download {url} ({type(e).__name__}: '
                           f'{e}); without access, pass {alternatives}') from e
    return _flat_state_dict(obj, url)


def _flat_state_dict(obj, source: str) -> Dict[str, Tensor]:
    """Unnest the weights (``NESTED_KEYS``), check they are tensors, drop DDP's ``module.``."""
    for key in NESTED_KEYS:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise RuntimeError(f'{source} holds no state dict (a mapping of parameter names to '
                           'tensors)')
    out = OrderedDict((_strip_prefix(k, ('module.', )), v) for k, v in obj.items())
    metadata = getattr(obj, '_metadata', None)
    if metadata is not None:  # the modules' versions, which some modules read when loading
        out._metadata = OrderedDict((_strip_prefix(k, ('module.', )), v)
                                    for k, v in metadata.items())
    return out


def _strip_prefix(key: str, prefixes: Iterable[str]) -> str:
    for p in prefixes:
        if key.startswith(p):
            return key[len(p):]
    return key


def load_into(module: nn.Module, state_dict: Dict[str, Tensor], source: str,
              strict: bool = True, owner: Optional[str] = None) -> None:
    """Load ``state_dict`` into ``module``; on a mismatch, list missing, unexpected and
    wrongly shaped keys and name the file (``source``) and the member (``owner``)."""
    own = module.state_dict()
    shape_errors = [f'{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                    for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if shape_errors or (strict and (missing or unexpected)):
        who = f' for member {owner!r}' if owner else ''
        lines = [f'checkpoint {source} does not fit the model{who} '
                 f'({type(module).__name__}); is it for another architecture?']
        for title, keys in (('missing keys', missing), ('unexpected keys', unexpected),
                            ('shape mismatches', shape_errors)):
            if keys:
                shown = ', '.join(keys[:10]) + (f', ... ({len(keys)} in all)' if len(keys) > 10
                                                 else '')
                lines.append(f'  {title}: {shown}')
        raise RuntimeError('\n'.join(lines))
    module.load_state_dict(state_dict, strict=strict)
