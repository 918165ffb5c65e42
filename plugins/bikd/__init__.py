"""bikd: bidirectional knowledge distillation between pretrained models, on mmengine.

The core is task-agnostic, in layers (``python tools/layout.py`` prints them): the base
(registries, errors, file writing, teacher selection, the masked KL, member-wise metrics), the
members (:mod:`bikd.members`), the method's meta-architectures (:mod:`bikd.method`), the engine
on mmengine (:mod:`bikd.engine`) and the experiments (:mod:`bikd.experiments`). Task packages
register members, datasets and metrics into :mod:`bikd.registry`. Importing ``bikd`` registers
classes and changes nothing in mmengine; the engine's entry points apply the suite's changes to
it explicitly (:func:`bikd.engine.setup_engine`).
"""
from . import engine, method  # noqa: F401  (registration)
from .engine.build import build_model
from .errors import UserError
from .experiment_runs import ExperimentRun, MethodNotApplicable
from .experiments.methods import registered_methods, select_methods
from .losses import distillation_loss
from .members import Member, MemberOutput
from .method import (BiKDMetaArch, DMLMetaArch, IndependentMetaArch, KDMetaArch, KLDPMetaArch,
                     MultiMemberMetaArch)
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
