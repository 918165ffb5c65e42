"""bikd: bidirectional knowledge distillation between pretrained models, on mmengine.

The core is task-agnostic: registries, teacher selection, the masked KL, member-wise
evaluation, the meta-architectures and the engine glue. Task packages register members,
datasets and metrics into :mod:`bikd.registry`.
"""
from . import baselines, engine, evaluation, meta_arch  # noqa: F401  (registration)
from .baselines import DMLMetaArch, KDMetaArch, KLDPMetaArch
from .losses import distillation_loss
from .member import Member, MemberOutput
from .meta_arch import BiKDMetaArch, IndependentMetaArch, MultiMemberMetaArch
from .metrics import recovered
from .partition import gt_confidence, select_teachers
from .registry import HOOKS, MEMBERS, META_ARCH, METRICS

__version__ = '0.1.0'
__all__ = ['BiKDMetaArch', 'DMLMetaArch', 'KDMetaArch', 'KLDPMetaArch', 'IndependentMetaArch', 'MultiMemberMetaArch', 'Member',
           'MemberOutput', 'distillation_loss', 'gt_confidence', 'select_teachers',
           'recovered', 'META_ARCH', 'MEMBERS', 'METRICS', 'HOOKS']
