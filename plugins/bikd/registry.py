"""Registries of the suite.

``META_ARCH`` is a child of mmengine's ``MODELS`` with scope ``bikd``: a config with
``default_scope: bikd`` (every config of this suite) lets mmengine's Runner build
``dict(type='BiKDMetaArch', ...)`` directly. Members live in ``MEMBERS``; a meta-architecture
builds its members from there. Task packages register into these registries, e.g.::

    from bikd.registry import MEMBERS

    @MEMBERS.register_module()
    class MyMember(bikd.Member):
        ...

The other registries are the ``bikd`` scope's children of mmengine's roots, so everything
mmengine builds under that scope (loops, samplers, optimisers, ...) is found in its parent.
"""
import inspect
from typing import Any

import torch
from mmengine import registry as mme
from mmengine.registry import Registry

#: Meta-architectures: Bi-KD, the Independent control, the baselines.
META_ARCH = Registry('model', parent=mme.MODELS, scope='bikd',
                     locations=['bikd.method.meta_arch', 'bikd.method.baselines'])
#: Members: one pretrained model each (timm classifier, mmseg segmentor, saliency network).
MEMBERS = Registry('member', scope='bikd')
#: Task packages register their datasets, transforms and member-wise metrics here.
DATASETS = Registry('dataset', parent=mme.DATASETS, scope='bikd', locations=['bikd.data'])
TRANSFORMS = Registry('transform', parent=mme.TRANSFORMS, scope='bikd')
METRICS = Registry('metric', parent=mme.METRICS, scope='bikd')
#: The suite's engine: hooks, runner, optimiser and model wrappers.
HOOKS = Registry('hook', parent=mme.HOOKS, scope='bikd',
                 locations=['bikd.engine.hooks', 'bikd.engine.random_state',
                            'bikd.engine.run_state', 'bikd.engine.best', 'bikd.engine.signals'])
RUNNERS = Registry('runner', parent=mme.RUNNERS, scope='bikd', locations=['bikd.engine.runner'])
OPTIM_WRAPPERS = Registry('optim_wrapper', parent=mme.OPTIM_WRAPPERS, scope='bikd',
                          locations=['bikd.engine.optim'])
MODEL_WRAPPERS = Registry('model_wrapper', parent=mme.MODEL_WRAPPERS, scope='bikd',
                          locations=['bikd.engine.lean_ddp'])
#: Collate functions of task packages (a batch of detectron2 dataset dicts). mmengine's Runner
#: looks a collate function up in its root registry without the default scope: name them
#: with the scope, ``collate_fn: {type: bikd.detectron2_collate}``.
FUNCTIONS = Registry('function', parent=mme.FUNCTIONS, scope='bikd')
#: The config checks resolve the training loop and the optimiser through these.
LOOPS = Registry('loop', parent=mme.LOOPS, scope='bikd', locations=['bikd.engine.loops'])
OPTIMIZERS = Registry('optimizer', parent=mme.OPTIMIZERS, scope='bikd')

#: mmengine's other roots that its Runner builds from under the ``bikd`` scope in the shipped
#: configs (the sampler, the optimiser wrapper's constructor, parameter schedulers, the
#: visualiser and its backends). The suite registers nothing in them, but
#: each needs a child of scope ``bikd``: without one, mmengine warns at every build that it
#: falls back to its own registry.
SCOPE_CHILDREN = {name: Registry(name, parent=root, scope='bikd', **extra)
                  for name, root, extra in (
    ('data sampler', mme.DATA_SAMPLERS, dict(locations=['bikd.data'])),
    ('optimizer wrapper constructor', mme.OPTIM_WRAPPER_CONSTRUCTORS, {}),
    ('parameter scheduler', mme.PARAM_SCHEDULERS, {}), ('visualizer', mme.VISUALIZERS, {}),
    ('vis_backend', mme.VISBACKENDS, {}))}
#: Samplers: the suite registers :class:`bikd.data.ResumableSampler` here.
DATA_SAMPLERS = SCOPE_CHILDREN['data sampler']


def argument_defaults(cls) -> dict:
    """The keyword arguments ``cls(...)`` accepts, with their defaults (``inspect``'s
    ``Parameter.empty`` where there is none), following ``**kwargs`` up the class hierarchy
    until a constructor without it (``torch.nn.Module``'s own ``**kwargs`` take nothing a
    config could give). A subclass's default wins over its base's."""
    found = {}
    for klass in cls.__mro__:
        if klass in (object, torch.nn.Module) or '__init__' not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != 'self':
                found.setdefault(p.name, p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return found


def accepted_arguments(cls) -> set:
    """The keyword arguments ``cls(...)`` accepts (:func:`argument_defaults`' names)."""
    return set(argument_defaults(cls))


def plain(value: Any) -> Any:
    """Config values as JSON-like plain data (mmengine's ConfigDict and tuples unwrapped)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
