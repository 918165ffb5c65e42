"""What a run is, recorded in its checkpoints, so that ``--resume`` continues the same run.

A run's fingerprint (:func:`run_fingerprint`) is assembled from what each class declares
changes its result; this module lists no argument names itself:

- the method: :meth:`bikd.method.meta_arch.MultiMemberMetaArch.fingerprint`, the values of its
  ``result_arguments`` (Bi-KD's partition, tie rule, temperature and what is detached; KD's
  teacher; KL+DP's student, ...);
- each member: :meth:`bikd.Member.fingerprint`, its name, type, architecture (every argument
  but those its class declares as ``weight_arguments``) and the weights it started from (those
  arguments, with a SHA-256 of every local file or folder they name);
- the data: :func:`bikd.data.dataset_fingerprint`, the arguments a dataset class declares as
  saying where its data is (``source_arguments``).

The schedule (iterations, learning rate, logging, evaluation) is not part of it: changing
those on resume is allowed. The fingerprint is part of the run state
(:class:`bikd.engine.run_state.RunState`); the suite's runner compares the checkpoint's with
the config's before it resumes (:func:`check_same_run`) and refuses a changed run unless
``resume_changed=true``.
"""
from typing import Any, Dict, List, Optional

from ..data import dataset_fingerprint
from ..errors import UserError
from ..registry import META_ARCH


def run_fingerprint(cfg) -> Dict[str, Any]:
    """The fingerprint of the run a config describes (see the module's description)."""
    model = dict(cfg.get('model') or {})
    method = META_ARCH.get(model['type']) if isinstance(model.get('type'), str) else None
    if hasattr(method, 'fingerprint'):
        out = method.fingerprint(model)
    else:  # a model of another library: its type alone
        out = dict(method=model.get('type'))
    out['data'] = {split: dataset_fingerprint((cfg.get(f'{split}_dataloader') or {})
                                              .get('dataset') or {})
                   for split in ('train', 'val')}
    return out


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

    def shown(values, key):
        return repr(values[key]) if key in values else '(absent)'

    return [f'{key}: {shown(a, key)} -> {shown(b, key)}' for key in sorted(set(a) | set(b))
            if key not in a or key not in b or a[key] != b[key]]


def check_same_run(current: Dict[str, Any], recorded: Optional[Dict[str, Any]],
                   checkpoint: str, allow_changed: bool = False) -> Optional[str]:
    """Compare the run a config describes (``current``) with the one ``checkpoint``
    recorded. A difference is a :class:`~bikd.errors.UserError` listing them, unless
    ``allow_changed`` (then the returned note says what changed); a checkpoint without a
    fingerprint gives a note that it was not checked."""
    if not recorded:
        return (f'{checkpoint} records no run fingerprint of this version (written by an '
                'earlier version or another tool): not checked against the config')
    changed = differences(recorded, current)
    if not changed:
        return None
    listed = '; '.join(changed[:8]) + (f'; ... ({len(changed)} in all)' if len(changed) > 8
                                       else '')
    if allow_changed:
        return f'resume_changed=true: resuming {checkpoint} although the run changed: {listed}'
    raise UserError(f'--resume: the config describes another run than {checkpoint} '
                    f'recorded: {listed}. Resume with the run\'s own config, start a new '
                    'work_dir, or pass resume_changed=true to continue anyway.')


__all__ = ['check_same_run', 'differences', 'run_fingerprint']
