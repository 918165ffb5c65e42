"""Members: one pretrained model each, wrapped for the meta-architectures. :class:`Member` is
the base class every task's member derives from (its weights in and out, its fingerprint,
its per-sample outputs as :class:`MemberOutput`); :mod:`bikd.members.hf` is what a Hugging
Face ``transformers`` model brings, whatever its task. The zoo adapters (timm, mmseg,
detectron2, the saliency releases) are in the task packages, registered in
:data:`bikd.registry.MEMBERS`."""
from .base import RANDOM, Member, MemberOutput

__all__ = ['RANDOM', 'Member', 'MemberOutput']
