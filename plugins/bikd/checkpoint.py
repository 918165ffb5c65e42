"""Checkpoint files, in one place: reading the weights users give (safe by default), loading
them with errors that name what does not fit, peeking into a runner checkpoint without reading
its tensors, and a work_dir's checkpoints (which one ``--resume`` continues from, what an
interrupted save left behind).

Two kinds of files pass through here: a *member's* weights in its native layout (a timm state
dict, a release file; :func:`load_weights_file`, :func:`load_into`) and a *runner* checkpoint
of mmengine holding every member's (``state_dict`` with ``members.<i>.`` keys, ``meta``,
optimiser and random states; :func:`peek_checkpoint`, :func:`check_checkpoint_fits`,
:func:`find_last_checkpoint`). Writing is atomic everywhere (:mod:`bikd.fileio`).
"""
import glob
import io
import os
import os.path as osp
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import compat
from .errors import UserError
from .fileio import (UNVERIFIED, VERIFIED, file_key, file_sha256, read_verified,
                     recorded_digest, verify)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be used (unreadable, truncated, of another kind); the
    message names it and says what to pass instead."""


# Keys under which common training codes nest the weights (timm / DeiT / MAE: 'model',
# mmengine and Lightning: 'state_dict'; some EMA exports' 'state_dict_ema' is not taken).
NESTED_KEYS = ('state_dict', 'model', 'module', 'net')
#: DDP's prefix of a wrapped module's keys
DDP_PREFIX = 'module.'


# ----------------------------------------------------------------------------- member weights
def load_weights_file(path: str, trust: bool = False) -> Dict[str, Tensor]:
    """Read a checkpoint file and return its flat state dict.

    Loads with ``weights_only=True``: a file that needs arbitrary Python objects to unpickle is
    refused unless ``trust=True`` (only for files from a source you trust). A file with a
    digest beside it (what the suite writes: exports, ``best/``, runner checkpoints) is
    verified first; a mismatch is an error naming the file and both digests.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    data = read_verified(path)  # the one read: digested, checked, then loaded from memory
    try:
        obj = torch.load(io.BytesIO(data), map_location='cpu', weights_only=not trust)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        if not trust and 'weights_only' in str(e):
            raise CheckpointError(
                f'refusing to load {path}: it contains Python objects beyond tensors and plain '
                'containers, and unpickling them could run arbitrary code. If you trust the file, '
                'pass trust_checkpoint=True.') from e
        raise unreadable(path, e) from e
    return flat_state_dict(obj, path)


def unreadable(path: str, error: Exception) -> CheckpointError:
    """The error for a checkpoint file torch cannot load, saying so when it is cut short."""
    with open(path, 'rb') as f:
        head = f.read(4)
    cut = not head or (head.startswith(b'PK') and not checkpoint_is_complete(path))
    hint = '; the file is cut short (an interrupted download or copy?)' if cut else ''
    return CheckpointError(f'cannot read checkpoint {path}: {error}{hint}')


def check_readable(path: str, given_as: str = 'load_from') -> Optional[dict]:
    """A runner checkpoint that exists and that torch can read, else an error that names it,
    before a runner is built around it. Returns its contents (:func:`read_checkpoint`: the
    file's one read); ``None`` for a URL, left to mmengine's loader."""
    if '://' in path:
        return None
    if osp.isdir(path) or not osp.isfile(path):
        raise FileNotFoundError(f'{given_as}={path}: ' + ('a folder, not a checkpoint file'
                                                          if osp.isdir(path) else
                                                          'checkpoint file not found'))
    return read_checkpoint(path)


#: the runner checkpoint read last (file version -> contents): every check of a start and
#: mmengine's own load take it from here, so the file is read once
_read: Dict[tuple, dict] = {}


def read_checkpoint(path: str) -> dict:
    """A runner checkpoint's contents (tensors on the CPU), read once per version of the file:
    its bytes read in one pass, checked against the digest written with them
    (:func:`bikd.fileio.read_verified`), then unpickled from memory with torch's
    ``weights_only`` loader (the classes mmengine writes allow-listed by
    :func:`bikd.engine.patches.setup_engine`). The last one read is kept, for the start's
    checks, mmengine's load (:func:`bikd.engine.patches.setup_engine` routes local files
    here) and the evaluation's iteration, until :func:`forget_checkpoints`. An unreadable
    file is an error naming it."""
    key = file_key(path)
    if key in _read:
        return _read[key]
    data = read_verified(path, check=lambda data: _check_complete(path, data))
    try:
        contents = torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise unreadable(path, e) from e
    del data
    _read.clear()
    _read[key] = contents
    return contents


