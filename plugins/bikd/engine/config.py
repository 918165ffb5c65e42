"""Experiment configs: YAML with ``_base_`` inheritance, read with a safe loader.

YAML files are parsed with a safe loader (no Python objects can be constructed from a
config); the one addition is the tag ``!tuple`` (``scale: !tuple [2048, 512]``) for arguments
that must be tuples, which YAML itself cannot express. ``_base_`` entries are YAML files
relative to the including file, or mmengine config references such as ``mmseg::mask2former/...py`` (configs shipped inside an installed package),
which mmengine reads. Code is imported from a config only through its explicit
``custom_imports`` list.
"""
import os
from typing import Any, Dict, Sequence

import yaml
from mmengine.config import Config
from mmengine.utils import import_modules_from_strings

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
    if import_modules and cfg.get('custom_imports'):
        import_modules_from_strings(**cfg['custom_imports'])
    return cfg

