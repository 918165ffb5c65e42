"""Image classification with Bi-KD: timm, torchvision and Hugging Face transformers members,
ImageFolder data, accuracy evaluator.

Importing the package registers its classes (``custom_imports`` in the configs does this).
"""
from .data import ImageFolderDataset
from .dinov2 import DinoV2LinearMember
from .evaluator import ClassificationEvaluator
from .member import ClassifierMember, TimmMember
from .torchvision_member import TorchvisionMember
from .transformers_member import TransformersClassifierMember

__all__ = ['ClassificationEvaluator', 'ClassifierMember', 'DinoV2LinearMember',
           'ImageFolderDataset', 'TimmMember', 'TorchvisionMember', 'TransformersClassifierMember']
