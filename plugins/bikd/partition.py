"""Per-sample teacher selection (paper Eq. 3, 6 and 11)."""
from typing import Sequence

import torch
from torch import Tensor

from .losses import at_least_fp32


#: what a sample whose best score is shared by several members gets
TIE_RULES = ('later', 'skip')
#: the teacher index of a sample that teaches nobody (``ties='skip'``)
NO_TEACHER = -1


def select_teachers(scores: Tensor, higher_is_better: bool = True, ties: str = 'later') -> Tensor:
    """Pick the teacher of every sample.

    Args:
        scores: ``[K, N]`` score of each of K members on each of N samples: the ground-truth
            confidence (``higher_is_better=True``, Eq. 3 / 11) or the per-sample task loss
            (``higher_is_better=False``, Eq. 6). Compared in their own precision (float64
            stays float64; half precision is compared in float32).
        higher_is_better: whether the best score is the largest one.
        ties: a sample whose best score is shared by several members: ``'later'`` gives it
            to the highest member index among them, as Eq. 3 and Eq. 6 give it to the second
            member; ``'skip'`` gives it to nobody (:data:`NO_TEACHER`), as the paper authors'
            three- and four-model scripts do.

    Returns:
        ``LongTensor[N]``: the teacher's member index per sample (or :data:`NO_TEACHER`). A
        NaN score never wins, unless every member's score is NaN (then the last member is
        chosen, or nobody with ``'skip'``).
    """
    if scores.dim() != 2:
        raise ValueError(f'scores must have shape [K, N], got {tuple(scores.shape)}')
    if ties not in TIE_RULES:
        raise ValueError(f'ties must be one of {TIE_RULES}, got {ties!r}')
    scores = scores.detach()
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    if not higher_is_better:
        scores = -scores
    scores = torch.nan_to_num(scores, nan=float('-inf'))
    # argmax returns the first maximum; flipping the member axis turns that into the last one.
    k = scores.shape[0]
    teachers = (k - 1) - scores.flip(0).argmax(dim=0)
    if ties == 'skip':
        best = scores.amax(dim=0)
        shared = (scores == best).sum(dim=0) > 1
        teachers = torch.where(shared, torch.full_like(teachers, NO_TEACHER), teachers)
    return teachers


@torch.no_grad()
def gt_confidence(logits: Sequence[Tensor], targets: Tensor) -> Tensor:
    """Softmax probability each member gives to the ground-truth class.

    Args:
        logits: K tensors ``[N, C]`` (one per member, same N and C).
        targets: ``LongTensor[N]`` class indices, or ``[N, C]`` soft targets (mixup, label
            smoothing), for which the confidence is the probability mass on the target,
            ``sum_c p_c * y_c``.

    Returns:
        ``Tensor[K, N]`` in [0, 1], without gradient.
    """
    if len(logits) == 0:
        raise ValueError('gt_confidence needs at least one member\'s logits')
    shapes = {tuple(z.shape) for z in logits}
    if len(shapes) != 1:
        raise ValueError(f'members\' logits differ in shape: {sorted(shapes)}')
    probs = torch.stack([at_least_fp32(z).softmax(dim=1) for z in logits])  # [K, N, C]
    if targets.dim() == 1:
        index = targets.long().view(1, -1, 1).expand(probs.shape[0], -1, 1)
        return probs.gather(2, index).squeeze(2)
    if targets.shape != probs.shape[1:]:
        raise ValueError(f'soft targets of shape {tuple(targets.shape)} do not match logits '
                         f'of shape {tuple(probs.shape[1:])}')
    return (probs * targets.to(probs.dtype).unsqueeze(0)).sum(dim=2)


def teacher_share(teachers: Tensor, num_members: int) -> Tensor:
    """Fraction of samples each member taught: ``Tensor[K]``, summing to 1 less the share of
    samples that taught nobody (``ties='skip'``)."""
    taught = teachers[teachers >= 0]
    counts = torch.bincount(taught, minlength=num_members).float()
    return counts / max(teachers.numel(), 1)
