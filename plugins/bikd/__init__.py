"""bikd: bidirectional knowledge distillation between pretrained models, on mmengine.

The core is task-agnostic: registries, teacher selection, the masked KL, member-wise
evaluation, the meta-architectures and the engine glue. Task packages register members,
datasets and metrics into :mod:`bikd.registry`. Importing ``bikd`` registers classes and changes
nothing in mmengine; the engine's entry points apply the suite's changes to it explicitly
(:func:`bikd.engine.setup_engine`).
"""
from . import baselines, engine, meta_arch  # noqa: F401  (registration)
from .baselines import DMLMetaArch, KDMetaArch, KLDPMetaArch
from .engine.build import build_model
from .errors import UserError
from .experiment import ExperimentRun, MethodNotApplicable, registered_methods, select_methods
from .losses import distillation_loss
from .member import Member, MemberOutput
from .meta_arch import BiKDMetaArch, IndependentMetaArch, MultiMemberMetaArch
from .metrics import recovered
from .partition import gt_confidence, select_teachers
from .registry import HOOKS, MEMBERS, META_ARCH, METRICS
from .step import StepOutput

__version__ = '0.1.0'
__all__ = ['BiKDMetaArch', 'DMLMetaArch', 'ExperimentRun', 'KDMetaArch', 'KLDPMetaArch',
           'IndependentMetaArch', 'MethodNotApplicable', 'MultiMemberMetaArch', 'Member',
           'MemberOutput', 'StepOutput', 'distillation_loss', 'gt_confidence',
           'registered_methods', 'select_methods', 'select_teachers', 'recovered', 'META_ARCH',
           'MEMBERS', 'METRICS', 'HOOKS', 'UserError', 'build_model']
