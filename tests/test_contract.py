"""The public API (README.md, "The public API") against independent re-derivations of the paper's
equations.

The references below are written from Algorithm 1 and Eq. 1, 3, 6, 11-14 with plain Python
loops in float64, sharing no code with the implementation.
"""
import math

import numpy as np
import pytest
import torch

from bikd.losses import distillation_loss
from bikd.metrics import recovered
from bikd.partition import gt_confidence, select_teachers


def softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def kl(p, q):
    return float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0))


def algorithm1_loss(z1, z2, y, T=1.0):
    """Lines 6-8 of Algorithm 1 with Eq. 1 for L_KL: two members, per-sample masks."""
    n = len(y)
    total = 0.0
    for i in range(n):
        p1, p2 = softmax(z1[i]), softmax(z2[i])
        m1 = p1[y[i]] > p2[y[i]]  # f1 teaches
        m2 = p1[y[i]] <= p2[y[i]]  # f2 teaches (ties included)
        q1, q2 = softmax(z1[i] / T), softmax(z2[i] / T)
        total += m1 * kl(q1, q2) + m2 * kl(q2, q1)
    return T * T * total / n


def eq12_loss(zs, y, T=1.0):
    """Eq. 11 (argmax of gt probabilities, ties to the later member) and Eq. 12, any K."""
    k, n = len(zs), len(y)
    total = 0.0
    for i in range(n):
        conf = [softmax(z[i])[y[i]] for z in zs]
        best = max(conf)
        t = max(j for j in range(k) if conf[j] == best)
        for j in range(k):
            if j != t:
                total += kl(softmax(zs[t][i] / T), softmax(zs[j][i] / T))
    return T * T * total / n


def random_logits(k, n, c, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, generator=g, dtype=torch.float64) * 2 for _ in range(k)]


@pytest.mark.parametrize('T', [1.0, 2.5])
def test_two_members_match_algorithm1(T):
    z1, z2 = random_logits(2, 64, 7, seed=0)
    y = torch.randint(0, 7, (64, ), generator=torch.Generator().manual_seed(1))
    # exact ties on a few samples: identical logits, so identical gt probabilities
    z2[:5] = z1[:5]
    teachers = select_teachers(gt_confidence([z1, z2], y))
    assert teachers[:5].tolist() == [1] * 5  # ties go to the second member (Eq. 3)
    ours = distillation_loss([z1, z2], teachers, temperature=T).item()
    ref = algorithm1_loss(z1.numpy(), z2.numpy(), y.numpy(), T)
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize('T', [1.0, 3.0])
def test_three_members_match_eq11_12(T):
    zs = random_logits(3, 50, 5, seed=2)
    y = torch.randint(0, 5, (50, ), generator=torch.Generator().manual_seed(3))
    below = 5 * torch.nn.functional.one_hot(y, 5)
    zs[2][:4] = zs[0][:4]  # ties between members 0 and 2 ...
    zs[1][:4] = zs[0][:4] - below[:4]  # ... with 1 far below -> 2
    zs[1][4:8] = zs[0][4:8]  # ties between 0 and 1 ...
    zs[2][4:8] = zs[0][4:8] - below[4:8]  # ... with 2 far below -> 1
    conf = gt_confidence(zs, y)
    teachers = select_teachers(conf)
    ref_teachers = [max(j for j in range(3) if conf[j, i] == conf[:, i].max()) for i in range(50)]
    assert teachers.tolist() == ref_teachers
    assert teachers[:4].tolist() == [2] * 4 and teachers[4:8].tolist() == [1] * 4
    ours = distillation_loss(zs, teachers, temperature=T).item()
    assert ours == pytest.approx(eq12_loss([z.numpy() for z in zs], y.numpy(), T), rel=1e-9)


def test_loss_partition_lowest_wins_ties_to_later():
    losses = torch.tensor([[0.5, 0.2, 0.7, 0.3, float('nan')],
                           [0.4, 0.2, 0.9, 0.1, 0.8],
                           [0.6, 0.2, 0.7, 0.3, 0.9]])
    assert select_teachers(losses, higher_is_better=False).tolist() == [1, 2, 2, 1, 1]


def test_gt_confidence_is_softmax_of_true_class():
    zs = random_logits(2, 10, 4, seed=4)
    y = torch.arange(10) % 4
    conf = gt_confidence(zs, y)
    assert conf.shape == (2, 10) and not conf.requires_grad
    for k in range(2):
        for i in range(10):
            assert conf[k, i].item() == pytest.approx(softmax(zs[k][i].numpy())[y[i]])
    soft = torch.nn.functional.one_hot(y, 4).double()
    assert torch.allclose(gt_confidence(zs, soft), conf)


