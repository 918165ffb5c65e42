"""KL+DP, KD and DML against independent re-derivations of their papers' formulas, and frozen
members that stay bit-identical through training."""
import pytest
import torch
import torch.nn.functional as F

from bikd import DMLMetaArch, KDMetaArch, KLDPMetaArch
from bikd.members.loading import take_weights
from bikd.registry import META_ARCH
from conftest import batch, tiny


def kl64(p_logits, q_logits, t):
    """KL(softmax(p / t) || softmax(q / t)) per sample, in float64."""
    p = (p_logits.double() / t).log_softmax(1)
    q = (q_logits.double() / t).log_softmax(1)
    return (p.exp() * (p - q)).sum(1)


def perturb(member, seed, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in member.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize('unsupervised', [False, True])
def test_kldp_routes_strictly_and_takes_pure_kl(unsupervised):
    torch.manual_seed(0)
    model = KLDPMetaArch([tiny('a'), tiny('b')], student='a', temperature=2.0,
                         unsupervised=unsupervised)
    perturb(model.members[0], 1)  # the student has moved away from its initial copy
    perturb(model.members[1], 2, 0.005)  # a teacher close to it: both routes occur
    images, samples = batch(n=16)
    losses = model(images, samples, mode='loss')
    assert losses.task_losses == {}  # pure KL, no task loss
    assert set(losses.teacher_share) == {'b', 'a@initial'}
    with torch.no_grad():
        zs, zt, zi = (m.logits(images) for m in (model.members[0], model.members[1],
                                                 model.initial_student))
    y = samples['label']
    if unsupervised:
        score_t, score_i = zt.softmax(1).amax(1), zi.softmax(1).amax(1)
    else:
        score_t, score_i = zt.softmax(1)[torch.arange(16), y], zi.softmax(1)[torch.arange(16), y]
    routed = [bool(score_t[i] > score_i[i]) for i in range(16)]
    assert 0 < sum(routed) < 16  # both routes occur in this batch
    ref = sum(kl64(zt[i:i + 1] if r else zi[i:i + 1], zs[i:i + 1], 2.0).item()
              for i, r in enumerate(routed))
    assert losses.distill_loss.item() == pytest.approx(4 * ref / 16, rel=1e-4)
    assert losses.teacher_share['b'].item() == pytest.approx(sum(routed) / 16)
    # a teacher exactly as good as the initial student never wins (strict comparison)
    model.members[1].load_state_dict(model.initial_student.state_dict())
    assert model(images, samples, mode='loss').teacher_share['b'].item() == 0


def test_kldp_and_kd_frozen_members_stay_bit_identical():
    torch.manual_seed(0)
    resnet = dict(type='TimmMember', model_name='resnet10t', pretrained=False, num_classes=5,
                  input_size=[16, 16])
    images, samples = batch(n=8)
    for model, frozen in (
            (KLDPMetaArch([tiny('a'), {**resnet, 'name': 'b'}], student='a'), ('b', 'initial')),
            (KDMetaArch([{**resnet, 'name': 't'}, tiny('s')], teacher='t'), ('t', ))):
        modules = {m.name: m for m in model.members}
        modules['initial'] = getattr(model, 'initial_student', None)
        before = {k: {n: v.clone() for n, v in modules[k].state_dict().items()} for k in frozen}
        student = next(m for m in model.members if m.name not in frozen)
        start = {n: v.clone() for n, v in student.state_dict().items()}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
        model.train()
        for _ in range(3):
            losses = model(images, samples, mode='loss')
            opt.zero_grad()
            losses.total().backward()
            opt.step()
        for k in frozen:  # weights and BatchNorm statistics alike
            assert not modules[k].training
            assert all(torch.equal(v, before[k][n]) for n, v in modules[k].state_dict().items()), k
        assert any(not torch.equal(v, start[n]) for n, v in student.state_dict().items())


def test_kd_is_task_loss_plus_t2_kl_from_the_frozen_teacher():
    torch.manual_seed(0)
    model = KDMetaArch([tiny('t'), tiny('s1'), tiny('s2')], teacher='t', temperature=3.0)
    images, samples = batch(n=8)
    losses = model(images, samples, mode='loss')
    assert set(losses.task_losses) == {'s1', 's2'}  # the frozen teacher has none
    z = {m.name: m.logits(images) for m in model.members}
    for s in ('s1', 's2'):
        assert losses.task_losses[s].item() == pytest.approx(
            F.cross_entropy(z[s], samples['label']).item(), rel=1e-5)
    ref = sum(kl64(z['t'], z[s], 3.0).sum().item() for s in ('s1', 's2'))
    assert losses.distill_loss.item() == pytest.approx(9 * ref / 8, rel=1e-4)
    with pytest.raises(ValueError, match="teacher 'x' is not one of the members"):
        KDMetaArch([tiny('t'), tiny('s')], teacher='x')


def test_dml_every_member_learns_from_every_other():
    torch.manual_seed(0)
    model = DMLMetaArch([tiny('a'), tiny('b'), tiny('c')], temperature=2.0)
    images, samples = batch(n=8)
    losses = model(images, samples, mode='loss')
    z = [m.logits(images) for m in model.members]
    ref = sum(kl64(z[j], z[i], 2.0).sum().item() for i in range(3) for j in range(3) if i != j)
    assert losses.distill_loss.item() == pytest.approx(4 * ref / 8 / 2, rel=1e-4)
    # p_j is a target: member i's KL terms give gradient to member i only
    model.zero_grad()
    losses.distill_loss.backward()
    grads = [m.model.head.weight.grad.clone() for m in model.members]
    zd = [m.logits(images) for m in model.members]
    for i in range(3):
        own = sum(F.kl_div((zd[i] / 2).log_softmax(1), (zd[j].detach() / 2).softmax(1),
                           reduction='sum') for j in range(3) if j != i) * 4 / 8 / 2
        g, = torch.autograd.grad(own, model.members[i].model.head.weight)
        assert torch.allclose(g, grads[i], atol=1e-6)


def test_dense_baselines_use_the_loss_partition_and_the_maps():
    """Saliency members: KL+DP routes by the per-clip task loss (strictly lower teaches) and
    distils the maps as distributions over pixels; KD and DML take the same distillation
    target."""
    import saliency_bikd  # noqa: F401  (registers the members)
    from saliency_bikd.losses import saliency_loss

    arch = dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                window_size=[2, 4, 4], decoder_channels=8)
    tmfi = dict(type='TMFINetMember', pretrained=False, input_size=[32, 64], arch=arch)
    torch.manual_seed(0)
    clips = torch.randint(0, 256, (6, 32, 3, 32, 64), dtype=torch.uint8)
    gt = torch.rand(6, 32, 64) ** 4
    samples = dict(map=gt, target_pos=torch.full((6, ), 31))
    model = KLDPMetaArch([{**tmfi, 'name': 'a'}, {**tmfi, 'name': 'b'}], student='a',
                         partition='loss')
    perturb(model.members[0], 1, 0.05)
    perturb(model.members[1], 2, 0.05)
    losses = model(clips, samples, mode='loss')
    with torch.no_grad():
        maps = {k: m.maps(clips, (32, 64), 31) for k, m in (
            ('s', model.members[0]), ('t', model.members[1]), ('i', model.initial_student))}
    lt, li = saliency_loss(maps['t'], gt), saliency_loss(maps['i'], gt)
    routed = lt < li
    assert 0 < routed.sum() < 6  # both routes occur
    ref = 0.0
    for n in range(6):
        p = maps['t' if routed[n] else 'i'][n].flatten().double()
        q = maps['s'][n].flatten().double()
        p, q = p / p.sum(), q / q.sum()
        ref += (p * ((p + 2.2204e-16).log() - (q + 2.2204e-16).log())).sum().item()
    assert losses.teacher_share['b'].item() == pytest.approx(routed.float().mean().item())
    assert losses.distill_loss.item() == pytest.approx(ref / 6, rel=1e-3, abs=1e-6)
    for cls, kw in ((KDMetaArch, dict(teacher='b')), (DMLMetaArch, {})):
        out = cls([{**tmfi, 'name': 'a'}, {**tmfi, 'name': 'b'}], **kw)(clips, samples,
                                                                         mode='loss')
        assert torch.isfinite(out.distill_loss) and out.distill_loss > 0


