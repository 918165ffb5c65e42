"""Member-wise evaluation: every member and the ensemble scored by one task metric.

A task metric subclasses :class:`MemberwiseMetric` and implements ``sample_stats`` (per-sample
statistics of every model on a batch) and ``summarize`` (the metrics of one model from its
statistics over the whole set). Results are kept per sample, so mmengine's gathering across DDP
ranks (which drops the sampler's padding duplicates) stays exact.
"""
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from torch import Tensor


class MemberwiseMetric(BaseMetric):
    """Base of the task evaluators. Metric keys are ``<model>/<metric>``, where model is a
    member's name or ``ensemble``.

    Subclasses set ``primary_metric`` (the key of the summary table, e.g. ``'top1'``) and
    ``higher_is_better``.
    """
    primary_metric: str = ''
    higher_is_better: bool = True
    default_prefix = ''  # keys carry the model name instead

    def __init__(self, collect_device: str = 'cpu', prefix: str = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.model_names: List[str] = []
        #: per model, the per-sample outcome of the last evaluation (see ``sample_outcome``)
        self.last_outcomes: Dict[str, np.ndarray] = {}

    def selection_metrics(self) -> Dict[str, bool]:
        """The metrics a member's best weights are chosen on, name -> higher is better (see
        :class:`bikd.engine.best.BestMembersHook`): the primary metric by default."""
        return {self.primary_metric: self.higher_is_better}

    def sample_stats(self, preds: Tensor, data_batch: Any) -> List[Any]:
        """Per-sample statistics of all models: one entry per sample of the batch.

        Args:
            preds: ``[M, N, ...]``, the predictions of the K members and the ensemble.
            data_batch: the batch as the data loader gave it.
        """
        raise NotImplementedError

    def summarize(self, stats: List[Any], model: int) -> Dict[str, float]:
        """Metrics of model ``model`` (index into the names) from all samples' statistics."""
        raise NotImplementedError

    def sample_losses(self, preds: Tensor, data_batch: Any) -> Tensor:
        """``[M, N]`` per-sample loss of each model's prediction, lower is better: the score
        the partition would compare, computed from predictions (``tools/find_partners.py``).
        Its order on a sample is the partition's: the teacher has the lowest loss."""
        raise NotImplementedError(f'{type(self).__name__} gives no per-sample losses')

    def sample_outcome(self, stats: List[Any], model: int) -> Optional[np.ndarray]:
        """Per-sample ``bool`` outcome of model ``model`` (correct or not) in dataset order,
        for flip counts; ``None`` where the task has no such notion (the default)."""
        return None

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for out in data_samples:
            self.model_names = list(out['names'])
            self.results.extend(self.sample_stats(out['preds'], data_batch))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        metrics, self.last_outcomes = {}, {}
        for m, name in enumerate(self.model_names):
            for key, value in self.summarize(results, m).items():
                metrics[f'{name}/{key}'] = float(value)
            outcome = self.sample_outcome(results, m)
            if outcome is not None:
                self.last_outcomes[name] = np.asarray(outcome, dtype=bool)
        return metrics


def split_metrics(metrics: Dict[str, float]) -> Dict[str, Dict[str, float]]:
    """``{'a/top1': 1, 'ensemble/top1': 2}`` -> ``{'a': {'top1': 1}, 'ensemble': {'top1': 2}}``.

    A key without a model part goes under ``''``; an evaluator prefix before the model name
    (``prefix/a/top1``) is dropped.
    """
    out: Dict[str, Dict[str, float]] = {}
    for key, value in metrics.items():
        model, _, metric = key.rpartition('/')
        model = model.split('/')[-1] if model else ''
        out.setdefault(model, {})[metric] = value
    return out
