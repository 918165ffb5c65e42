"""Semantic segmentation with Bi-KD on mmsegmentation (Mask2Former first).

Importing the package registers its classes.
"""
from .evaluator import SemSegEvaluator
from .member import MMSegMember
from .transforms import CheckSegAnnotation

__all__ = ['CheckSegAnnotation', 'MMSegMember', 'SemSegEvaluator']
