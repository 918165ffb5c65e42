"""The switches that reproduce the paper authors' released code (Syd-J/Bi-KD and their
Mask2Former fork), each against a transcription of their operations: the loss and the
gradients they give equal ours to float32 precision.

The transcriptions follow their scripts line by line (train_bi_kd.py, train_tri_kd.py,
train_quad_kd.py, train_sal_bi_kd.py, train_sal_tri_kd.py, dataloader.py, loss.py) and share
no code with the suite.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bikd import BiKDMetaArch, IndependentMetaArch, Member, MemberOutput
from bikd.partition import NO_TEACHER, gt_confidence, select_teachers


# ----------------------------------------------------------------------------- members
class FixedLogits(Member):
    """A member whose class logits for the batch are its parameters."""

    def __init__(self, name, logits):
        super().__init__(name, pretrained=False)
        self.z = torch.nn.Parameter(logits.clone())

    num_classes = property(lambda self: self.z.shape[1])

    def forward_train(self, inputs, labels):
        loss = F.cross_entropy(self.z, labels, reduction='none')
        return MemberOutput(loss=loss, logits=self.z, confidence=gt_confidence([self.z],
                                                                               labels)[0])


class FixedMap(Member):
    """A saliency member whose predicted maps for the batch are its parameters."""

    def __init__(self, name, maps):
        super().__init__(name, pretrained=False)
        self.m = torch.nn.Parameter(maps.clone())

    num_classes = property(lambda self: 1)

    def forward_train(self, inputs, gt):
        from saliency_bikd.losses import map_log_probs, saliency_loss
        return MemberOutput(loss=saliency_loss(self.m, gt), logits=map_log_probs(self.m))


def assert_equals_the_authors(model, targets, tensors, authors, rel, rtol, atol):
    """Our loss and its gradients for the members' tensors against ``authors(tensors,
    targets)`` on copies of them."""
    total = model(None, targets, mode='loss').total()
    grads = torch.autograd.grad(total, list(model.parameters()))
    params = [torch.nn.Parameter(t.clone()) for t in tensors]
    ref = authors(params, targets)
    ref_grads = torch.autograd.grad(ref, params)
    assert total.item() == pytest.approx(ref.item(), rel=rel)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- classification
def authors_classification(zs, labels):
    """train_bi_kd.py (K = 2: model 0 teaches iff strictly more confident, ties to model 1)
    and train_tri_kd.py / train_quad_kd.py (K > 2: the unique maximum teaches, a tie for the
    maximum teaches nobody); KL(p_teacher || p_other) summed over the other models, masked,
    averaged over the batch; nothing detached, no temperature."""
    b = len(labels)
    soft = [F.softmax(z, dim=1) for z in zs]
    ce = [F.cross_entropy(z, labels) for z in zs]
    gt = [p[torch.arange(b), labels] for p in soft]
    if len(zs) == 2:
        masks = [(gt[0] > gt[1]).float(), (gt[0] <= gt[1]).float()]
    else:
        stack = torch.stack(gt, dim=1)
        best, index = torch.max(stack, dim=1)
        valid = torch.sum(stack == best.unsqueeze(1), dim=1) == 1
        masks = [(valid & (index == k)).float() for k in range(len(zs))]
    kls = [sum(F.kl_div(soft[j].log(), soft[k], reduction='none').sum(dim=1)
               for j in range(len(zs)) if j != k) for k in range(len(zs))]
    return sum(ce) + sum(m * kl for m, kl in zip(masks, kls)).mean()


@pytest.mark.parametrize('k', [2, 3, 4])
def test_classification_equals_the_authors_scripts(k):
    g = torch.Generator().manual_seed(k)
    n, c = 32, 6
    zs = [torch.randn(n, c, generator=g) * 2 for _ in range(k)]
    labels = torch.randint(0, c, (n, ), generator=g)
    zs[-1][:4] = zs[0][:4]  # exact ties for the best on a few samples
    for j in range(1, k - 1):
        zs[j][:4] = zs[0][:4] - 8 * F.one_hot(labels[:4], c)
    model = BiKDMetaArch([FixedLogits(f'm{i}', z) for i, z in enumerate(zs)],
                         detach_teacher=False, ties='later' if k == 2 else 'skip')
    assert_equals_the_authors(model, labels, zs, authors_classification, 1e-6, 1e-4, 1e-7)
    if k > 2:  # the tied samples taught nobody
        teachers = select_teachers(gt_confidence(zs, labels), ties='skip')
        assert (teachers[:4] == NO_TEACHER).all() and (teachers[4:] >= 0).all()


# ----------------------------------------------------------------------------- saliency
EPS = 2.2204e-16


def authors_kldiv(s_map, gt):
    """loss.py kldiv: both maps normalised to sum 1, sum gt * log(eps + gt / (s + eps))."""
    b = s_map.size(0)
    s_map = s_map / s_map.view(b, -1).sum(1).view(b, 1, 1)
    gt = gt / gt.view(b, -1).sum(1).view(b, 1, 1)
    return torch.sum((gt * torch.log(EPS + gt / (s_map + EPS))).view(b, -1), 1)


def authors_cc(s_map, gt):
    b = s_map.size(0)
    a = (s_map - s_map.view(b, -1).mean(1).view(b, 1, 1)) / s_map.view(b, -1).std(1).view(b, 1, 1)
    g = (gt - gt.view(b, -1).mean(1).view(b, 1, 1)) / gt.view(b, -1).std(1).view(b, 1, 1)
    return (a * g).view(b, -1).sum(1) / torch.sqrt((a * a).view(b, -1).sum(1) *
                                                   (g * g).view(b, -1).sum(1))


def authors_saliency(maps, gt):
    """train_sal_bi_kd.py / train_sal_tri_kd.py: task loss KL - CC per clip; K = 2: model 0
    teaches iff its loss is strictly lower (ties to model 1); K = 3: the unique minimum
    teaches, a tie teaches nobody; the teacher's map KL to every other map; batch mean."""
    losses = [authors_kldiv(m, gt) - authors_cc(m, gt) for m in maps]
    if len(maps) == 2:
        masks = [(losses[0] < losses[1]).float(), (losses[0] >= losses[1]).float()]
    else:
        stack = torch.stack(losses, dim=1)
        low, index = torch.min(stack, dim=1)
        valid = torch.sum(stack == low.unsqueeze(1), dim=1) == 1
        masks = [(valid & (index == k)).float() for k in range(len(maps))]
    kls = [sum(authors_kldiv(maps[j], maps[k]) for j in range(len(maps)) if j != k)
           for k in range(len(maps))]
    return (sum(losses) + sum(m * kl for m, kl in zip(masks, kls))).mean()


