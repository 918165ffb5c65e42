"""Experiment configs: YAML with ``_base_`` inheritance, read with a safe loader.

YAML files are parsed with a safe loader (no Python objects can be constructed from a
config). The shipped configs are plain YAML, which mmengine's ``Config.fromfile`` reads too;
this loader adds reading ``1e-5`` as a number (YAML 1.2), a transform's ``scale: [W, H]`` as
the tuple mmcv requires, and the tag ``!tuple`` for other arguments that must be tuples.
``_base_`` entries are YAML files relative to the including file, or mmengine config
references such as ``mmseg::mask2former/...py`` (configs shipped inside an installed
package), which mmengine reads. Code is imported from a config only through its explicit
``custom_imports`` list.
"""
import difflib
import inspect
import numbers
import os
import re
from typing import Any, Dict, Sequence

import yaml
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.utils import import_modules_from_strings

from ..errors import UserError
from ..registry import accepted_arguments
from .keys import RUNNER_KEYS
from .values import check_override_paths, check_values

YAML_SUFFIXES = ('.yaml', '.yml')


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus ``!tuple``."""


ConfigLoader.add_constructor(
    '!tuple', lambda loader, node: tuple(loader.construct_sequence(node, deep=True)))
# YAML 1.1 reads 1e-5 (no dot) as a string; read it as the number a user means (YAML 1.2)
ConfigLoader.add_implicit_resolver(
    'tag:yaml.org,2002:float', re.compile(r'^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$'),
    list('-+0123456789'))


#: what mmengine's Config reads besides YAML
OTHER_SUFFIXES = ('.py', '.json')


def check_config_path(path: str) -> None:
    """A config path that names a readable config file, else an error that says what is
    wrong with it (missing, a folder, not a config's suffix)."""
    if os.path.isdir(path):
        raise IsADirectoryError(f'--config-file {path} is a folder; name a config file in it '
                                '(.yaml)')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'config file not found: {path}{near_configs(path)}')
    if not path.endswith(YAML_SUFFIXES + OTHER_SUFFIXES):
        raise UserError(f'config file {path}: {os.path.splitext(path)[1] or "no suffix"} is '
                        f'not a config\'s suffix ({", ".join(YAML_SUFFIXES + OTHER_SUFFIXES)}); '
                        'is it misspelt?')


def near_configs(path: str) -> str:
    """``; did you mean ...?`` with the config files whose paths are closest to a missing
    ``path`` (in its folder, or under its nearest folder that exists, for a misspelt folder),
    or ''."""
    top = os.path.dirname(path) or '.'
    while not os.path.isdir(top) and top not in ('', os.sep):
        top = os.path.dirname(top) or '.'
    if not os.path.isdir(top):
        return ''
    found = []
    for parent, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.') and d not in (
            'work_dirs', 'node_modules', '__pycache__'))
        found += [os.path.join(parent, f) for f in files if f.endswith(YAML_SUFFIXES)]
        if len(found) > 5000:
            break

    def likeness(a: str, b: str) -> float:
        return difflib.SequenceMatcher(None, a, b).ratio()

    want = os.path.normpath(path)
    scored = sorted(((likeness(os.path.basename(want), os.path.basename(f)),
                      likeness(os.path.dirname(want), os.path.dirname(os.path.normpath(f))), f)
                     for f in found), reverse=True)
    close = [f for name, folder, f in scored if name >= 0.85 and folder >= 0.8][:2]
    return f'; did you mean {" or ".join(close)}?' if close else ''


def _read_yaml(path: str) -> Dict[str, Any]:
    check_config_path(path)
    with open(path) as f:
        try:
            data = yaml.load(f, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader
        except yaml.YAMLError as e:
            raise UserError(f'cannot parse config {path}: {e}') from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f'config {path} must hold a mapping at the top level')
    return data


