"""The interface every member implements.

A member wraps one existing, pretrained model. For a batch it returns its per-sample task loss,
the tensor to distil and, in evaluation, its prediction. It owns its input normalisation and
resolution (like timm's ``pretrained_cfg``), so members of different families share one batch.
"""
from dataclasses import dataclass
from typing import Any, Dict, Optional

from torch import Tensor, nn


@dataclass
class MemberOutput:
    """What a member gives the meta-architecture for one training batch.

    Attributes:
        loss: ``[N]`` per-sample task loss; its mean is the member's task loss (Eq. 5 / 13).
        distill: ``[N, C, *spatial]`` class logits to distil through
            :func:`bikd.losses.distillation_loss`, or log-probabilities over axis 1 when
            ``distill_is_log_prob`` (a saliency map as a distribution over pixels).
        confidence: ``[N]`` softmax probability of the ground-truth class, for the
            ``confidence`` partition (Eq. 3 / 11); ``None`` where the task has no such score.
        distill_is_log_prob: see ``distill``.
    """
    loss: Tensor
    distill: Tensor
    confidence: Optional[Tensor] = None
    distill_is_log_prob: bool = False


class Member(nn.Module):
    """Base class of members; subclasses register in :data:`bikd.registry.MEMBERS`.

    Subclasses implement:

    - ``forward_train(inputs, data_samples) -> MemberOutput``
    - ``predict(inputs, data_samples) -> Tensor``: per-sample prediction whose mean over members
      is the ensemble's (class probabilities ``[N, C]``, per-pixel probabilities, maps).
    - ``num_classes`` (the label space; members of one run must agree),
    - ``export(directory, stem) -> dict``: write the wrapped model in its native format and
      return a JSON-able description of what was written.
    """

    def __init__(self, name: str):
        super().__init__()
        if not name or '/' in name or name == 'ensemble':
            raise ValueError(f'invalid member name {name!r}: it must be non-empty, without "/", '
                             'and not "ensemble"')
        self.name = name

    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def forward_train(self, inputs: Any, data_samples: Any) -> MemberOutput:
        raise NotImplementedError

    def predict(self, inputs: Any, data_samples: Any) -> Tensor:
        raise NotImplementedError

    def export(self, directory: str, stem: str) -> Dict[str, Any]:
        raise NotImplementedError(f'{type(self).__name__} cannot export itself')