@pytest.mark.parametrize('k', [2, 3])
def test_saliency_equals_the_authors_scripts(k):
    g = torch.Generator().manual_seed(10 + k)
    n = 6
    gt = torch.rand(n, 12, 20, generator=g) ** 3
    maps = [torch.rand(n, 12, 20, generator=g) for _ in range(k)]
    model = BiKDMetaArch([FixedMap(f'm{i}', m) for i, m in enumerate(maps)], partition='loss',
                         detach_teacher=False, ties='later' if k == 2 else 'skip')
    assert_equals_the_authors(model, gt, maps, authors_saliency, 1e-5, 1e-3, 1e-6)


# ----------------------------------------------------------------------------- segmentation
def test_the_authors_detached_segmentation_kl_trains_like_the_independent_control():
    """Their Mask2Former fork detaches both models' outputs before the KL: with
    detach_student, the term is computed and logged, and the weights move exactly as the
    Independent control's."""
    g = torch.Generator().manual_seed(3)
    zs = [torch.randn(8, 5, generator=g) for _ in range(2)]
    labels = torch.randint(0, 5, (8, ), generator=g)
    updated = []
    for cls, kw in ((BiKDMetaArch, dict(detach_student=True)), (IndependentMetaArch, {})):
        model = cls([FixedLogits(f'm{i}', z) for i, z in enumerate(zs)], **kw)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(3):
            out = model(None, labels, mode='loss')
            opt.zero_grad()
            out.total().backward()
            opt.step()
        updated.append([m.z.detach().clone() for m in model.members])
        if cls is BiKDMetaArch:
            assert out.distill_loss.item() > 0 and not out.distill_loss.requires_grad
    assert all(torch.equal(a, b) for a, b in zip(*updated))


