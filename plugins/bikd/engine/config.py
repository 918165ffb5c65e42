"""Experiment configs: YAML with ``_base_`` inheritance, read with a safe loader.

YAML files are parsed with a safe loader (no Python objects can be constructed from a
config); the one addition is the tag ``!tuple`` (``scale: !tuple [2048, 512]``) for arguments
that must be tuples, which YAML itself cannot express. ``_base_`` entries are YAML files
relative to the including file, or mmengine config references such as ``mmseg::mask2former/...py`` (configs shipped inside an installed package),
which mmengine reads. Code is imported from a config only through its explicit
``custom_imports`` list.
"""
import difflib
import inspect
import os
import warnings
from typing import Any, Dict, Sequence

import yaml
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.utils import import_modules_from_strings

from ..registry import accepted_arguments

YAML_SUFFIXES = ('.yaml', '.yml')


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus ``!tuple``."""


ConfigLoader.add_constructor(
    '!tuple', lambda loader, node: tuple(loader.construct_sequence(node, deep=True)))


def _read_yaml(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f'config file not found: {path}')
    with open(path) as f:
        try:
            data = yaml.load(f, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader
        except yaml.YAMLError as e:
            raise ValueError(f'cannot parse config {path}: {e}') from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f'config {path} must hold a mapping at the top level')
    return data


def _load_dict(path: str, stack: Sequence[str] = ()) -> Dict[str, Any]:
    path = os.path.abspath(path)
    if path in stack:
        raise ValueError(f'circular _base_ chain: {" -> ".join(list(stack) + [path])}')
    if not path.endswith(YAML_SUFFIXES):
        return Config.fromfile(path, import_custom_modules=False).to_dict()
    data = _read_yaml(path)
    bases = data.pop('_base_', [])
    bases = [bases] if isinstance(bases, str) else list(bases)
    merged: Dict[str, Any] = {}
    for base in bases:
        if '::' in base:  # a config shipped in a package, e.g. mmseg::mask2former/x.py
            base_dict = Config.fromfile(base, import_custom_modules=False).to_dict()
        else:
            base_dict = _load_dict(os.path.join(os.path.dirname(path), base), [*stack, path])
        merged = Config._merge_a_into_b(base_dict, merged)
    return Config._merge_a_into_b(data, merged)


def parse_overrides(pairs: Sequence[str]) -> Dict[str, Any]:
    """``['a.b=1', 'c=[1, 2]']`` -> ``{'a.b': 1, 'c': [1, 2]}``; values are YAML scalars/lists."""
    out = {}
    for pair in pairs:
        if '=' not in pair:
            raise ValueError(f'override {pair!r} is not of the form key=value')
        key, value = pair.split('=', 1)
        out[key.strip()] = yaml.load(value, Loader=ConfigLoader) if value.strip() else None
    return out


def load_config(path: str, overrides: Sequence[str] = (), import_modules: bool = True) -> Config:
    """Read an experiment config, apply ``key=value`` overrides (dotted keys; list items by
    index, e.g. ``model.members.0.pretrained=false``) and import its ``custom_imports``."""
    cfg = Config(_load_dict(path), filename=os.path.abspath(path))
    if overrides:
        cfg.merge_from_dict(parse_overrides(overrides), allow_list_keys=True)
    _move_step_policy(cfg, path)
    if import_modules and cfg.get('custom_imports'):
        import_modules_from_strings(**cfg['custom_imports'])
    check_keys(cfg, path, members=import_modules)
    return cfg


#: Keys of the non-finite-loss policy, which moved from the model to the optimiser wrapper.
STEP_POLICY_KEYS = ('nonfinite_policy', 'max_nonfinite_in_a_row')


def _move_step_policy(cfg: Config, path: str) -> None:
    """``model.nonfinite_policy`` / ``model.max_nonfinite_in_a_row`` (bikd 0.1) are now
    ``optim_wrapper.*``: whether a step updates the weights is the optimiser wrapper's
    decision. Older configs and overrides keep working, with a warning."""
    model = cfg.get('model')
    moved = [k for k in STEP_POLICY_KEYS if isinstance(model, dict) and k in model]
    if not moved:
        return
    wrapper = cfg.setdefault('optim_wrapper', {})
    for key in moved:
        wrapper[key] = model.pop(key)
    warnings.warn(f'config {path}: model.{", model.".join(moved)} moved to optim_wrapper.'
                  f'{", optim_wrapper.".join(moved)}; taken from there', FutureWarning)


#: Top-level keys mmengine's Runner (``Runner.from_cfg``, ``wrap_model``) and this suite read.
TOP_LEVEL_KEYS = frozenset({
    'model', 'work_dir', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'train_cfg',
    'val_cfg', 'test_cfg', 'auto_scale_lr', 'optim_wrapper', 'param_scheduler',
    'val_evaluator', 'test_evaluator', 'default_hooks', 'custom_hooks', 'data_preprocessor',
    'load_from', 'resume', 'launcher', 'env_cfg', 'log_processor', 'log_level', 'visualizer',
    'default_scope', 'randomness', 'experiment_name', 'model_wrapper_cfg',
    'find_unused_parameters', 'compile', 'sync_bn', 'activation_checkpointing',
    'efficient_conv_bn_eval', 'custom_imports',
    # tools/run_experiment.py: a method's own optimiser or schedule (method -> config keys)
    'method_recipes'})


class ConfigKeyError(KeyError):
    """A config key that nothing reads (printed without KeyError's quotes)."""

    def __str__(self) -> str:
        return str(self.args[0])


def _suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ''


def _check_arguments(section: dict, registry, where: str, path: str) -> None:
    cls = registry.get(section.get('type')) if isinstance(section.get('type'), str) else None
    if cls is None or not inspect.isclass(cls):
        return  # an unknown type is reported when it is built
    valid = accepted_arguments(cls)
    for key in section:
        if key not in ('type', '_scope_') and key not in valid:
            raise ConfigKeyError(f'config {path}: {where}.{key} is not an argument of '
                                 f'{cls.__name__}{_suggest(key, valid)}')


def check_keys(cfg: Config, path: str, members: bool = True) -> None:
    """A misspelt key is an error that names it and suggests the closest valid one: top-level
    keys, the meta-architecture's arguments and, with ``members``, each member's."""
    for key in cfg.keys():
        if key not in TOP_LEVEL_KEYS:
            raise ConfigKeyError(f'config {path}: unknown top-level key {key!r}'
                                 f'{_suggest(key, TOP_LEVEL_KEYS)}')
    model = cfg.get('model')
    if not isinstance(model, dict):
        return
    from ..registry import MEMBERS, META_ARCH
    with DefaultScope.overwrite_default_scope('bikd'):
        _check_arguments(model, META_ARCH, 'model', path)
        for i, member in enumerate(model.get('members') or []):
            if members and isinstance(member, dict):
                _check_arguments(member, MEMBERS, f'model.members.{i}', path)

