"""What a run is, recorded in its checkpoints, so that ``--resume`` continues the same run.

A run's fingerprint (:func:`run_fingerprint`) holds what makes its weights mean what they mean:
the method (the meta-architecture's type), the partition and the temperature; each member's
name, type, architecture (every argument of its config but where its weights come from) and
the weights it started from (the ``checkpoint`` argument, with a SHA-256 of the file's content
when it is a local file, or ``random_init``); and the data roots of the training and
validation sets. The schedule (iterations, learning rate, logging, evaluation) is not part of
it: changing those on resume is allowed.

:class:`RunFingerprintHook` (registered in every run by the suite's runner) writes it into each
checkpoint's ``meta``; ``train_net --resume`` compares it with the config's before anything
runs (:func:`check_same_run`) and refuses a changed run unless ``resume_changed=true``.
"""
import hashlib
import os
from typing import Any, Dict, List, Optional, Tuple

from mmengine.hooks import Hook

from ..registry import HOOKS

#: the key of a checkpoint's ``meta`` that holds the fingerprint
META_KEY = 'bikd_run'
#: member arguments that say where its weights come from, not what it is
WEIGHT_KEYS = ('checkpoint', 'pretrained', 'trust_checkpoint')
#: dataset arguments that say where the data is
DATA_KEYS = ('data_root', 'datasets_root', 'root', 'dataset', 'split', 'data_prefix')

_hashes: Dict[Tuple[str, int, float], str] = {}


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's content (remembered per path, size and modification time)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime)
    if key not in _hashes:
        digest = hashlib.sha256()
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                digest.update(block)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def _plain(value: Any) -> Any:
    """Config values as JSON-like plain data (mmengine's ConfigDict and tuples unwrapped)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _weights(member: dict, random_init: bool) -> Dict[str, Any]:
    if random_init:
        return dict(source='random_init')
    source = member.get('checkpoint')
    if not source:
        return dict(source='pretrained' if member.get('pretrained', True) else 'random')
    out = dict(source=str(source))
    if isinstance(source, str) and os.path.isfile(source):
        out['sha256'] = file_sha256(source)
    elif isinstance(source, str) and os.path.isdir(source):  # a save_pretrained folder
        out['sha256'] = {name: file_sha256(os.path.join(source, name))
                         for name in sorted(os.listdir(source))
                         if os.path.isfile(os.path.join(source, name))}
    return out


def run_fingerprint(cfg) -> Dict[str, Any]:
    """The fingerprint of the run a config describes (see the module's description)."""
    model = cfg.get('model') or {}
    random_init = bool(model.get('random_init', False))
    members = []
    for i, m in enumerate(model.get('members') or []):
        m = _plain(m)
        members.append(dict(
            name=m.get('name', f'member {i}'), type=m.get('type'),
            architecture={k: v for k, v in sorted(m.items())
                          if k not in WEIGHT_KEYS + ('name', 'type')},
            weights=_weights(m, random_init)))
    data = {}
    for split in ('train', 'val'):
        dataset = (cfg.get(f'{split}_dataloader') or {}).get('dataset') or {}
        while isinstance(dataset.get('dataset'), dict):  # a wrapper (SkipBadSamples, ...)
            dataset = dataset['dataset']
        data[split] = {k: _plain(dataset[k]) for k in DATA_KEYS if k in dataset}
    return dict(method=model.get('type'), partition=model.get('partition'),
                temperature=model.get('temperature'), members=members, data=data)


def _flatten(value: Any, prefix: str = '') -> Dict[str, Any]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f'{prefix}.{k}' if prefix else str(k)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{v.get('name', i)}]"))
        return out
    return {prefix: value}


def differences(recorded: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """``'key: recorded -> now'`` for every entry that differs (members by name)."""
    a, b = _flatten(recorded), _flatten(current)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, '(absent)') != b.get(key, '(absent)'):
            out.append(f'{key}: {a.get(key, "(absent)")!r} -> {b.get(key, "(absent)")!r}')
    return out


def check_same_run(cfg, checkpoint_meta: Optional[dict], checkpoint: str,
                   allow_changed: bool = False) -> Optional[str]:
    """Compare the config's run with the one ``checkpoint`` recorded. A difference is a
    ``ValueError`` listing them, unless ``allow_changed`` (then the returned note says what
    changed); a checkpoint without a fingerprint gives a note that it was not checked."""
    recorded = (checkpoint_meta or {}).get(META_KEY)
    if recorded is None:
        return (f'{checkpoint} records no run fingerprint (written by an earlier version or '
                'another tool): not checked against the config')
    changed = differences(recorded, run_fingerprint(cfg))
    if not changed:
        return None
    listed = '; '.join(changed[:8]) + (f'; ... ({len(changed)} in all)' if len(changed) > 8
                                       else '')
    if allow_changed:
        return f'resume_changed=true: resuming {checkpoint} although the run changed: {listed}'
    raise ValueError(f'--resume: the config describes another run than {checkpoint} '
                     f'recorded: {listed}. Resume with the run\'s own config, start a new '
                     'work_dir, or pass resume_changed=true to continue anyway.')


@HOOKS.register_module()
class RunFingerprintHook(Hook):
    """Writes the run's fingerprint (:func:`run_fingerprint` of the runner's config) into
    every checkpoint's ``meta``. The suite's runner registers it in every run."""
    priority = 'VERY_LOW'

    def __init__(self):
        self._fingerprint: Optional[dict] = None

    def before_run(self, runner) -> None:
        self._fingerprint = run_fingerprint(runner.cfg)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self._fingerprint is None:
            self._fingerprint = run_fingerprint(runner.cfg)
        checkpoint.setdefault('meta', {})[META_KEY] = self._fingerprint
