"""What one training step of a meta-architecture produces, and the one place where it becomes
log keys.

A meta-architecture's ``loss()`` returns a :class:`StepOutput`; its ``parse_losses`` turns that
into the total loss and the logged values (:meth:`StepOutput.log_vars`). Everything that reads
the logs back (the summary hook, run_experiment's plots) names keys through :func:`log_key`
and reads them with :func:`logged`, so any member name works and no key is found by guessing.
"""
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional

import torch
from torch import Tensor

#: kinds of logged values -> key prefix. A member's name follows the "/" (names have none).
TASK_LOSS, DISTILL_LOSS, TEACHER_SHARE, TOTAL = 'task_loss', 'distill_loss', 'teacher_share', 'loss'


def log_key(kind: str, name: str = '') -> str:
    """The log key of a value: ``log_key('task_loss', 'resnet') == 'task_loss/resnet'``,
    ``log_key('distill_loss') == 'distill_loss'``."""
    return f'{kind}/{name}' if name else kind


def logged(values: Mapping[str, float], kind: str) -> Dict[str, float]:
    """The values of one kind in a log record or a step's log variables, by name:
    ``logged({'task_loss/a': 1.0, 'loss': 2.0}, 'task_loss') == {'a': 1.0}``."""
    prefix = kind + '/'
    return {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}


@dataclass
class StepOutput:
    """One training batch's losses and partition.

    Attributes:
        task_losses: member name -> its mean task loss (members that learn from their task;
            the order is the order of the sum).
        distill_loss: the distillation term, or ``None`` where the method has none.
        teacher_share: who taught which share of the batch: member names, or role labels a
            method defines (KL+DP's ``<student>@initial``); shares as 0-dim tensors.
    """
    task_losses: Dict[str, Tensor] = field(default_factory=dict)
    distill_loss: Optional[Tensor] = None
    teacher_share: Dict[str, Tensor] = field(default_factory=dict)

    def loss_terms(self) -> Dict[str, Tensor]:
        """The terms whose sum is the loss, by log key, in the order of the sum."""
        terms = {log_key(TASK_LOSS, name): v for name, v in self.task_losses.items()}
        if self.distill_loss is not None:
            terms[log_key(DISTILL_LOSS)] = self.distill_loss
        return terms

    def total(self) -> Tensor:
        """Sum of the task losses and the distillation term (Eq. 13)."""
        terms = list(self.loss_terms().values())
        if not terms:
            raise ValueError('a training step produced no loss term')
        return sum(terms)

    def nonfinite_terms(self) -> Dict[str, float]:
        """The loss terms that are NaN or infinite (log key -> their mean value), none when
        the step is sound: what the optimiser wrapper names when it drops the step or stops
        (:mod:`bikd.engine.optim`)."""
        terms = self.loss_terms()
        if not terms:
            return {}
        finite = torch.stack([torch.isfinite(v.detach()).all() for v in terms.values()])
        if bool(finite.all()):
            return {}
        return {k: float(v.detach().float().mean())
                for (k, v), ok in zip(terms.items(), finite.tolist()) if not ok}

    def log_vars(self) -> Dict[str, Tensor]:
        """Every value as a detached 0-dim tensor, by log key; ``loss`` (the total) first."""
        out = {TOTAL: self.total().detach()}
        out.update({k: v.detach() for k, v in self.loss_terms().items()})
        out.update({log_key(TEACHER_SHARE, name): v.detach() if isinstance(v, Tensor) else v
                    for name, v in self.teacher_share.items()})
        return out


def describe_term(key: str) -> str:
    """A loss term's log key in words: ``member 'b'``, ``the distillation term``."""
    if key == DISTILL_LOSS:
        return 'the distillation term'
    name = logged({key: 0.0}, TASK_LOSS)
    return f'member {next(iter(name))!r}' if name else key
