"""Top-1 / top-5 accuracy of every member and of their ensemble."""
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from torch import Tensor

from bikd.errors import UserError
from bikd.metrics import MemberwiseMetric
from bikd.registry import METRICS


@METRICS.register_module()
class ClassificationEvaluator(MemberwiseMetric):
    """Accuracy in percent: ``top1``, ``top5`` (top-k with k capped at the class count).

    Per sample it keeps, for each model, whether the label is in its top-k and its top-1 class
    (the latter for flip counts against the initial members).
    """
    primary_metric = 'top1'

    def __init__(self, topk: Sequence[int] = (1, 5), **kwargs):
        super().__init__(**kwargs)
        self.topk = tuple(int(k) for k in topk)
        if 1 not in self.topk:
            raise UserError('topk must include 1')

    def sample_stats(self, preds: Tensor, data_batch: Any) -> List[np.ndarray]:
        labels = data_batch['data_samples']['label'].to(preds.device)
        kmax = min(max(self.topk), preds.shape[-1])
        top = preds.topk(kmax, dim=-1).indices  # [M, N, kmax]
        hits = top == labels.view(1, -1, 1)
        cols = [hits[..., :min(k, kmax)].any(dim=-1) for k in self.topk] + [top[..., 0]]
        stats = np.stack([c.long().cpu().numpy() for c in cols], axis=-1)  # [M, N, len(topk)+1]
        return list(stats.transpose(1, 0, 2))

    def sample_losses(self, preds: Tensor, data_batch: Any) -> Tensor:
        """``-log p(label)``: its order is that of the ground-truth confidence (Eq. 3)."""
        labels = data_batch['data_samples']['label'].to(preds.device)
        index = labels.view(1, -1, 1).expand(preds.shape[0], -1, 1)
        return -preds.double().gather(2, index).squeeze(2).log()

    def summarize(self, stats: List[np.ndarray], model: int) -> Dict[str, float]:
        table = np.stack([s[model] for s in stats])
        return {f'top{k}': 100.0 * float(table[:, i].mean()) for i, k in enumerate(self.topk)}

    def metric_step(self, num_samples: int) -> Optional[float]:
        """One sample of N moves the accuracy by 100 / N points."""
        return 100.0 / num_samples if num_samples else None

    def sample_outcome(self, stats: List[np.ndarray], model: int) -> Optional[np.ndarray]:
        """Top-1 correct per sample."""
        return np.array([s[model][0] for s in stats], dtype=bool)
