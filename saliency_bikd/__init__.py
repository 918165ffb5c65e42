"""Video saliency with Bi-KD (TMFI-Net, ViNet-S, ViNet-A on DHF1K and Hollywood-2).

So far: the benchmark's metrics and the member-wise SaliencyEvaluator. Importing the package
registers its classes.
"""
from .evaluator import SaliencyEvaluator

__all__ = ['SaliencyEvaluator']
