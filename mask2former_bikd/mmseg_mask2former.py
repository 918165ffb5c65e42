"""mmseg's Mask2Former as a member: per-image set-criterion losses, the semantic inference's
per-pixel class distribution."""
from typing import Tuple

import torch
from torch import Tensor

from bikd.registry import MEMBERS

from .mmseg_member import MMSegMemberBase
from .segmentation_member import PROBABILITY_FLOOR


@MEMBERS.register_module()
class MMSegMask2FormerMember(MMSegMemberBase):
    """An mmseg Mask2Former (``Mask2FormerHead``) as a member; arguments of
    :class:`~mask2former_bikd.mmseg_member.MMSegMemberBase`.

    Task loss per image: the set criterion (Hungarian matching, BCE + Dice mask losses on
    sampled points, class loss and the auxiliary decoder losses), evaluated on each image's
    slice of the decoder outputs (mmdet's ``loss_by_feat``). Distilled: the scores of its
    semantic inference at mask resolution, as ``distribution`` says
    (:class:`~mask2former_bikd.segmentation_member.SegmentationMember`).
    """
    @property
    def task_loss_kind(self) -> str:
        # one loss per decoder layer and one for the queries before them, as the official
        # member counts its DEC_LAYERS
        outputs = self.segmentor.decode_head.num_transformer_decoder_layers + 1
        return f'mask2former_set_criterion over {outputs} decoder outputs'

    @classmethod
    def handles(cls, head_cls: type) -> bool:
        from mmseg.models.decode_heads import Mask2FormerHead
        return issubclass(head_cls, Mask2FormerHead)

    def task_forward(self, feats, samples, padded_hw) -> Tuple[Tensor, Tensor, Tensor]:
        from mmseg.utils import seg_data_to_instance_data

        head = self.segmentor.decode_head
        gt_instances = seg_data_to_instance_data(self.ignore_index, samples)
        cls_scores, mask_preds = head(feats, samples)
        losses = []
        for i, sample in enumerate(samples):
            parts = head.loss_by_feat([c[i:i + 1] for c in cls_scores],
                                      [m[i:i + 1] for m in mask_preds], [gt_instances[i]],
                                      [sample.metainfo])
            losses.append(sum(v.sum() for k, v in parts.items() if 'loss' in k))
        masks = self.crop_resize(mask_preds[-1], padded_hw, samples[0].metainfo['img_shape'])
        logits, log_probs = self.distilled(self.mask_classification_scores(cls_scores[-1],
                                                                           masks))
        return torch.stack(losses), logits, log_probs

    def probabilities(self, seg_logits: Tensor) -> Tensor:
        # the semantic inference's scores, normalised over the classes
        return seg_logits / seg_logits.sum(0, keepdim=True).clamp(min=PROBABILITY_FLOOR)
