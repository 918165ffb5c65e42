"""The saliency task loss, KL - CC (paper Eq. 9-10), per clip, as the TMFI-Net and ViNet
repositories compute it for a batch (there averaged over the batch)."""
import torch
from torch import Tensor

from .metrics import MATLAB_EPS


def kl_per_sample(pred: Tensor, gt: Tensor) -> Tensor:
    """``sum Q log(eps + Q / (P + eps))`` per sample; P, Q the maps ``[N, H, W]`` divided by
    their sums."""
    p = pred.flatten(1).float()
    q = gt.flatten(1).float()
    p = p / p.sum(1, keepdim=True).clamp(min=MATLAB_EPS)
    q = q / q.sum(1, keepdim=True).clamp(min=MATLAB_EPS)
    return (q * torch.log(MATLAB_EPS + q / (p + MATLAB_EPS))).sum(1)


def cc_per_sample(pred: Tensor, gt: Tensor) -> Tensor:
    """Pearson correlation per sample of the maps ``[N, H, W]``."""
    p = pred.flatten(1).float()
    g = gt.flatten(1).float()
    p = p - p.mean(1, keepdim=True)
    g = g - g.mean(1, keepdim=True)
    return (p * g).sum(1) / torch.sqrt((p * p).sum(1) * (g * g).sum(1)).clamp(min=MATLAB_EPS)


def saliency_loss(pred: Tensor, gt: Tensor, kl_weight: float = 1.0, cc_weight: float = 1.0) -> Tensor:
    """``kl_weight * KL - cc_weight * CC`` per sample, ``[N]``. An all-zero ground-truth map
    makes both terms undefined: the caller must not train on it."""
    return kl_weight * kl_per_sample(pred, gt) - cc_weight * cc_per_sample(pred, gt)


def map_log_probs(pred: Tensor) -> Tensor:
    """A map ``[N, H, W]`` as log-probabilities over its pixels, ``[N, H * W]``: what members
    give :func:`bikd.losses.distillation_loss` (whose softmax over axis 1 leaves them as they
    are), so the KL between members is the KL between their maps as distributions."""
    p = pred.flatten(1).float()
    return torch.log(p / p.sum(1, keepdim=True).clamp(min=MATLAB_EPS) + MATLAB_EPS)
