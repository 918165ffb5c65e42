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
            :func:`bikd.losses.distillation_loss` (softmax over axis 1), or log-probabilities
            over axis 1 (a saliency map as a distribution over pixels), which the softmax
            leaves unchanged.
        confidence: ``[N]`` softmax probability of the ground-truth class, for the
            ``confidence`` partition (Eq. 3 / 11); ``None`` where the task has no such score.
        partition_loss: ``[N]`` per-sample loss compared across members by the ``loss``
            partition (Eq. 6), when it should differ from ``loss``: members whose task losses
            are defined differently (a Mask2Former set criterion and a per-pixel
            cross-entropy) need a loss defined alike for all of them. ``None``: ``loss``.
    """
    loss: Tensor
    distill: Tensor
    confidence: Optional[Tensor] = None
    partition_loss: Optional[Tensor] = None


class Member(nn.Module):
    """Base class of members; subclasses register in :data:`bikd.registry.MEMBERS`.

    Subclasses implement:

    - ``forward_train(inputs, data_samples) -> MemberOutput``
    - ``predict(inputs, data_samples) -> Tensor``: per-sample prediction whose mean over members
      is the ensemble's (class probabilities ``[N, C]``, per-pixel probabilities, maps).
    - ``num_classes`` (the label space; members of one run must agree),
    - ``partition_loss_kind``: what the per-sample loss compared by the ``loss`` partition
      is (e.g. ``'pixel_ce'``); the meta-architecture warns when members differ.
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

    @property
    def partition_loss_kind(self) -> str:
        return type(self).__name__

    def forward_train(self, inputs: Any, data_samples: Any) -> MemberOutput:
        raise NotImplementedError

    def predict(self, inputs: Any, data_samples: Any) -> Tensor:
        raise NotImplementedError

    def export(self, directory: str, stem: str) -> Dict[str, Any]:
        raise NotImplementedError(f'{type(self).__name__} cannot export itself')