def test_each_method_declares_the_runs_it_needs():
    """run_experiment and the benchmark read these declarations: who learns in each run."""
    from bikd import BiKDMetaArch, IndependentMetaArch, MethodNotApplicable
    model = dict(type='BiKDMetaArch', members=[tiny('a'), tiny('b')], partition='confidence',
                 temperature=2.0, detach_teacher=False, random_init=True)
    (bikd, ) = BiKDMetaArch.experiment_runs(model)
    assert (bikd.name, bikd.trains, bikd.model) == ('bikd', ('a', 'b'), model)
    (control, ) = IndependentMetaArch.experiment_runs(model)
    assert control.model == dict(model, type='IndependentMetaArch')
    assert BiKDMetaArch.control == 'independent' and IndependentMetaArch.control == ''
    kldp = KLDPMetaArch.experiment_runs(model)
    assert [(r.name, r.trains, r.frozen_forwards, r.model['student']) for r in kldp] == [
        ('kldp_a', ('a', ), ('b', 'a'), 'a'), ('kldp_b', ('b', ), ('a', 'b'), 'b')]
    # arguments KL+DP does not take (detach_teacher) are left out of its runs
    assert 'detach_teacher' not in kldp[0].model and kldp[0].model['temperature'] == 2.0
    kd = KDMetaArch.experiment_runs(dict(model, members=[tiny('a'), tiny('b'), tiny('c')]))
    assert [(r.name, r.trains) for r in kd] == [
        ('kd_from_a', ('b', 'c')), ('kd_from_b', ('a', 'c')), ('kd_from_c', ('a', 'b'))]
    with pytest.raises(MethodNotApplicable, match='two members'):
        KLDPMetaArch.experiment_runs(dict(model, members=[tiny('a'), tiny('b'), tiny('c')]))
    (dml, ) = DMLMetaArch.experiment_runs(model)
    assert set(dml.model) == {'type', 'members', 'temperature', 'random_init'}
    for run in kldp + kd + [dml, bikd]:  # each run's model builds
        META_ARCH.build(run.model)


def test_kldp_initial_copy_starts_from_the_weights_the_student_takes(tmp_path):
    from mmengine.registry import init_default_scope

    from bikd.method.meta_arch import build_member
    init_default_scope('bikd')
    build_member(tiny('a')).export(str(tmp_path), 'a')
    model = KLDPMetaArch([tiny('a', checkpoint=str(tmp_path / 'a.pth')), tiny('b')], student='a')
    take_weights(model)
    released = torch.load(tmp_path / 'a.pth')
    for k, v in released.items():
        assert torch.equal(model.members[0].model.state_dict()[k], v), k
        assert torch.equal(model.initial_student.model.state_dict()[k], v), k
    assert model.initial_student.weights_from == str(tmp_path / 'a.pth')