class IncompleteCheckpoint(CheckpointError):
    """A checkpoint file cut short (a write, download or copy interrupted)."""


def _check_complete(path: str, data: bytes) -> None:
    if not _zip_complete(io.BytesIO(data)):
        raise IncompleteCheckpoint(f'cannot read checkpoint {path}: the file is cut short (an '
                                   'interrupted write, download or copy?)')


def _zip_complete(source) -> bool:
    try:
        with zipfile.ZipFile(source) as z:
            return bool(z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def forget_checkpoints() -> None:
    """Let the checkpoint kept by :func:`read_checkpoint` go (once it is loaded)."""
    _read.clear()


def download_weights(url: str, owner: str, alternatives: str,
                     trust: bool = False) -> Dict[str, Tensor]:
    """The flat state dict at ``url`` (torch.hub's cache, or a download when reachable), loaded
    as :func:`load_weights_file` loads files; if it cannot be had, an error naming the member
    ``owner`` and what to pass instead (``alternatives``)."""
    try:
        obj = torch.hub.load_state_dict_from_url(url, map_location='cpu', weights_only=not trust)
    except Exception as e:  # noqa: BLE001 - network failures come in many types
        raise CheckpointError(f'member {owner!r}: could not download {url} ({type(e).__name__}: '
                              f'{e}); without access, pass {alternatives}') from e
    return flat_state_dict(obj, url)


def flat_state_dict(obj, source: str) -> Dict[str, Tensor]:
    """Unnest the weights (``NESTED_KEYS``), check they are tensors, drop DDP's ``module.``."""
    for key in NESTED_KEYS:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f'{source} holds no state dict (a mapping of parameter names to '
                              'tensors)')
    out = OrderedDict((strip_prefix(k, (DDP_PREFIX, )), v) for k, v in obj.items())
    metadata = compat.state_dict_metadata(obj)
    if metadata is not None:  # the modules' versions, which some modules read when loading
        compat.set_state_dict_metadata(out, OrderedDict(
            (strip_prefix(k, (DDP_PREFIX, )), v) for k, v in metadata.items()))
    return out


def strip_prefix(key: str, prefixes: Iterable[str]) -> str:
    for p in prefixes:
        if key.startswith(p):
            return key[len(p):]
    return key


