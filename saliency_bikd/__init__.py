"""Video saliency with Bi-KD (TMFI-Net, ViNet-S, ViNet-A on DHF1K and Hollywood-2).

The benchmark's metrics, the member-wise SaliencyEvaluator, the DHF1K / Hollywood-2
datasets, the KL - CC task loss, and the TMFI-Net, ViNet-S and ViNet-A members (in their
releases' parameter layouts). Importing the package registers its classes.
"""
from .data import VideoSaliencyDataset
from .evaluator import SaliencyEvaluator
from .member import SaliencyMember, TMFINetMember, ViNetAMember, ViNetSMember

__all__ = ['SaliencyEvaluator', 'SaliencyMember', 'TMFINetMember', 'VideoSaliencyDataset',
           'ViNetAMember', 'ViNetSMember']
