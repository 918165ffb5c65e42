"""Image classification with Bi-KD: timm members, ImageFolder data, accuracy evaluator.

Importing the package registers its classes (``custom_imports`` in the configs does this).
"""
from .data import ImageFolderDataset
from .dinov2 import DinoV2LinearMember
from .evaluator import ClassificationEvaluator
from .member import TimmMember

__all__ = ['ImageFolderDataset', 'DinoV2LinearMember', 'ClassificationEvaluator', 'TimmMember']
