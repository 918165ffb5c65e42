"""Video saliency with Bi-KD (TMFI-Net, ViNet-S, ViNet-A on DHF1K and Hollywood-2).

So far: the benchmark's metrics, the member-wise SaliencyEvaluator, the DHF1K /
Hollywood-2 datasets, and the TMFI-Net and ViNet-S members. Importing the package
registers its classes.
"""
from .data import VideoSaliencyDataset
from .evaluator import SaliencyEvaluator
from .member import SaliencyMember, TMFINetMember, ViNetSMember

__all__ = ['SaliencyEvaluator', 'SaliencyMember', 'TMFINetMember', 'VideoSaliencyDataset',
           'ViNetSMember']
