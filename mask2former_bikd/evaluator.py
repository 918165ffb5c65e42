"""Semantic-segmentation metrics of every member and of their ensemble."""
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from bikd.errors import UserError
from bikd.metrics import MemberwiseMetric
from bikd.registry import METRICS


def gt_maps(data_batch: Any) -> List[Tensor]:
    """Ground-truth label maps ``[H, W]`` of a batch: mmseg ``SegDataSample``s
    (``gt_sem_seg.data``) or a dict with a ``gt_sem_seg`` tensor ``[N, H, W]``."""
    samples = data_batch['data_samples']
    if isinstance(samples, dict):
        return list(samples['gt_sem_seg'])
    return [s.gt_sem_seg.data.squeeze(0) for s in samples]


def area_stats(pred: Tensor, gt: Tensor, num_classes: int, ignore_index: int) -> np.ndarray:
    """``[3, C]`` pixel counts of one image: intersection, prediction, ground truth (ignored
    pixels and labels outside ``[0, C)`` excluded)."""
    valid = (gt != ignore_index) & (gt >= 0) & (gt < num_classes)
    p, g = pred[valid].long(), gt[valid].long()
    counts = [torch.bincount(x, minlength=num_classes)[:num_classes] for x in (p[p == g], p, g)]
    return torch.stack(counts).cpu().numpy()


@METRICS.register_module()
class SegmentationEvaluator(MemberwiseMetric):
    """mIoU, fwIoU, mACC, pACC in percent plus per-class ``IoU-<class>`` (detectron2's keys),
    from the pixel counts of the whole set (all DDP ranks), ignore label excluded.

    ``miou_over`` chooses the classes averaged into mIoU: ``'union'`` (default) takes every
    class with a non-empty union, as mmseg's ``IoUMetric``; ``'gt'`` only classes present in the
    ground truth, as detectron2's evaluator. The two agree whenever every class occurs in the
    ground truth (as on the full ADE20K val set). mACC averages over classes present in the
    ground truth, fwIoU weights IoU by the ground-truth pixel share, pACC is the share of
    correct pixels.

    Per-class IoU goes into the results (and so into logs and ``summary.json``) with
    ``per_class=True``, named by the dataset's class names; by default only for the classes
    that occur (non-empty union), to keep 150-class logs readable.

    Predictions are ``[M, N, C, H', W']`` class probabilities (members and ensemble), at least
    as large as each ground-truth map, whose top-left ``H x W`` is scored (batches padded at the
    bottom and right, as mmseg pads them).
    """
    primary_metric = 'mIoU'

    def __init__(self, num_classes: int, ignore_index: int = 255,
                 class_names: Optional[Sequence[str]] = None, miou_over: str = 'union',
                 per_class: str = 'present', **kwargs):
        super().__init__(**kwargs)
        if miou_over not in ('union', 'gt'):
            raise UserError(f"miou_over must be 'union' or 'gt', got {miou_over!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise UserError(f'{len(class_names)} class names for {num_classes} classes')
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.class_names = list(class_names) if class_names else None
        self.miou_over = miou_over
        if per_class not in ('present', 'all', 'none'):
            raise UserError(f"per_class must be 'present', 'all' or 'none', got {per_class!r}")
        self.per_class = per_class

    def _names(self) -> List[str]:
        if self.class_names:
            return self.class_names
        classes = (self.dataset_meta or {}).get('classes')
        if classes and len(classes) == self.num_classes:
            return list(classes)
        return [str(c) for c in range(self.num_classes)]

    def sample_stats(self, preds: Tensor, data_batch: Any) -> List[np.ndarray]:
        labels = preds.argmax(dim=2)  # [M, N, H', W']
        out = []
        for i, gt in enumerate(gt_maps(data_batch)):
            h, w = gt.shape[-2:]
            if labels.shape[-2] < h or labels.shape[-1] < w:
                raise ValueError(f'prediction {tuple(labels.shape[-2:])} is smaller than the '
                                 f'ground truth {(h, w)} of sample {i}')
            gt = gt.to(labels.device)
            out.append(np.stack([area_stats(labels[m, i, :h, :w], gt, self.num_classes,
                                            self.ignore_index) for m in range(labels.shape[0])]))
        return out

    def sample_losses(self, preds: Tensor, data_batch: Any) -> Tensor:
        """Per image, the mean of ``-log p(ground truth)`` over its non-ignored pixels: the
        ``pixel_ce`` partition, at the ground truth's size."""
        out = []
        for i, gt in enumerate(gt_maps(data_batch)):
            h, w = gt.shape[-2:]
            gt = gt.to(preds.device).long()
            valid = (gt != self.ignore_index) & (gt >= 0) & (gt < self.num_classes)
            p = preds[:, i, :, :h, :w].double().clamp(min=1e-12)
            nll = -p.gather(1, gt.clamp(0, self.num_classes - 1)[None, None].expand(
                p.shape[0], 1, h, w)).squeeze(1).log()
            out.append((nll * valid).flatten(1).sum(1) / valid.sum().clamp(min=1))
        return torch.stack(out, dim=1)

    def summarize(self, stats: List[np.ndarray], model: int) -> Dict[str, float]:
        inter, pred, label = np.sum([s[model] for s in stats], axis=0).astype(np.float64)
        union = pred + label - inter
        present = label > 0
        with np.errstate(divide='ignore', invalid='ignore'):
            iou = np.where(union > 0, inter / union, np.nan)
            acc = np.where(present, inter / label, np.nan)
        averaged = union > 0 if self.miou_over == 'union' else present
        weights = label / max(label.sum(), 1)
        out = {
            'mIoU': 100 * float(np.mean(iou[averaged])) if averaged.any() else float('nan'),
            'fwIoU': 100 * float(np.sum(iou[present] * weights[present])),
            'mACC': 100 * float(np.mean(acc[present])) if present.any() else float('nan'),
            'pACC': 100 * float(inter.sum() / max(label.sum(), 1)),
        }
        if self.per_class != 'none':
            for name, v, keep in zip(self._names(), iou, union > 0):
                if keep or self.per_class == 'all':
                    out[f'IoU-{name}'] = 100 * float(v)
        return out
