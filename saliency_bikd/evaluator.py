"""Video-saliency metrics of every member and of their ensemble, frame by frame."""
from typing import Any, Dict, List

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bikd.metrics import MemberwiseMetric
from bikd.registry import METRICS

from . import metrics as M

METRIC_NAMES = ('CC', 'NSS', 'SIM', 'KLD', 'AUC_J', 'sAUC')


@METRICS.register_module()
class SaliencyEvaluator(MemberwiseMetric):
    """CC, NSS, SIM, KLD, AUC-Judd and shuffled AUC, each averaged over frames.

    Every prediction is resized to its ground truth's size and blurred (Gaussian, 11x11,
    sigma 2) as the saliency repositories do before scoring. A frame where a metric is
    undefined (NaN: an empty ground-truth map, no fixations, a constant prediction) is left
    out of that metric's mean and counted in ``dropped_<metric>``; ``frames`` is the number
    of frames scored. The s-AUC needs ``other_fixation`` in the data samples (the union of
    other frames' fixations, which the saliency datasets provide); without it, it is dropped.

    ``loss`` is KLD - CC, the task loss on the scored maps: a member's best weights are kept
    on CC and on it (the paper authors select on the validation loss).

    Data samples: a dict with ``map`` (``[N, H, W]`` continuous ground truth), ``fixation``
    (``[N, H, W]`` binary) and optionally ``other_fixation``. Predictions: ``[M, N, h, w]``.
    """
    primary_metric = 'CC'

    def __init__(self, blur_sigma: float = 2.0, blur_size: int = 11, sauc_splits: int = 100,
                 seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.blur_sigma = float(blur_sigma)
        self.blur_size = int(blur_size)
        self.sauc_splits = int(sauc_splits)
        self.seed = int(seed)

    def _prepare(self, pred: Tensor, size) -> np.ndarray:
        x = F.interpolate(pred[None, None].float(), size=tuple(size), mode='bilinear',
                          align_corners=False)[0, 0].cpu().numpy()
        if self.blur_sigma > 0:
            x = cv2.GaussianBlur(x, (self.blur_size, self.blur_size), self.blur_sigma)
        return x

    def frame_scores(self, pred: np.ndarray, gt: np.ndarray, fix: np.ndarray,
                     other: Any, rng: np.random.Generator) -> np.ndarray:
        return np.array([
            M.cc(pred, gt), M.nss(pred, fix), M.sim(pred, gt), M.kld(pred, gt),
            M.auc_judd(pred, fix),
            M.auc_shuffled(pred, fix, other, self.sauc_splits, rng=rng) if other is not None
            else np.nan])

    def sample_stats(self, preds: Tensor, data_batch: Any) -> List[np.ndarray]:
        samples = data_batch['data_samples']
        others = samples.get('other_fixation')
        indices = samples.get('index')
        out = []
        for i in range(preds.shape[1]):
            gt = samples['map'][i].float().cpu().numpy()
            fix = samples['fixation'][i].cpu().numpy()
            other = others[i].cpu().numpy() if others is not None else None
            key = int(indices[i]) if indices is not None else i
            rows = []
            for m in range(preds.shape[0]):
                # the same s-AUC negatives for every model of a frame, whatever the batching
                rng = np.random.default_rng([self.seed, key])
                rows.append(self.frame_scores(self._prepare(preds[m, i], gt.shape), gt, fix,
                                              other, rng))
            out.append(np.stack(rows))
        return out

    def sample_losses(self, preds: Tensor, data_batch: Any) -> Tensor:
        """Per frame, the task loss KL - CC of the prediction (resized to the ground truth)."""
        from .losses import saliency_loss
        gt = data_batch['data_samples']['map'].float().to(preds.device)
        maps = F.interpolate(preds.flatten(0, 1)[:, None].float(), size=tuple(gt.shape[-2:]),
                             mode='bilinear', align_corners=False)[:, 0]
        maps = maps.unflatten(0, preds.shape[:2]).clamp(min=0)
        return torch.stack([saliency_loss(m, gt) for m in maps]).double()

    def summarize(self, stats: List[np.ndarray], model: int) -> Dict[str, float]:
        table = np.stack([s[model] for s in stats])  # [frames, metrics]
        out = {'frames': float(len(table))}
        for j, name in enumerate(METRIC_NAMES):
            col = table[:, j]
            ok = ~np.isnan(col)
            out[name] = float(col[ok].mean()) if ok.any() else float('nan')
            out[f'dropped_{name}'] = float((~ok).sum())
        # the task loss KL - CC on the scored maps: what the authors keep each model's best on
        out['loss'] = out['KLD'] - out['CC']
        return out

    def selection_metrics(self) -> Dict[str, bool]:
        return {'CC': True, 'loss': False}
