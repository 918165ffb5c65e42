"""Registries of the suite.

``META_ARCH`` is a child of mmengine's ``MODELS`` with scope ``bikd``: a config with
``default_scope='bikd'`` (every config of this suite) lets mmengine's Runner build
``dict(type='BiKDMetaArch', ...)`` directly. Members live in ``MEMBERS``; a meta-architecture
builds its members from there. Task packages register into these registries, e.g.::

    from bikd.registry import MEMBERS

    @MEMBERS.register_module()
    class MyMember(bikd.Member):
        ...
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

#: Meta-architectures: Bi-KD, the Independent control, the baselines.
META_ARCH = Registry('model', parent=MMENGINE_MODELS, scope='bikd', locations=['bikd.meta_arch'])
#: Members: one pretrained model each (timm classifier, mmseg segmentor, saliency network).
MEMBERS = Registry('member', scope='bikd')
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='bikd')
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope='bikd')
METRICS = Registry('metric', parent=MMENGINE_METRICS, scope='bikd', locations=['bikd.evaluation'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='bikd', locations=['bikd.engine.hooks'])

# mmengine's Runner builds from its root registries and switches to the child of the config's
# default scope; ``MODELS`` is the name it and downstream code expect.
MODELS = META_ARCH
