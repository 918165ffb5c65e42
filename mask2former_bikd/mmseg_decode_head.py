"""mmseg's decode-head segmentors (UPerNet, FCN, DeepLab, ...) as members: per-image losses of
their heads, per-pixel class logits."""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from bikd.registry import MEMBERS

from .mmseg_member import MMSegMemberBase


@MEMBERS.register_module()
class MMSegDecodeHeadMember(MMSegMemberBase):
    """An mmseg segmentor whose decode head gives class logits per pixel; arguments of
    :class:`~mask2former_bikd.mmseg_member.MMSegMemberBase` (its logits are distilled through a
    softmax whatever ``distribution`` says).

    Task loss per image: each head's own loss modules (the decode head's and the auxiliary
    heads', with their weights), per pixel, averaged per image the way mmseg averages over the
    batch (over all pixels, or over non-ignored ones with ``avg_non_ignore``).
    """
    task_loss_kind = 'decode_head_loss'

    @classmethod
    def handles(cls, head_cls: type) -> bool:
        """mmseg's decode heads, which give class logits per pixel (the mask-classification
        heads, Mask2Former and MaskFormer, derive from mmdet's heads instead)."""
        from mmseg.models.decode_heads.decode_head import BaseDecodeHead
        return issubclass(head_cls, BaseDecodeHead)

    def task_forward(self, feats, samples, padded_hw) -> Tuple[Tensor, Tensor, Tensor]:
        heads = [self.segmentor.decode_head]
        aux = getattr(self.segmentor, 'auxiliary_head', None)
        heads += list(aux) if isinstance(aux, torch.nn.ModuleList) else ([aux] if aux else [])
        gt = torch.stack([s.gt_sem_seg.data.squeeze(0) for s in samples]).long()
        valid = (gt != self.ignore_index).flatten(1).sum(1).clamp(min=1)
        loss, logits = 0, None
        for head in heads:
            out = head(feats)
            logits = out if logits is None else logits
            up = F.interpolate(out, size=gt.shape[-2:], mode='bilinear',
                               align_corners=head.align_corners)
            fns = head.loss_decode if isinstance(head.loss_decode, torch.nn.ModuleList) \
                else [head.loss_decode]
            for fn in fns:
                pixel = fn(up, gt, weight=None, ignore_index=self.ignore_index,
                           reduction_override='none').flatten(1).sum(1)
                loss = loss + pixel / (valid if getattr(fn, 'avg_non_ignore', False)
                                       else gt[0].numel())
        logits = self.crop_resize(logits, padded_hw, samples[0].metainfo['img_shape'])
        return loss, logits, logits.float().log_softmax(1)

    def probabilities(self, seg_logits: Tensor) -> Tensor:
        return seg_logits.softmax(0)
