"""Member-wise metrics: every member and the ensemble scored by one task metric, and the share
of the ensemble's gain a member recovered (Eq. 14).

A task metric subclasses :class:`MemberwiseMetric` and implements ``sample_stats`` (per-sample
statistics of every model on a batch) and ``summarize`` (the metrics of one model from its
statistics over the whole set). Results are kept per sample, so mmengine's gathering across DDP
ranks (which drops the sampler's padding duplicates) stays exact.

A meta-architecture's prediction is a :class:`MemberPredictions`: the members are run one at
a time as the metric reads them and the ensemble is summed in place, so at most about two
models' outputs of a batch are alive at once, whatever the number of members.
"""
import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from torch import Tensor
from .errors import UserError


def _device_type(inputs: Any) -> str:
    """The device type of the first tensor in a batch (a tensor, or lists and dicts of them)."""
    if isinstance(inputs, Tensor):
        return inputs.device.type
    items = inputs.values() if isinstance(inputs, dict) else \
        inputs if isinstance(inputs, (list, tuple)) else ()
    for item in items:
        found = _device_type(item)
        if found:
            return found
    return ''


@dataclass
class StructuredPrediction:
    """A member's prediction that is more than one tensor.

    Attributes:
        dense: ``[N, ...]``, what the ensemble averages and dense metrics score (per-pixel
            class probabilities).
        extra: per-sample outputs a task's metric may read besides (detectron2's
            ``panoptic_seg`` and ``instances`` of a panoptic Mask2Former), one per sample.
    """
    dense: Tensor
    extra: List[Any]


def dense(prediction: Union[Tensor, StructuredPrediction]) -> Tensor:
    """The dense part of a member's prediction (the prediction itself when it is a tensor)."""
    return prediction.dense if isinstance(prediction, StructuredPrediction) else prediction


class MemberPredictions:
    """The predictions of K members on one batch and of their ensemble (the mean of the
    members' predictions), computed one model at a time when iterated.

    Iterating yields ``(name, prediction)`` for each member and then ``('ensemble', mean)``:
    a member's prediction is a ``Tensor[N, ...]`` in float32, or a
    :class:`StructuredPrediction` whose dense part the ensemble averages; a yielded prediction
    is not used again once the next is asked for. The autocast state of its creation
    (mixed-precision evaluation) is kept for the members' forwards. :meth:`stacked` gives the
    dense parts of all of them as one ``[K + 1, N, ...]`` tensor.
    """

    def __init__(self, members: Sequence[torch.nn.Module], inputs: Any, data_samples: Any):
        self.names = [m.name for m in members] + ['ensemble']
        self._members, self._inputs, self._samples = list(members), inputs, data_samples
        device = _device_type(inputs)
        self._autocast = None
        if device in ('cpu', 'cuda') and torch.is_autocast_enabled(device):
            self._autocast = (device, torch.get_autocast_dtype(device))

    def __iter__(self) -> Iterator[Tuple[str, Tensor]]:
        total = None
        for member in self._members:
            with (torch.autocast(self._autocast[0], dtype=self._autocast[1])
                  if self._autocast else nullcontext()):
                pred = member.predict(self._inputs, self._samples)
            if isinstance(pred, StructuredPrediction):
                pred.dense = pred.dense.float()
            else:
                pred = pred.float()
            total = dense(pred).clone() if total is None else total.add_(dense(pred))
            yield member.name, pred
            del pred
        yield 'ensemble', total.div_(len(self._members))

    def stacked(self) -> Tensor:
        """``[K + 1, N, ...]``: every member's (dense) prediction and the ensemble's (holds
        them all)."""
        return torch.stack([dense(pred).clone() for _, pred in self])


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
        """Per-sample statistics of M models: one entry per sample of the batch, an array
        whose first axis is the model.

        Args:
            preds: ``[M, N, ...]``, the predictions of M models (in evaluation one model at a
                time, M = 1: :meth:`process` concatenates the models' entries of a sample).
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

    def metric_step(self, num_samples: int) -> Optional[float]:
        """The change of the primary metric one sample of ``num_samples`` makes (a
        classifier's accuracy over N samples moves in steps of 100 / N), or ``None`` where
        the metric has no such step. A summary leaves out a recovered % whose ensemble gap is
        a few such steps (:data:`bikd.summary.RECOVERED_MIN_STEPS`)."""
        return None

    def sample_outcome(self, stats: List[Any], model: int) -> Optional[np.ndarray]:
        """Per-sample ``bool`` outcome of model ``model`` (correct or not) in dataset order,
        for flip counts; ``None`` where the task has no such notion (the default)."""
        return None

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Score a batch model by model (``preds``: a :class:`MemberPredictions`, or a
        ``[M, N, ...]`` tensor), dropping each prediction once it is scored."""
        for out in data_samples:
            self.model_names = list(out['names'])
            preds = out['preds']
            per_model = iter(preds) if isinstance(preds, MemberPredictions) else \
                zip(self.model_names, preds)
            columns = []
            for _, pred in per_model:
                columns.append(self.sample_stats(dense(pred)[None], data_batch))
                del pred
            self.results.extend(np.concatenate(entries, axis=0) for entries in zip(*columns))

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


def memberwise_metric(evaluator) -> MemberwiseMetric:
    """The member-wise metric of an mmengine evaluator (its primary metric and selection
    metrics say what a run's table and best checkpoints are about)."""
    for metric in getattr(evaluator, 'metrics', []):
        if isinstance(metric, MemberwiseMetric):
            return metric
    raise UserError('the validation evaluator has no member-wise metric (a bikd '
                    'MemberwiseMetric such as ClassificationEvaluator)')


def recovered(before: float, after: float, ensemble: float) -> float:
    """Share of the ensemble's gain a member recovered by training, Eq. 14, in percent.

    ``100 * (after - before) / (ensemble - before)``. It exceeds 100 when the member beats the
    ensemble of the initial members, and is negative when the member got worse (or when the
    ensemble is worse than the member). NaN when the ensemble equals the member before training.
    """
    gap = ensemble - before
    if gap == 0 or math.isnan(gap):
        return float('nan')
    return 100.0 * (after - before) / gap
