"""BiKDMetaArch and IndependentMetaArch on tiny timm members: the loss is Eq. 13."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from bikd import BiKDMetaArch, IndependentMetaArch
from bikd.losses import distillation_loss
from conftest import batch, tiny


def test_bikd_loss_is_sum_of_task_losses_plus_masked_kl():
    torch.manual_seed(0)
    model = BiKDMetaArch([tiny('a'), tiny('b'), tiny('c')], temperature=2.0)
    images, samples = batch()
    out = model(images, samples, mode='loss')
    assert set(out.log_vars()) == {'loss', 'task_loss/a', 'task_loss/b', 'task_loss/c',
                                   'distill_loss', 'teacher_share/a', 'teacher_share/b',
                                   'teacher_share/c'}
    # independent computation from the members' logits
    logits = [m.logits(images) for m in model.members]
    y = samples['label']
    for m, z in zip('abc', logits):
        assert out.task_losses[m].item() == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-5)
    conf = torch.stack([z.softmax(1)[torch.arange(8), y] for z in logits])  # [K, N]
    teachers = [max(k for k in range(3) if conf[k, i] == conf[:, i].max()) for i in range(8)]
    ref = 0.0
    for i, t in enumerate(teachers):
        p_t = (logits[t][i] / 2).softmax(0)
        for j in range(3):
            if j != t:
                ref += (p_t * (p_t.log() - (logits[j][i] / 2).log_softmax(0))).sum().item()
    assert out.distill_loss.item() == pytest.approx(4 * ref / 8, rel=1e-4)
    for k, m in enumerate('abc'):
        assert out.teacher_share[m].item() == pytest.approx(teachers.count(k) / 8)
    total, log_vars = model.parse_losses(out)
    assert total.item() == pytest.approx(sum(out.task_losses.values()).item() + 4 * ref / 8,
                                         rel=1e-4)
    assert log_vars['loss'].item() == total.item()


@pytest.mark.parametrize('names', [('gloss', 'distill'), ('loss', 'teacher_share')])
def test_any_member_name_works_and_shares_never_enter_the_loss(names):
    """mmengine sums every logged key that contains "loss"; a member called "gloss" must not
    make its teacher share part of the loss, nor a member called "distill" collide with the
    distillation term."""
    torch.manual_seed(0)
    model = BiKDMetaArch([tiny(names[0]), tiny(names[1])])
    images, samples = batch()
    out = model(images, samples, mode='loss')
    total, log_vars = model.parse_losses(out)
    expected = sum(F.cross_entropy(m.logits(images), samples['label']) for m in model.members)
    assert total.item() == pytest.approx((expected + out.distill_loss).item(), rel=1e-5)
    assert set(log_vars) == {'loss', f'task_loss/{names[0]}', f'task_loss/{names[1]}',
                             'distill_loss', f'teacher_share/{names[0]}',
                             f'teacher_share/{names[1]}'}
    assert sum(log_vars[f'teacher_share/{n}'].item() for n in names) == pytest.approx(1.0)


def test_member_names_that_cannot_name_files_and_keys_are_refused():
    for bad in ('a/b', 'ensemble', 'two words', '-a'):
        with pytest.raises(ValueError, match='invalid member name'):
            BiKDMetaArch([tiny(bad), tiny('b')])


def test_every_member_gets_gradient_and_independent_has_no_kl():
    torch.manual_seed(0)
    images, samples = batch()
    for cls in (BiKDMetaArch, IndependentMetaArch):
        model = cls([tiny('a'), tiny('b')])
        out = model(images, samples, mode='loss')
        assert (out.distill_loss is not None) == (cls is BiKDMetaArch)
        out.total().backward()
        for m in model.members:
            assert m.model.head.weight.grad.abs().sum() > 0


def test_independent_gradient_is_each_members_own_task_gradient():
    torch.manual_seed(0)
    images, samples = batch()
    model = IndependentMetaArch([tiny('a'), tiny('b')])
    out = model(images, samples, mode='loss')
    out.total().backward()
    g_joint = model.members[0].model.head.weight.grad.clone()
    model.zero_grad()
    F.cross_entropy(model.members[0].logits(images), samples['label']).backward()
    assert torch.allclose(g_joint, model.members[0].model.head.weight.grad, atol=1e-6)


def test_predict_stacks_members_and_ensemble_mean():
    torch.manual_seed(0)
    model = BiKDMetaArch([tiny('a'), tiny('b')]).eval()
    images, samples = batch()
    (out, ) = model(images, samples, mode='predict')
    assert out['names'] == ['a', 'b', 'ensemble']
    preds = out['preds'].stacked()
    assert preds.shape == (3, 8, 5)
    assert torch.allclose(preds.sum(-1), torch.ones(3, 8), atol=1e-5)
    assert torch.allclose(preds[2], (preds[0] + preds[1]) / 2)


def test_members_normalise_with_their_own_statistics():
    imagenet_mean, imagenet_std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    members = BiKDMetaArch([tiny('a'), tiny('b', mean=imagenet_mean, std=imagenet_std)]).members
    images = torch.full((1, 3, 20, 20), 255, dtype=torch.uint8)
    # a: timm's pretrained_cfg of this ViT (mean = std = 0.5), resized to its 16x16 input
    assert torch.allclose(members[0].normalize(images), torch.ones(1, 3, 16, 16))
    x = members[1].normalize(images)
    expected = (1 - torch.tensor(imagenet_mean)) / torch.tensor(imagenet_std)
    assert torch.allclose(x[0, :, 0, 0], expected)


class _LargestTensor(TorchDispatchMode):
    """Records the size of the largest tensor any operator produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize('k', [2, 5])
def test_distillation_term_never_builds_a_tensor_larger_than_one_members_output(k):
    # 150 classes at a segmentation member's distillation resolution: stacking the K members'
    # outputs (or pairwise K x K KLs) would build a tensor K (or K^2) times one output.
    shape = (3, 150, 12, 16)
    torch.manual_seed(0)
    logits = [torch.randn(shape, requires_grad=True) for _ in range(k)]
    teachers = torch.tensor([k - 1, 0, 1])
    with _LargestTensor() as mode:
        distillation_loss(logits, teachers).backward()
    assert mode.largest == math.prod(shape)
    assert all(z.grad is not None for z in logits)
