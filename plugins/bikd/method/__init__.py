"""The method: the meta-architectures that train K members together. :class:`BiKDMetaArch`
(Bi-KD: per sample, the best member teaches the others), the control
:class:`IndependentMetaArch` and the baselines (KD, KL+DP, DML) on the same pieces
(:mod:`.meta_arch`, :mod:`.baselines`), and the lean training step, member by member
(:mod:`.lean`). The partition and the masked KL they use are :mod:`bikd.partition` and
:mod:`bikd.losses`."""
from .baselines import DMLMetaArch, KDMetaArch, KLDPMetaArch
from .meta_arch import BiKDMetaArch, IndependentMetaArch, MultiMemberMetaArch

__all__ = ['BiKDMetaArch', 'DMLMetaArch', 'IndependentMetaArch', 'KDMetaArch', 'KLDPMetaArch',
           'MultiMemberMetaArch']