def test_dense_kl_sums_classes_and_averages_positions():
    g = torch.Generator().manual_seed(5)
    zs = [torch.randn(3, 4, 2, 5, generator=g, dtype=torch.float64) for _ in range(2)]
    teachers = torch.tensor([0, 1, 1])
    ref = 0.0
    for i in range(3):
        t, s = int(teachers[i]), 1 - int(teachers[i])
        per_pos = [kl(softmax(zs[t][i, :, h, w].numpy()), softmax(zs[s][i, :, h, w].numpy()))
                   for h in range(2) for w in range(5)]
        ref += np.mean(per_pos)
    assert distillation_loss(zs, teachers).item() == pytest.approx(ref / 3, rel=1e-9)


@pytest.mark.parametrize('detach', [True, False])
def test_gradient_reaches_students_and_not_detached_teacher(detach):
    zs = [z.clone().requires_grad_(True) for z in random_logits(3, 6, 4, seed=6)]
    teachers = torch.tensor([0, 1, 2, 0, 1, 2])
    distillation_loss(zs, teachers, detach_teacher=detach).backward()
    for k, z in enumerate(zs):
        for i in range(6):
            g = z.grad[i].abs().sum().item()
            if teachers[i] != k:
                assert g > 0, f'student {k} got no gradient on sample {i}'
            elif detach:
                assert g == 0, f'teacher {k} got gradient on sample {i} although detached'
            else:
                assert g > 0, f'teacher {k} got no gradient on sample {i} with detach=False'


def test_identical_members_give_zero_and_input_errors():
    z = random_logits(1, 4, 3, seed=7)[0]
    assert distillation_loss([z, z.clone()], torch.tensor([0, 1, 0, 1])).item() == pytest.approx(0)
    with pytest.raises(ValueError, match='at least two'):
        distillation_loss([z], torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match='differ in shape'):
        distillation_loss([z, z[:, :2]], torch.zeros(4, dtype=torch.long))


def test_recovered_matches_table3():
    # Table 3: ViT-B paired with ViT-S and with ViT-T; ViT-T paired with ViT-B.
    assert recovered(79.152, 80.326, 80.48) == pytest.approx(88.4, abs=0.05)
    assert recovered(79.152, 80.544, 80.274) == pytest.approx(124.0, abs=0.1)
    assert recovered(75.466, 76.364, 80.274) == pytest.approx(18.7, abs=0.05)
    assert math.isnan(recovered(80.0, 81.0, 80.0))


def test_teachers_are_chosen_in_the_scores_own_precision():
    """Float64 confidences that differ below float32's resolution are not ties: the teacher
    is the float64 argmax (ties to the later member only where they are exactly equal)."""
    g = torch.Generator().manual_seed(5)
    base = torch.rand(1000, generator=g, dtype=torch.float64) * 0.5 + 0.25
    tiny = (torch.rand(1000, generator=g, dtype=torch.float64) - 0.5) * 1e-9
    scores = torch.stack([base, base + tiny])
    assert (scores[0].float() == scores[1].float()).sum() > 400  # ties in float32
    expected = (scores[1] >= scores[0]).long()
    assert torch.equal(select_teachers(scores), expected)
    assert torch.equal(select_teachers(-scores, higher_is_better=False), expected)


def test_tied_samples_teach_nobody_with_ties_skip():
    from bikd.partition import NO_TEACHER, teacher_share
    scores = torch.tensor([[0.9, 0.2, 0.2, 0.5], [0.1, 0.6, 0.8, 0.7], [0.3, 0.4, 0.8, 0.1]])
    assert select_teachers(scores).tolist() == [0, 1, 2, 1]
    skip = select_teachers(scores, ties='skip')
    assert skip.tolist() == [0, 1, NO_TEACHER, 1]  # sample 2: members 1 and 2 tie for the best
    assert teacher_share(skip, 3).tolist() == pytest.approx([0.25, 0.5, 0.0])
    logits = [torch.randn(4, 3, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    full = distillation_loss(logits, select_teachers(scores))
    kept = distillation_loss([z[[0, 1, 3]] for z in logits], torch.tensor([0, 1, 1]))
    assert distillation_loss(logits, skip).item() == pytest.approx(kept.item() * 3 / 4)
    assert full.item() != pytest.approx(distillation_loss(logits, skip).item())
    with pytest.raises(ValueError, match="ties must be one of"):
        select_teachers(scores, ties='first')
