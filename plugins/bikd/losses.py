"""The masked distillation term of Bi-KD (paper Eq. 1, 4 and 12).

One implementation serves every task: class logits go through :func:`distillation_loss`;
members whose output is already a distribution of another kind (a saliency map over pixels)
pass log-probabilities to :func:`masked_kl`.
"""
from typing import Sequence

import torch
from torch import Tensor
from .errors import UserError


def positive_temperature(temperature: float) -> float:
    """``temperature`` as a float; a clear error if it is not positive."""
    if temperature <= 0:
        raise UserError(f'temperature must be positive, got {temperature}')
    return float(temperature)


def at_least_fp32(x: Tensor) -> Tensor:
    """Half-precision logits (AMP) are upcast for the softmax; float64 stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def masked_kl(log_probs: Sequence[Tensor], teacher: Tensor, detach_teacher: bool = True) -> Tensor:
    """Sum over samples and students of ``KL(p_teacher || p_student)``, without scaling.

    Args:
        log_probs: K tensors ``[N, C, *spatial]`` of log-probabilities over axis 1.
        teacher: ``LongTensor[N]``, the teacher's member index per sample; a negative index
            (:data:`bikd.partition.NO_TEACHER`) gives that sample no distillation.
        detach_teacher: stop the gradient into the teacher's distribution (standard
            distillation). ``False`` lets it flow, as the paper authors' released code does.

    Returns:
        Scalar: ``sum_i sum_{j != t_i} mean_spatial sum_c p_t (log p_t - log p_j)``.

    Cost: K KL terms per sample, never the K x K pairwise KLs; memory beyond the inputs stays
    a few output-sized tensors plus one gradient per member, linear in K.
    """
    k = len(log_probs)
    if k < 2:
        raise ValueError(f'distillation needs at least two members, got {k}')
    shapes = {tuple(lp.shape) for lp in log_probs}
    if len(shapes) != 1:
        raise ValueError(f'members\' outputs differ in shape: {sorted(shapes)}; '
                         'they must be brought to one resolution before distillation')
    n = log_probs[0].shape[0]
    if teacher.shape != (n, ):
        raise ValueError(f'teacher must have shape [{n}], got {tuple(teacher.shape)}')
    teacher = teacher.to(log_probs[0].device).view(n, *[1] * (log_probs[0].dim() - 1))
    # The teachers' distributions, picked sample by sample without stacking the K members'
    # outputs: at most two output-sized tensors are alive at once, whatever K.
    lp_teacher = log_probs[-1]
    for j in range(k - 2, -1, -1):
        lp_teacher = torch.where(teacher == j, log_probs[j], lp_teacher)
    teacher = teacher.view(n)
    if detach_teacher:
        lp_teacher = lp_teacher.detach()
    p_teacher = lp_teacher.exp()
    # sum_c p_t log p_t once per sample (0 log 0 = 0, so a zero probability gives no NaN);
    # each student then costs one cross term sum_c p_t log p_j.
    neg_entropy = torch.where(p_teacher > 0, p_teacher * lp_teacher, 0.0).sum(dim=1)
    total = log_probs[0].new_zeros(())
    taught = teacher >= 0
    for j, lp in enumerate(log_probs):
        student = (teacher != j) & taught
        kl = neg_entropy - (p_teacher * lp).sum(dim=1)  # [N, *spatial]
        if kl.dim() > 1:
            kl = kl.flatten(1).mean(dim=1)
        total = total + torch.where(student, kl, 0.0).sum()
    return total


def distillation_loss(logits: Sequence[Tensor], teacher: Tensor, temperature: float = 1.0,
                      detach_teacher: bool = True) -> Tensor:
    """Bi-KD's distillation term, Eq. 12 with Eq. 1's scaling.

    ``T^2 / N * sum_i sum_{j != t_i} KL(softmax(z_t / T) || softmax(z_j / T))``, the KL summed
    over classes (axis 1) and averaged over spatial positions.

    Args:
        logits: K tensors ``[N, C, *spatial]``.
        teacher: ``LongTensor[N]`` from :func:`bikd.partition.select_teachers`.
        temperature: T of Eq. 1.
        detach_teacher: see :func:`masked_kl`.

    Returns:
        Scalar tensor.
    """
    temperature = positive_temperature(temperature)
    log_probs = [(at_least_fp32(z) / temperature).log_softmax(dim=1) for z in logits]
    n = max(logits[0].shape[0], 1)
    return masked_kl(log_probs, teacher, detach_teacher) * (temperature**2 / n)
