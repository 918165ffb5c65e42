"""Segmentation with Bi-KD: the official Mask2Former (detectron2; semantic, panoptic and
instance models), mmseg's and Hugging Face's segmentors as members, ADE20K data checks,
datasets as detectron2 registers them, and the evaluators.

Importing the package registers its classes; detectron2 is imported only when an official
Mask2Former member is built.
"""
from .d2_data import Detectron2Dataset, detectron2_collate
from .d2_evaluator import Detectron2Metric
from .evaluator import SegmentationEvaluator
from .mask2former_member import Mask2FormerMember
from .mmseg_decode_head import MMSegDecodeHeadMember
from .mmseg_mask2former import MMSegMask2FormerMember
from .mmseg_member import MMSegMemberBase, build_mmseg_member
from .transformers_member import TransformersSegmentationMember
from .transforms import CheckSegAnnotation

__all__ = ['CheckSegAnnotation', 'Detectron2Dataset', 'Detectron2Metric', 'Mask2FormerMember',
           'MMSegDecodeHeadMember', 'MMSegMask2FormerMember', 'MMSegMemberBase', 'SegmentationEvaluator',
           'TransformersSegmentationMember', 'build_mmseg_member', 'detectron2_collate']
