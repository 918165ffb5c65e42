"""What a run reads from disk, checked before anything is spent on it: a grid looks at every
cell's data folders and member weights before it submits a job (one line per missing path,
nothing submitted), instead of learning of a missing checkpoint from failed jobs.

Checked, where a config gives them: each data loader's ``dataset.data_root`` (through
dataset wrappers), each member's weight arguments (``checkpoint``, and whatever a member class
adds to :attr:`bikd.Member.weight_arguments`, e.g. a Hugging Face member's ``model`` folder)
unless the model is built with ``random_init``, and ``load_from``. A value that may be a
hub id (``owner/name``) or a URL is left to the member, which resolves it at run time.
Relative paths are taken from the current folder, as the runs take them.
"""
import os
from typing import Any, List

LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
#: file endings that make a value a path whatever its form
WEIGHT_FILES = ('.pth', '.pt', '.pkl', '.bin', '.safetensors', '.ckpt', '.tar')


def looks_local(value: Any) -> bool:
    """Whether a weights argument names a local file or folder (rather than a URL, a hub id
    ``owner/name`` or a flag)."""
    if not isinstance(value, str) or not value or '://' in value:
        return False
    return (os.path.isabs(value) or value.startswith(('.', '~')) or
            value.endswith(WEIGHT_FILES) or value.count('/') >= 2)


def _plain(value: Any) -> Any:
    return value.to_dict() if hasattr(value, 'to_dict') else value


def missing_inputs(cfg: Any) -> List[str]:
    """One line per path ``cfg`` (a loaded experiment config) names that is not there: the
    config key, and the member it belongs to."""
    lines = []
    for loader in LOADERS:
        dataset, key = _plain((cfg.get(loader) or {}).get('dataset')), f'{loader}.dataset'
        while isinstance(dataset, dict):
            root = dataset.get('data_root')
            if isinstance(root, str) and root and not os.path.isdir(os.path.expanduser(root)):
                lines.append(f'{key}.data_root: no folder {root}')
            dataset, key = dataset.get('dataset'), f'{key}.dataset'
    model = _plain(cfg.get('model')) or {}
    if not model.get('random_init'):
        from ..method.meta_arch import member_class
        for i, member in enumerate(model.get('members') or []):
            for argument in member_class(member).weight_arguments:
                value = member.get(argument)
                if looks_local(value) and not os.path.exists(os.path.expanduser(value)):
                    lines.append(f'model.members.{i}.{argument} (member '
                                 f'{member.get("name", i)!r}): no file or folder {value}')
    load_from = cfg.get('load_from')
    if looks_local(load_from) and not os.path.exists(os.path.expanduser(load_from)):
        lines.append(f'load_from: no file {load_from}')
    return lines