def _load_dict(path: str, stack: Sequence[str] = ()) -> Dict[str, Any]:
    path = os.path.abspath(path)
    if path in stack:
        raise UserError(f'circular _base_ chain: {" -> ".join(list(stack) + [path])}')
    if not path.endswith(YAML_SUFFIXES):
        check_config_path(path)
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
        merged = merge_into(base_dict, merged)
    return merge_into(data, merged)


#: a mapping with ``_delete_: true`` replaces the base's mapping instead of merging into it
DELETE_KEY = '_delete_'


def merge_into(child: Dict[str, Any], base: Dict[str, Any]) -> Dict[str, Any]:
    """``child``'s keys over ``base``'s, as mmengine merges a config into its ``_base_``:
    mappings merge key by key, unless the child's says ``_delete_: true``, which replaces the
    base's; any other value replaces the base's."""
    out = dict(base)
    for key, value in child.items():
        if not isinstance(value, dict):
            out[key] = value
            continue
        value = dict(value)
        if value.pop(DELETE_KEY, False) or key not in out:
            out[key] = _without_delete(value)
        elif isinstance(out[key], dict):
            out[key] = merge_into(value, out[key])
        else:
            raise UserError(f'config key {key!r}: a mapping cannot merge into the '
                            f'{type(out[key]).__name__} of its _base_; add {DELETE_KEY}: true '
                            'to replace it')
    return out


def _without_delete(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_delete(v) for k, v in value.items() if k != DELETE_KEY}
    return value


def parse_overrides(pairs: Sequence[str]) -> Dict[str, Any]:
    """``['a.b=1', 'c=[1, 2]']`` -> ``{'a.b': 1, 'c': [1, 2]}``; values are YAML scalars/lists."""
    out = {}
    for pair in pairs:
        if '=' not in pair:
            hint = ' (not a flag of this tool: --help lists them)' \
                if pair.startswith('-') else ''
            raise UserError(f'override {pair!r} is not of the form key=value{hint}')
        key, value = pair.split('=', 1)
        out[key.strip()] = yaml.load(value, Loader=ConfigLoader) if value.strip() else None
    return out


_MISSING = object()


