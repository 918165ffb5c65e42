"""What every semantic-segmentation member shares, whatever library it wraps (mmseg,
detectron2): the distilled class distribution at one resolution for all members of a run, the
pixel cross-entropy that makes per-image losses comparable across kinds of segmentors, and the
predictions of a batch padded to one size."""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from bikd.errors import UserError
from bikd.members import Member, MemberOutput

#: added to per-pixel probabilities before the log, so a class with zero score stays finite
PROBABILITY_FLOOR = 1e-6
DISTRIBUTIONS = ('normalized', 'softmax')
PARTITION_LOSSES = ('task', 'pixel_ce')


class SegmentationMember(Member):
    """Base of the segmentation members.

    Args:
        name, pretrained, checkpoint, trust_checkpoint: see :class:`bikd.Member`.
        distribution: for mask-classification models (Mask2Former), the per-pixel class
            distribution that is distilled: ``'normalized'`` (the semantic inference's scores
            ``sum_q softmax(class_q) * sigmoid(mask_q)`` divided by their sum over classes) or
            ``'softmax'`` (a softmax over those scores, as the paper authors' code does).
            Models with per-pixel class logits are distilled through their softmax.
        distill_stride: the distillation resolution, as a fraction of the training crop
            (4: the mask resolution of Mask2Former); shared by all members of a run.
        partition_loss: the per-image loss the ``loss`` partition compares: ``'task'`` (the
            segmentor's own loss, Eq. 6; comparable between segmentors of one kind) or
            ``'pixel_ce'`` (the cross-entropy of the distilled class distribution against the
            ground truth at the distillation resolution; comparable between any segmentors,
            e.g. Mask2Former with UPerNet).

    Subclasses set ``ignore_index`` and ``task_loss_kind`` (what their own loss is).
    """
    #: what the segmentor's own loss is (set by the subclasses)
    task_loss_kind = ''
    transformers_member = 'TransformersSegmentationMember'
    ignore_index = 255

    def __init__(self, name: str, pretrained: bool = True, checkpoint: Optional[str] = None,
                 trust_checkpoint: bool = False, distribution: str = 'normalized',
                 distill_stride: int = 4, partition_loss: str = 'task'):
        super().__init__(name, pretrained, checkpoint, trust_checkpoint)
        if distribution not in DISTRIBUTIONS:
            raise UserError(f'distribution must be one of {DISTRIBUTIONS}, got {distribution!r}')
        if partition_loss not in PARTITION_LOSSES:
            raise UserError(f'partition_loss must be one of {PARTITION_LOSSES}, got '
                            f'{partition_loss!r}')
        self.distribution = distribution
        self.distill_stride = int(distill_stride)
        self.partition_loss = partition_loss

    @property
    def partition_loss_kind(self) -> str:
        return 'pixel_ce' if self.partition_loss == 'pixel_ce' else self.task_loss_kind

    def distill_size(self, valid_hw: Sequence[int]) -> Tuple[int, int]:
        """The distillation resolution for a training crop of ``valid_hw`` pixels."""
        return tuple(math.ceil(s / self.distill_stride) for s in valid_hw[:2])

    def crop_resize(self, maps: Tensor, padded_hw: Sequence[int],
                    valid_hw: Sequence[int]) -> Tensor:
        """Feature-resolution maps of a padded batch -> the valid (unpadded) region at the
        shared distillation size."""
        h, w = valid_hw[:2]
        fh = math.ceil(maps.shape[-2] * h / padded_hw[0])
        fw = math.ceil(maps.shape[-1] * w / padded_hw[1])
        maps = maps[..., :fh, :fw]
        size = self.distill_size(valid_hw)
        if tuple(maps.shape[-2:]) != size:
            maps = F.interpolate(maps, size=size, mode='bilinear', align_corners=False)
        return maps

    @staticmethod
    def mask_classification_scores(cls_logits: Tensor, mask_logits: Tensor) -> Tensor:
        """Mask2Former's semantic inference: ``[N, Q, C + 1]`` class logits (the last is "no
        object") and ``[N, Q, h, w]`` mask logits -> ``[N, C, h, w]`` per-pixel scores."""
        probs = cls_logits.float().softmax(-1)[..., :-1]
        return torch.einsum('nqc,nqhw->nchw', probs, mask_logits.float().sigmoid())

    def distilled(self, scores: Tensor) -> Tuple[Tensor, Tensor]:
        """Semantic-inference scores -> (what is distilled, its log-probabilities), as
        ``distribution`` says."""
        floor = PROBABILITY_FLOOR
        log_probs = (scores / scores.sum(1, keepdim=True).clamp(min=floor) + floor).log()
        return (log_probs if self.distribution == 'normalized' else scores), log_probs

    def pixel_ce(self, log_probs: Tensor, gt: Tensor, valid_hw: Sequence[int]) -> Tensor:
        """Per-image mean of -log p(ground truth) over non-ignored pixels, at the distillation
        resolution: ``gt`` ``[N, Hp, Wp]`` (padded labels) is cropped to ``valid_hw`` and
        subsampled with nearest neighbours."""
        h, w = valid_hw[:2]
        gt = gt[:, None, :h, :w].float()
        gt = F.interpolate(gt, size=tuple(log_probs.shape[-2:]), mode='nearest')
        gt = gt.squeeze(1).long()
        valid = gt != self.ignore_index
        nll = -log_probs.gather(1, gt.clamp(0, self.num_classes - 1).unsqueeze(1)).squeeze(1)
        return (nll * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)

    def member_output(self, loss: Tensor, logits: Tensor, log_probs: Tensor, gt: Tensor,
                      valid_hw: Sequence[int]) -> MemberOutput:
        """The member's output, with the pixel cross-entropy for the partition if asked."""
        partition_loss = None
        if self.partition_loss == 'pixel_ce':
            partition_loss = self.pixel_ce(log_probs.detach(), gt, valid_hw)
        return MemberOutput(loss=loss, logits=logits, partition_loss=partition_loss)

    @staticmethod
    def pad_stack(probs: Sequence[Tensor]) -> Tensor:
        """Per-image ``[C, H, W]`` probabilities -> ``[N, C, H, W]``, padded (bottom/right,
        zeros) to the largest image of the batch."""
        h = max(p.shape[-2] for p in probs)
        w = max(p.shape[-1] for p in probs)
        return torch.stack([F.pad(p, (0, w - p.shape[-1], 0, h - p.shape[-2])) for p in probs])
