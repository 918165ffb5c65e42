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

import torch
from mmengine import registry as mme
from mmengine.registry import Registry

#: Meta-architectures: Bi-KD, the Independent control, the baselines.
META_ARCH = Registry('model', parent=mme.MODELS, scope='bikd', locations=['bikd.meta_arch'])
#: Members: one pretrained model each (timm classifier, mmseg segmentor, saliency network).
MEMBERS = Registry('member', scope='bikd')
DATASETS = Registry('dataset', parent=mme.DATASETS, scope='bikd')
TRANSFORMS = Registry('transform', parent=mme.TRANSFORMS, scope='bikd')
METRICS = Registry('metric', parent=mme.METRICS, scope='bikd', locations=['bikd.evaluation'])
HOOKS = Registry('hook', parent=mme.HOOKS, scope='bikd',
                 locations=['bikd.engine.hooks', 'bikd.engine.random_state',
                            'bikd.engine.best'])

RUNNERS = Registry('runner', parent=mme.RUNNERS, scope='bikd')
RUNNER_CONSTRUCTORS = Registry('runner constructor', parent=mme.RUNNER_CONSTRUCTORS, scope='bikd')
LOOPS = Registry('loop', parent=mme.LOOPS, scope='bikd')
DATA_SAMPLERS = Registry('data sampler', parent=mme.DATA_SAMPLERS, scope='bikd')
FUNCTIONS = Registry('function', parent=mme.FUNCTIONS, scope='bikd')
MODEL_WRAPPERS = Registry('model_wrapper', parent=mme.MODEL_WRAPPERS, scope='bikd',
                          locations=['bikd.engine.lean_ddp'])
WEIGHT_INITIALIZERS = Registry('weight initializer', parent=mme.WEIGHT_INITIALIZERS, scope='bikd')
OPTIMIZERS = Registry('optimizer', parent=mme.OPTIMIZERS, scope='bikd')
OPTIM_WRAPPERS = Registry('optim_wrapper', parent=mme.OPTIM_WRAPPERS, scope='bikd')
OPTIM_WRAPPER_CONSTRUCTORS = Registry('optimizer wrapper constructor',
                                      parent=mme.OPTIM_WRAPPER_CONSTRUCTORS, scope='bikd')
PARAM_SCHEDULERS = Registry('parameter scheduler', parent=mme.PARAM_SCHEDULERS, scope='bikd')
EVALUATOR = Registry('evaluator', parent=mme.EVALUATOR, scope='bikd')
VISUALIZERS = Registry('visualizer', parent=mme.VISUALIZERS, scope='bikd')
VISBACKENDS = Registry('vis_backend', parent=mme.VISBACKENDS, scope='bikd')
LOG_PROCESSORS = Registry('log_processor', parent=mme.LOG_PROCESSORS, scope='bikd')


def accepted_arguments(cls) -> set:
    """The keyword arguments ``cls(...)`` accepts, following ``**kwargs`` up the class
    hierarchy until a constructor without it (``torch.nn.Module``'s own ``**kwargs`` take
    nothing a config could give)."""
    names = set()
    for klass in cls.__mro__:
        if klass in (object, torch.nn.Module) or '__init__' not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names - {'self'}