def _lookup(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split('.'):
        if isinstance(node, (dict, Config)) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return 'true or false'
    if isinstance(value, numbers.Integral):
        return 'an integer'
    if isinstance(value, numbers.Real):
        return 'a number'
    return ''


def check_override_types(cfg: Any, overrides: Dict[str, Any]) -> None:
    """An override must keep the kind of the value it replaces (a number, an integer, true or
    false): ``train_cfg.max_epochs=two`` is an error that names the key and what it takes."""
    for key, new in overrides.items():
        old = _lookup(cfg, key)
        want = _kind(old) if old is not _MISSING and old is not None else ''
        if not want or new is None:
            continue
        ok = (isinstance(new, bool) if want == 'true or false' else
              isinstance(new, numbers.Integral) and not isinstance(new, bool)
              if want == 'an integer' else
              isinstance(new, numbers.Real) and not isinstance(new, bool))
        if not ok:
            raise ConfigKeyError(f'override {key}={new!r}: {key} takes {want} (the config has '
                                 f'{old!r})')


def check_argument_types(section: dict, cls, where: str, path: str) -> None:
    """A config value where the constructor's default is a number or true/false must be one."""
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return
    for key, value in section.items():
        param = params.get(key)
        if param is None or param.default is inspect.Parameter.empty or value is None:
            continue
        want = _kind(param.default)
        if want and not isinstance(value, (numbers.Real, bool)):
            raise ConfigKeyError(f'config {path}: {where}.{key}={value!r} must be {want} '
                                 f'(default {param.default!r})')


def load_config(path: str, overrides: Sequence[str] = (), import_modules: bool = True) -> Config:
    """Read an experiment config, apply ``key=value`` overrides (dotted keys; list items by
    index, e.g. ``model.members.0.pretrained=false``) and import its ``custom_imports``."""
    data = _load_dict(path)
    if not isinstance(data.get('model'), dict):
        raise UserError(f'config {path} ' + ('is empty' if not data else 'defines no model') +
                        '; an experiment config names at least the model and its members (see '
                        'configs/ for examples)')
    cfg = Config(data, filename=os.path.abspath(path))
    if overrides:
        parsed = parse_overrides(overrides)
        check_override_paths(cfg, parsed)
        check_override_types(cfg, parsed)
        cfg.merge_from_dict(parsed, allow_list_keys=True)
    for key in list(cfg.keys()):
        _scales_as_tuples(cfg[key])
    if import_modules and cfg.get('custom_imports'):
        import_modules_from_strings(**cfg['custom_imports'])
    check_keys(cfg, path, members=import_modules)
    check_values(cfg, f'config {path}' + (' with its overrides' if overrides else ''))
    return cfg


def _scales_as_tuples(node: Any) -> None:
    """A transform's ``scale: [W, H]`` as the tuple mmcv's resizing transforms require (YAML
    has lists; the shipped configs keep to plain YAML so that mmengine's Config.fromfile
    reads them too)."""
    if isinstance(node, dict):
        if isinstance(node.get('type'), str) and isinstance(node.get('scale'), list) and \
                len(node['scale']) == 2 and all(isinstance(v, int) for v in node['scale']):
            node['scale'] = tuple(node['scale'])
        for value in node.values():
            _scales_as_tuples(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _scales_as_tuples(value)


#: Top-level keys mmengine's Runner (``Runner.from_cfg``, ``wrap_model``) reads, the suite's runner
#: (:data:`bikd.engine.keys.RUNNER_KEYS`) and tools/run_experiment.py (``method_recipes``: a
#: method's own optimiser or schedule, method -> config keys).
TOP_LEVEL_KEYS = frozenset({
    'model', 'work_dir', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'train_cfg',
    'val_cfg', 'test_cfg', 'auto_scale_lr', 'optim_wrapper', 'param_scheduler',
    'val_evaluator', 'test_evaluator', 'default_hooks', 'custom_hooks', 'data_preprocessor',
    'load_from', 'launcher', 'env_cfg', 'log_processor', 'log_level', 'visualizer',
    'default_scope', 'randomness', 'experiment_name', 'model_wrapper_cfg',
    'find_unused_parameters', 'compile', 'sync_bn', 'activation_checkpointing',
    'efficient_conv_bn_eval', 'custom_imports', 'runner_type', 'method_recipes',
    *RUNNER_KEYS})


class ConfigKeyError(UserError, KeyError):
    """A config key that nothing reads, or a value of the wrong kind (printed without
    KeyError's quotes)."""

    def __str__(self) -> str:
        return str(self.args[0])


def _suggest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ''


def _check_arguments(section: dict, registry, where: str, path: str) -> None:
    """The keys of a registered type's section, and the kinds of its number and true/false
    arguments."""
    cls = registry.get(section.get('type')) if isinstance(section.get('type'), str) else None
    cls = getattr(cls, 'builds', cls)  # a registered factory names the class it builds
    if cls is None or not inspect.isclass(cls):
        return  # an unknown type is reported when it is built
    _check_section(section, cls, where, path)
    for klass in cls.__mro__:
        if '__init__' in vars(klass) and klass not in (object, ):
            check_argument_types(section, klass, where, path)


#: keys of a data loader config that mmengine's Runner.build_dataloader reads besides
#: torch's DataLoader arguments
LOADER_KEYS = frozenset({'dataset', 'sampler', 'batch_sampler', 'collate_fn',
                         'worker_init_fn'})


def _loop_class(train_cfg: dict):
    from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

    from ..registry import LOOPS
    if isinstance(train_cfg.get('type'), str):
        return LOOPS.get(train_cfg['type'])
    return EpochBasedTrainLoop if train_cfg.get('by_epoch', True) else IterBasedTrainLoop


def _check_section(section: Any, cls, where: str, path: str, extra=(), hint: str = '') -> None:
    """Every key of ``section`` is an argument of ``cls`` (or one of ``extra``)."""
    if not isinstance(section, dict) or cls is None or not inspect.isclass(cls):
        return
    valid = accepted_arguments(cls) | set(extra)
    for key in section:
        if key not in ('type', '_scope_') and key not in valid:
            raise ConfigKeyError(f'config {path}: {where}.{key} is not an argument of '
                                 f'{cls.__name__}{_suggest(key, valid)}{hint}')


def check_keys(cfg: Config, path: str, members: bool = True) -> None:
    """A misspelt or inapplicable key is an error that names it and suggests the closest valid
    one: top-level keys, the meta-architecture's arguments, with ``members`` each member's, the
    training loop's, the optimiser wrapper's and optimiser's, the data loaders' and their
    datasets', the evaluators' and the hooks'. Values where an argument takes a number or
    true/false must be one. Sections of a type this suite cannot resolve (another library's
    scope) are left to their builder."""
    for key in cfg.keys():
        if key not in TOP_LEVEL_KEYS:
            raise ConfigKeyError(f'config {path}: unknown top-level key {key!r}'
                                 f'{_suggest(key, TOP_LEVEL_KEYS)}')
    from torch.utils.data import DataLoader

    from ..registry import DATASETS, HOOKS, MEMBERS, META_ARCH, METRICS, OPTIM_WRAPPERS, OPTIMIZERS
    with DefaultScope.overwrite_default_scope('bikd'):
        model = cfg.get('model')
        if isinstance(model, dict):
            _check_arguments(model, META_ARCH, 'model', path)
            for i, member in enumerate(model.get('members') or []):
                if members and isinstance(member, dict):
                    _check_arguments(member, MEMBERS, f'model.members.{i}', path)
        train_cfg = cfg.get('train_cfg')
        if isinstance(train_cfg, dict):
            loop = _loop_class(train_cfg)
            hint = (' (this config trains by epochs: train_cfg.max_epochs=N; by iterations it '
                    'takes train_cfg.by_epoch=false with max_iters and no max_epochs)'
                    if loop is not None and loop.__name__ == 'EpochBasedTrainLoop' else '')
            _check_section(train_cfg, loop, 'train_cfg', path, ('by_epoch', ), hint)
        wrapper = cfg.get('optim_wrapper')
        if isinstance(wrapper, dict):
            _check_section(wrapper, OPTIM_WRAPPERS.get(wrapper.get('type', 'BiKDOptimWrapper')),
                           'optim_wrapper', path, ('optimizer', 'paramwise_cfg', 'constructor'))
            optimizer = wrapper.get('optimizer')
            if isinstance(optimizer, dict) and isinstance(optimizer.get('type'), str):
                _check_section(optimizer, OPTIMIZERS.get(optimizer['type']),
                               'optim_wrapper.optimizer', path)
        for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            loader = cfg.get(name)
            if not isinstance(loader, dict):
                continue
            _check_section(loader, DataLoader, name, path, LOADER_KEYS)
            dataset = loader.get('dataset')
            if isinstance(dataset, dict) and isinstance(dataset.get('type'), str):
                _check_arguments(dataset, DATASETS, f'{name}.dataset', path)
        for name in ('val_evaluator', 'test_evaluator'):
            evaluator = cfg.get(name)
            if isinstance(evaluator, dict) and isinstance(evaluator.get('type'), str):
                _check_arguments(evaluator, METRICS, name, path)
        hooks = dict(cfg.get('default_hooks') or {})
        hooks.update({str(i): h for i, h in enumerate(cfg.get('custom_hooks') or [])})
        for name, hook in hooks.items():
            if isinstance(hook, dict) and isinstance(hook.get('type'), str):
                where = f'custom_hooks.{name}' if name.isdigit() else f'default_hooks.{name}'
                _check_arguments(hook, HOOKS, where, path)
