"""Video saliency with Bi-KD (TMFI-Net, ViNet-S, ViNet-A on DHF1K and Hollywood-2).

So far: the benchmark's metrics, the member-wise SaliencyEvaluator and the DHF1K /
Hollywood-2 datasets. Importing the package
registers its classes.
"""
from .data import VideoSaliencyDataset
from .evaluator import SaliencyEvaluator

__all__ = ['SaliencyEvaluator', 'VideoSaliencyDataset']