def state_dict_diff(own: Dict[str, Tensor], state: Dict[str, object]
                    ) -> Tuple[List[str], List[str], List[str]]:
    """What keeps ``state`` from loading into a module whose state dict is ``own``: its
    missing keys, unexpected keys and shape mismatches (``'key: file (..) vs model (..)'``)."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f'{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}'
              for k, v in own.items()
              if k in state and hasattr(state[k], 'shape') and tuple(state[k].shape) !=
              tuple(v.shape)]
    return missing, unexpected, shapes


def load_into(module: nn.Module, state_dict: Dict[str, Tensor], source: str,
              owner: Optional[str] = None) -> None:
    """Load ``state_dict`` into ``module``, every key; on a mismatch, list missing, unexpected
    and wrongly shaped keys and name the file (``source``) and the member (``owner``)."""
    missing, unexpected, shapes = state_dict_diff(module.state_dict(), state_dict)
    who = f' for member {owner!r}' if owner else ''
    if unexpected and all(k.startswith('members.') for k in unexpected) and \
            not any(k.startswith('members.') for k in module.state_dict()):
        raise CheckpointError(f'{source} is the checkpoint of a whole bikd run (its keys are '
                              f'members.<i>.*), not the weights of one member{who}: continue '
                              'the run with load_from=... or --resume, or export its members '
                              'with tools/export_members.py and give one of those files')
    if missing or unexpected or shapes:
        lines = [f'checkpoint {source} does not fit the model{who} '
                 f'({type(module).__name__}); is it for another architecture?']
        for title, keys in (('missing keys', sorted(missing)),
                            ('unexpected keys', sorted(unexpected)),
                            ('shape mismatches', shapes)):
            if keys:
                shown = ', '.join(keys[:10]) + (f', ... ({len(keys)} in all)' if len(keys) > 10
                                                else '')
                lines.append(f'  {title}: {shown}')
        raise CheckpointError('\n'.join(lines))
    module.load_state_dict(state_dict)


# ----------------------------------------------------------------------------- runner checkpoints
def checkpoint_is_complete(path: str) -> bool:
    """Whether a checkpoint file is whole: torch's zip format ends with its directory, which a
    write cut short lacks (checked without reading the tensors)."""
    return _zip_complete(path)


def peek_checkpoint(path: str) -> Optional[dict]:
    """A runner checkpoint's contents (:func:`read_checkpoint`: the file's one read); ``None``
    for a file that is not a loadable checkpoint (mmengine's loader reports it itself)."""
    try:
        data = read_checkpoint(path)
    except (UserError, OSError):  # any unreadable file: nothing to tell from it here
        return None
    return data if isinstance(data, dict) else None


def checkpoint_iteration(path: str) -> Optional[int]:
    """The training iteration an mmengine checkpoint was saved at (``meta.iter``), if any."""
    meta = (peek_checkpoint(path) or {}).get('meta', {})
    return int(meta['iter']) if isinstance(meta, dict) and 'iter' in meta else None


def check_checkpoint_fits(model, path: str, allow_partial: bool = False,
                          given_as: str = 'load_from',
                          hint: str = 'Set load_partial=true to load what fits and keep the rest '
                                      'as built.') -> None:
    """``load_from`` (or what ``given_as`` names) must hold every weight of the model and no
    other (a 2-member run's checkpoint in a 3-member config would leave a member with random
    weights): else a ``ValueError`` listing the members and keys at fault, unless
    ``allow_partial``. One model's weights given for a whole run are named as such."""
    if allow_partial:
        return
    state = peek_checkpoint(path)
    state = state.get('state_dict', state) if state is not None else None
    if not isinstance(state, dict):
        return
    state = {strip_prefix(k, (DDP_PREFIX, )): v for k, v in state.items()}
    missing, unexpected, shapes = state_dict_diff(model.state_dict(), state)
    if not (missing or unexpected or shapes):
        return
    if state and not any(k.startswith('members.') for k in state):
        raise CheckpointError(f'{given_as}={path} holds the weights of one model (keys like '
                              f'{next(iter(state))}), not the checkpoint of a bikd run: give a '
                              'checkpoint of the run (<work_dir>/epoch_N.pth or iter_N.pth), or '
                              'this file as a member\'s checkpoint: model.members.<i>.checkpoint')
    names = list(getattr(model, 'member_names', []))

    def by_member(keys):
        out = {}
        for k in keys:
            parts = k.split('.')
            who = names[int(parts[1])] if parts[0] == 'members' and parts[1].isdigit() and \
                int(parts[1]) < len(names) else '.'.join(parts[:2])
            out.setdefault(who, []).append(k)
        return '; '.join(f'{w}: {len(ks)} key(s), e.g. {ks[0]}' for w, ks in out.items())

    problems = ([f'missing from it: {by_member(missing)}'] if missing else []) + \
        ([f'not in the model: {by_member(unexpected)}'] if unexpected else []) + \
        ([f'shapes differ: {"; ".join(shapes[:3])}'] if shapes else [])
    raise CheckpointError(f'{given_as}={path} does not fit the model (members {names}): '
                          f'{" | ".join(problems)}. {hint}')


def find_last_checkpoint(work_dir: str) -> Tuple[Optional[str], str]:
    """The checkpoint a run in ``work_dir`` continues from, and a note when it is not simply
    the one the ``last_checkpoint`` marker names (:func:`last_good_checkpoint`, whose
    verification lines the note ends with). ``(None, why)`` when there is none."""
    found = last_good_checkpoint(work_dir)
    return found.path, '\n'.join(([found.why] if found.why else []) + found.skipped)


@dataclass
class FoundCheckpoint:
    """What :func:`last_good_checkpoint` found: ``path`` (``None``: nothing to continue
    from), ``why`` (a note when it is not simply the marker's file, or why there is none),
    ``skipped`` (one line per checkpoint skipped because it does not match its digest) and
    ``verification`` (:data:`~bikd.fileio.VERIFIED`, or :data:`~bikd.fileio.UNVERIFIED` for a
    file written without a digest)."""
    path: Optional[str]
    why: str = ''
    skipped: List[str] = field(default_factory=list)
    verification: str = UNVERIFIED


def _checkpoint_files(work_dir: str) -> List[str]:
    """The work_dir's checkpoint files, newest first (whole or not: :func:`_try_checkpoint`
    tells, when a file's turn comes)."""
    return sorted(glob.glob(osp.join(work_dir, '*.pth')), key=osp.getmtime, reverse=True)


def last_good_checkpoint(work_dir: str, read: bool = False) -> FoundCheckpoint:
    """The checkpoint a run in ``work_dir`` continues from: the one the ``last_checkpoint``
    marker names, unless it is missing, cut short or does not match its digest; then the
    newest complete checkpoint of the folder that matches its own (or has none).

    The marker is read as the name of a file of ``work_dir`` (mmengine writes an absolute
    path): a work_dir that was copied or moved continues from its own checkpoint, never from
    the folder it was copied from, and the note says so. Every candidate is verified against
    the digest written with it (:func:`bikd.fileio.verify`: the whole file is read); one that
    does not match is skipped with a line naming it and both digests, never resumed. With
    ``read`` the one found is also loaded (:func:`read_checkpoint`: its verification is that
    read, so a resume reads the file once)."""
    marker = osp.join(work_dir, 'last_checkpoint')
    named, problem, first, outside = '', '', None, ''
    if osp.isfile(marker):
        with open(marker) as f:
            named = f.read().strip()
    if named:
        own = osp.join(work_dir, osp.basename(named))
        elsewhere = osp.dirname(named) and osp.realpath(osp.dirname(named)) != \
            osp.realpath(work_dir)
        outside = (f'the last_checkpoint marker names {named}, outside {work_dir} (a copied '
                   'or moved work_dir?), which is not used') if elsewhere else ''
        if osp.isfile(own):
            first = own  # (whether it is whole is seen when it is tried, below)
            problem = (f'the last_checkpoint marker names {named}, outside this work_dir: '
                       f'continuing from this work_dir\'s own {osp.basename(named)}'
                       if elsewhere else '')
        else:
            problem = outside or f'the last_checkpoint marker names {own}, which does not exist'
    elif osp.isfile(marker):
        problem = f'the last_checkpoint marker in {work_dir} is empty'
    else:
        problem = f'no last_checkpoint marker in {work_dir}'
    candidates = ([first] if first else []) + [p for p in _checkpoint_files(work_dir)
                                               if p != first]
    skipped: List[str] = []
    for path in candidates:  # each opened once, when its turn comes
        try:
            verification = _try_checkpoint(path, read)
        except IncompleteCheckpoint:
            if path == first:
                problem = outside or f'the last checkpoint {path} is incomplete (a write cut ' \
                                     'short)'
            continue
        except CheckpointError:
            raise  # whole, matching its digest (or without one), and torch cannot load it
        except UserError as e:  # it differs from its digest, or its digest file is damaged
            skipped.append(f'skipped: {e}')
            continue
        if path == first:
            return FoundCheckpoint(path, problem, skipped, verification)
        if skipped:
            why = f'resuming from the newest checkpoint that matches its digest, {path}'
        else:
            why = f'{problem}; resuming from the newest complete checkpoint {path}'
        return FoundCheckpoint(path, why, skipped, verification)
    if skipped:
        return FoundCheckpoint(None, f'no checkpoint in {work_dir} matches its digest', skipped)
    return FoundCheckpoint(None, problem)


def _try_checkpoint(path: str, read: bool) -> str:
    """Whether a candidate can be continued from: :data:`~bikd.fileio.VERIFIED` or
    :data:`~bikd.fileio.UNVERIFIED`; an :class:`IncompleteCheckpoint` when it is cut short, a
    :class:`~bikd.fileio.DigestMismatch` when it differs from its digest. With ``read`` it is
    also loaded (:func:`read_checkpoint`), the one read doing all of it."""
    if read:
        read_checkpoint(path)
        return UNVERIFIED if recorded_digest(path) is None else VERIFIED
    if not checkpoint_is_complete(path):
        raise IncompleteCheckpoint(f'{path} is cut short')
    return verify(path)


# ----------------------------------------------------------------------------- digests
def weights_digest(source) -> Optional[object]:
    """The content digest of what a weights argument names: a local file's SHA-256 (the one
    written beside it, which loading checks, else computed, or remembered from the read that
    loaded it), or a folder's (a ``save_pretrained`` folder) SHA-256 per file; ``None`` for
    anything else (a URL, a hub id, a flag)."""
    if not isinstance(source, str):
        return None
    if osp.isfile(source):
        return recorded_digest(source) or file_sha256(source)
    if osp.isdir(source):
        return {name: file_sha256(osp.join(source, name)) for name in sorted(os.listdir(source))
                if osp.isfile(osp.join(source, name))}
    return None
