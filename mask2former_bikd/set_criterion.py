"""Mask2Former's official ``SetCriterion`` evaluated once for a batch, giving both what the
official model trains on and what each image's loss is on its own.

The official loss of a batch (``MaskFormer.forward`` in training: ``SetCriterion.forward``, each
term weighted by ``weight_dict``) is normalised over the batch as a whole: the class loss is the
weighted mean over all of the batch's queries, the mask losses (sigmoid cross-entropy and Dice on
sampled points) are sums over all of the batch's matched masks divided by ``num_masks``, the
number of target masks in the batch summed over the processes (an all-reduce) and divided by the
number of processes. Under DDP, whose gradient is the mean of the processes' gradients, that
is the loss over the global batch.

Bi-KD's partition needs one loss per image that depends on that image alone: the same
criterion on the image's own queries and masks, normalised by the image's own number of masks
(the official loss of that image at batch 1 on one process), without any collective.

:func:`set_losses` computes both from one matching and one draw of sampled points, consuming
the random generator exactly as ``SetCriterion.forward`` does (one point draw per image in the
matcher, then the mask losses' draws over all of the batch's matched masks, for the last decoder
layer and then for each auxiliary one): the batch loss is the official training loss, bit for
bit, and each image's loss uses the same matching and the same points. It calls the criterion's
own pieces (``matcher``, ``loss_labels``, the point sampling and the loss functions of
``mask2former.modeling.criterion``); only the reduction differs per image.
"""
from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor


def official_num_masks(count: int, device: torch.device) -> float:
    """``num_masks`` as ``SetCriterion.forward`` computes it: the batch's target masks summed over
    the processes (one all-reduce when torch.distributed is initialised), divided by the number
    of processes, at least 1."""
    from mask2former.modeling import criterion as official
    num = torch.as_tensor([count], dtype=torch.float, device=device)
    if official.is_dist_avail_and_initialized():
        torch.distributed.all_reduce(num)
    return torch.clamp(num / official.get_world_size(), min=1).item()


def _batch_index(indices: Sequence[Tuple[Tensor, Tensor]], side: int) -> Tuple[Tensor, Tensor]:
    """(image of each matched pair, its query (``side`` 0) or target (1) index), image by image:
    the indexing of the batch's matched masks that the criterion's mask loss uses."""
    picked = [pair[side] for pair in indices]
    images = torch.cat([torch.full_like(p, i) for i, p in enumerate(picked)])
    return images, torch.cat(picked)


def sampled_mask_points(criterion, outputs: Dict[str, Tensor],
                        targets: Sequence[Dict[str, Tensor]],
                        indices: Sequence[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor]:
    """What ``SetCriterion.loss_masks`` computes before it reduces: per matched mask of the
    batch, its logits and target on the points sampled for it (``[M, P]`` each, the points
    drawn as the official code draws them, for all of the batch's matched masks at once). The
    masks are in the order of ``indices``: image by image."""
    from detectron2.projects.point_rend.point_features import (
        get_uncertain_point_coords_with_randomness, point_sample)
    from mask2former.modeling.criterion import calculate_uncertainty
    from mask2former.utils.misc import nested_tensor_from_tensor_list

    src_idx, tgt_idx = _batch_index(indices, 0), _batch_index(indices, 1)
    src_masks = outputs['pred_masks'][src_idx]
    target_masks, _ = nested_tensor_from_tensor_list([t['masks'] for t in targets]).decompose()
    target_masks = target_masks.to(src_masks)[tgt_idx]
    src_masks, target_masks = src_masks[:, None], target_masks[:, None]
    with torch.no_grad():
        point_coords = get_uncertain_point_coords_with_randomness(
            src_masks, lambda logits: calculate_uncertainty(logits), criterion.num_points,
            criterion.oversample_ratio, criterion.importance_sample_ratio)
        point_labels = point_sample(target_masks, point_coords, align_corners=False).squeeze(1)
    point_logits = point_sample(src_masks, point_coords, align_corners=False).squeeze(1)
    return point_logits, point_labels


def set_losses(criterion, outputs: Dict[str, Tensor], targets: Sequence[Dict[str, Tensor]]
               ) -> Tuple[Tensor, Tensor]:
    """``(per-image losses [N], batch loss)`` of Mask2Former's ``criterion`` (a
    ``SetCriterion``) on a batch's decoder ``outputs`` and ``targets`` (``labels``, ``masks``
    padded to the batch's size, as ``MaskFormer.prepare_targets`` makes them).

    The batch loss is ``sum(MaskFormer.forward(batch).values())`` in training: every term the
    criterion's ``weight_dict`` weights, normalised over the batch (:func:`official_num_masks`,
    with its all-reduce under DDP). Image ``i``'s loss is the same sum over image ``i``'s
    queries and masks alone, its mask losses divided by its own number of masks (at least 1):
    the official loss of the image at batch 1 on one process; it needs no collective and
    carries no gradient (it chooses teachers; the batch loss is what trains)."""
    from mask2former.modeling.criterion import dice_loss_jit, sigmoid_ce_loss_jit

    n = len(targets)
    device = outputs['pred_logits'].device
    counts = [len(t['labels']) for t in targets]
    layers: List[Tuple[str, Dict[str, Tensor]]] = [
        ('', {k: v for k, v in outputs.items() if k != 'aux_outputs'})]
    layers += [(f'_{i}', aux) for i, aux in enumerate(outputs.get('aux_outputs', []))]
    weights = criterion.weight_dict
    batch: Dict[str, Tensor] = OrderedDict()
    images: List[Dict[str, Tensor]] = [OrderedDict() for _ in range(n)]
    num_masks = None
    for suffix, out in layers:
        indices = criterion.matcher(out, targets)
        if num_masks is None:  # after the first matching, as SetCriterion.forward
            num_masks = official_num_masks(sum(counts), device)
        for kind in criterion.losses:
            if kind == 'labels':
                batch['loss_ce' + suffix] = criterion.loss_labels(
                    out, targets, indices, num_masks)['loss_ce']
                with torch.no_grad():
                    for i in range(n):
                        images[i]['loss_ce' + suffix] = criterion.loss_labels(
                            {'pred_logits': out['pred_logits'][i:i + 1]}, [targets[i]],
                            [indices[i]], 1.0)['loss_ce']
            elif kind == 'masks':
                logits, labels = sampled_mask_points(criterion, out, targets, indices)
                batch['loss_mask' + suffix] = sigmoid_ce_loss_jit(logits, labels, num_masks)
                batch['loss_dice' + suffix] = dice_loss_jit(logits, labels, num_masks)
                with torch.no_grad():
                    start = 0
                    for i, (src, _) in enumerate(indices):  # image i's masks: a slice
                        mine = slice(start, start + len(src))
                        start += len(src)
                        norm = float(max(counts[i], 1))
                        images[i]['loss_mask' + suffix] = sigmoid_ce_loss_jit(
                            logits[mine], labels[mine], norm)
                        images[i]['loss_dice' + suffix] = dice_loss_jit(
                            logits[mine], labels[mine], norm)
            else:
                raise ValueError(f'SetCriterion loss {kind!r} is not one this member knows '
                                 "(Mask2Former's are 'labels' and 'masks')")

    def weighted(terms: Dict[str, Tensor]) -> Tensor:
        # as MaskFormer.forward: each term times its weight, terms without one dropped; summed
        # in the criterion's order, as sum(losses.values()) does
        return sum(v * weights[k] for k, v in terms.items() if k in weights)

    per_image = torch.stack([weighted(t) for t in images]) if n else \
        outputs['pred_logits'].new_zeros((0, ))
    return per_image, weighted(batch)