# ----------------------------------------------------------------------------- ViNet-A frames
def authors_dhf1k_frames(gt_idx, n):
    """dataloader.py DHF1KDataset (reverse=False, len_snippet=64): 0-based frame indices of
    TMFI-Net's clip and ViNet-A's clip for target ``gt_idx`` of a video of ``n`` frames."""
    teacher, student = [], []
    for i in range(64):
        if i < 32:
            f = gt_idx - 32 + i + 2
            teacher.append(0 if f <= 0 else f - 1)
        if i % 2 == 0:
            f = gt_idx - 32 + i + 1
            student.append(0 if f <= 0 else n - 1 if f >= n else f - 1)
    return teacher, student


def authors_hollywood_frames(gt_idx, n):
    """dataloader.py HollywoodDataset (len_snippet=32) over a video's joined shots."""
    teacher = [0 if gt_idx - 32 + i + 1 <= 0 else gt_idx - 32 + i + 1 for i in range(32)]
    student = [0 if gt_idx - 16 + i <= 0 else n - 1 if gt_idx - 16 + i >= n else gt_idx - 16 + i
               for i in range(32)]
    return teacher, student


def index_video(root, name, n, shots=1):
    """A video whose frame k (0-based, over its shots) has every pixel equal to k."""
    from PIL import Image
    k = 0
    for s in range(shots):
        folder = root / (f'{name}_{s + 1}' if shots > 1 else name)
        for sub in ('images', 'maps', 'fixation'):
            (folder / sub).mkdir(parents=True)
        for f in range(n // shots):
            Image.fromarray(np.full((8, 12, 3), k, np.uint8)).save(
                folder / 'images' / f'{f + 1:04d}.png')
            for sub in ('maps', 'fixation'):
                Image.fromarray(np.full((8, 12), 255, np.uint8)).save(
                    folder / sub / f'{f + 1:04d}.png')
            k += 1


@pytest.mark.parametrize('layout, window, clip_len, frames_after', [
    ('dhf1k', 'authors_dhf1k', 33, 30), ('hollywood2', 'authors_hollywood2', 32, 15)])
def test_vinet_a_windows_take_the_authors_frames(tmp_path, layout, window, clip_len,
                                                  frames_after):
    from saliency_bikd import TMFINetMember, ViNetAMember
    from saliency_bikd.data import VideoSaliencyDataset
    split = {'dhf1k': 'val', 'hollywood2': 'testing'}[layout]
    n = 40
    index_video(tmp_path / split, '0001' if layout == 'dhf1k' else 'actioncliptest00001', n,
                shots=1 if layout == 'dhf1k' else 2)
    ds = VideoSaliencyDataset(str(tmp_path), 'val' if layout == 'dhf1k' else 'test',
                              layout=layout, clip_len=clip_len, frames_after=frames_after,
                              frame_size=(8, 12))
    assert len(ds) == n  # hollywood2: the two shots are one video
    tmfi = TMFINetMember(pretrained=False, input_size=(8, 12),
                         arch=dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                                   window_size=[2, 2, 2], decoder_channels=8))
    vinet = ViNetAMember(pretrained=False, input_size=(8, 12), window=window,
                         arch=dict(width=8, layers=[1, 1, 1, 1], decoder_groups=4))
    authors = authors_dhf1k_frames if layout == 'dhf1k' else authors_hollywood_frames
    for target in (0, 5, 20, n - 10, n - 1):
        item = ds[target]
        clip = item['inputs'][None]
        pos = item['data_samples']['target_pos']
        frames = [((m.view(clip, pos)[0, 0, :, 0, 0] * m.std.flatten()[0] + m.mean.flatten()[0])
                   * 255).round().long().tolist() for m in (tmfi, vinet)]
        assert frames == list(authors(target, n)), target
