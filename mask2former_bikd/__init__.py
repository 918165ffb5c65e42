"""Semantic segmentation with Bi-KD on mmsegmentation (Mask2Former first).

Importing the package registers its classes.
"""
from .evaluator import SemSegEvaluator
from .mmseg_decode_head import MMSegDecodeHeadMember
from .mmseg_mask2former import MMSegMask2FormerMember
from .mmseg_member import MMSegMember
from .transforms import CheckSegAnnotation

__all__ = ['CheckSegAnnotation', 'MMSegDecodeHeadMember', 'MMSegMask2FormerMember',
           'MMSegMember', 'SemSegEvaluator']
