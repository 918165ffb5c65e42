"""The values of a config that a run reads as numbers, checked when the config is read.

A wrong value (a negative learning rate, a batch of 0, an epoch count of -2, a temperature of
0, an override of a member that does not exist, ...) is a :class:`~bikd.errors.UserError`
that names the key and the value and says what it takes, before anything is built: the
libraries that read them later (torch's optimisers and data loader, mmengine's loops and
hooks) would fail with a traceback, or not at all. :data:`RULES` lists them, with the
patterns of the keys they apply to (``*`` stands for one key or list index).
"""
import math
import numbers
import re
from typing import Any, Callable, Dict, Iterator, List, Tuple

from ..errors import UserError


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and \
        math.isfinite(float(value))


def _integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive(value: Any) -> bool:
    return _number(value) and value > 0


def non_negative(value: Any) -> bool:
    return _number(value) and value >= 0


def unit_interval(value: Any) -> bool:
    return _number(value) and 0 <= value <= 1


def count(value: Any) -> bool:
    """An integer of at least 1."""
    return _integer(value) and value >= 1


def count_or_zero(value: Any) -> bool:
    return _integer(value) and value >= 0


def count_or_never(value: Any) -> bool:
    """An integer of at least 1, or -1 (mmengine's "never" / "all")."""
    return _integer(value) and (value >= 1 or value == -1)


def betas(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and \
        all(_number(v) and 0 <= v < 1 for v in value)


def seed(value: Any) -> bool:
    return _integer(value) and 0 <= value < 2 ** 32


def sizes(value: Any) -> bool:
    """A size: a positive integer, or a list of them."""
    if isinstance(value, (list, tuple)):
        return bool(value) and all(count(v) for v in value)
    return count(value)


LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')

#: (key pattern, check, what the key takes)
RULES: List[Tuple[str, Callable[[Any], bool], str]] = [
    ('optim_wrapper.optimizer.lr', non_negative, 'a learning rate: a number, 0 or more, e.g. 1e-6'),
    ('optim_wrapper.optimizer.weight_decay', non_negative, 'a number, 0 or more'),
    ('optim_wrapper.optimizer.momentum', unit_interval, 'a number from 0 to 1'),
    ('optim_wrapper.optimizer.dampening', unit_interval, 'a number from 0 to 1'),
    ('optim_wrapper.optimizer.betas', betas, 'two numbers from 0 to below 1, e.g. [0.9, 0.999]'),
    ('optim_wrapper.optimizer.eps', positive, 'a small positive number, e.g. 1e-8'),
    ('optim_wrapper.accumulative_counts', count, 'an integer of at least 1'),
    ('optim_wrapper.clip_grad.max_norm', positive, 'a positive number'),
    ('optim_wrapper.clip_grad.norm_type', positive, 'a positive number (2: the L2 norm)'),
    *[(f'{loader}.batch_size', count, 'an integer of at least 1') for loader in LOADERS],
    *[(f'{loader}.num_workers', count_or_zero, 'an integer, 0 or more') for loader in LOADERS],
    *[(f'{loader}.prefetch_factor', count, 'an integer of at least 1') for loader in LOADERS],
    ('train_cfg.max_epochs', count, 'an integer of at least 1'),
    ('train_cfg.max_iters', count, 'an integer of at least 1'),
    ('train_cfg.val_interval', count, 'an integer of at least 1'),
    ('train_cfg.val_begin', count_or_zero, 'an integer, 0 or more'),
    ('default_hooks.checkpoint.interval', count_or_never, 'an integer of at least 1 (-1: never)'),
    ('default_hooks.checkpoint.max_keep_ckpts', count_or_never,
     'an integer of at least 1 (-1: keep all)'),
    ('default_hooks.logger.interval', count, 'an integer of at least 1'),
    ('log_processor.window_size', count, 'an integer of at least 1'),
    ('model.temperature', positive, 'a positive number (the paper: 1)'),
    ('model.members.*.num_classes', count, 'an integer of at least 1'),
    ('model.members.*.input_size', sizes, 'a positive size, e.g. [224, 224]'),
    ('randomness.seed', seed, 'an integer from 0 to 2**32 - 1'),
    ('param_scheduler.*.begin', count_or_zero, 'an integer, 0 or more'),
    ('param_scheduler.*.end', count, 'an integer of at least 1'),
    ('param_scheduler.*.T_max', count, 'an integer of at least 1'),
    ('param_scheduler.*.eta_min', non_negative, 'a number, 0 or more'),
    ('param_scheduler.*.gamma', positive, 'a positive number'),
    ('param_scheduler.*.start_factor', positive, 'a positive number'),
]


_COMPILED = [(re.compile(re.escape(p).replace(r'\*', r'[^.]+')), ok, takes)
             for p, ok, takes in RULES]


def _items(node: Any, prefix: str = '') -> Iterator[Tuple[str, Any]]:
    """Every dotted key of a config with its value (list items by index)."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f'{prefix}.{key}' if prefix else str(key)
            yield path, value
            yield from _items(value, path)
    elif isinstance(node, (list, tuple)) and not all(_number(v) for v in node):
        for i, value in enumerate(node):
            path = f'{prefix}.{i}'
            yield path, value
            yield from _items(value, path)


def check_values(cfg: Any, source: str = 'config') -> None:
    """Every value :data:`RULES` covers is of the kind its key takes, else a
    :class:`~bikd.errors.UserError` naming the key, the value and what it takes (``source``:
    the config file, for the message)."""
    for path, value in _items(cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)):
        if value is None:
            continue
        for pattern, ok, takes in _COMPILED:
            if pattern.fullmatch(path) and not ok(value):
                raise UserError(f'{path}={value!r} ({source}): {path} takes {takes}')


def check_override_paths(cfg: Any, overrides: Dict[str, Any]) -> None:
    """An override that indexes a list reaches an item that exists
    (``model.members.5.checkpoint=...`` on a run of two members is an error naming both)."""
    for key in overrides:
        node, walked = cfg, []
        for part in key.split('.'):
            if isinstance(node, (list, tuple)):
                where = '.'.join(walked)
                if not part.lstrip('-').isdigit():
                    raise UserError(f'override {key}=...: {where} is a list, indexed by '
                                    f'number (0 to {len(node) - 1}), not {part!r}')
                index = int(part)
                if not 0 <= index < len(node):
                    raise UserError(f'override {key}=...: {where} has {len(node)} entries '
                                    f'(0 to {len(node) - 1}), there is no {index}')
                node = node[index]
            elif hasattr(node, 'keys') and part in node:  # (a dict, or mmengine's Config)
                node = node[part]
            else:
                break
            walked.append(part)


__all__ = ['RULES', 'check_override_paths', 'check_values']
