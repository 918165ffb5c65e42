"""The lean training step (model.lean=true) gives the ordinary step's weights: several steps of
both from the same weights and random state end in the same weights, buffers and logged
values, bit for bit (CPU, float32), for classification, segmentation and saliency members,
K = 2 and 3, with and without detach_teacher, for the baselines that train members, with
gradient clipping, gradient accumulation and bf16 autocast, and under DDP (2 gloo processes).
Evaluation scores the members one at a time with the same numbers as the stacked outputs."""
import copy
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS, init_default_scope

from conftest import ROOT, batch, seg_batch, tiny

# dropout and drop-path: the second forward of a member must replay the first's random numbers
NOISY = dict(model_kwargs=dict(img_size=16, patch_size=8, depth=2, embed_dim=32, num_heads=2,
                               drop_rate=0.3, drop_path_rate=0.3))
# batch norm: its running statistics must be updated once per step, not twice
BN = dict(type='TimmMember', model_name='resnet10t', pretrained=False, num_classes=5,
          input_size=[32, 32])  # at 16 px its last stage is 1x1, where bf16 convolution
# backward on CPU (oneDNN) is not reproducible even between two ordinary runs


def run_steps(model, batches, lean, optim=None, seed=1):
    """Train a copy of ``model`` on ``batches``; its state dict and the logged values."""
    model = copy.deepcopy(model).train()
    model.lean = lean
    wrapper = build_optim_wrapper(model, copy.deepcopy(optim or dict(
        type='BiKDOptimWrapper', optimizer=dict(type='Adam', lr=1e-3))))
    torch.manual_seed(seed)
    logs = [model.train_step(b, wrapper) for b in batches]
    return model.state_dict(), logs


def assert_lean_equals_ordinary(model, batches, optim=None, exact=True, warm_up=False):
    """``warm_up``: one ordinary run first, for members whose backward on CPU differs in the
    last bit between a process's first step and later ones (the ordinary step is then not
    reproducible against itself either)."""
    init_default_scope('bikd')
    start = copy.deepcopy(model.state_dict())
    if warm_up:
        run_steps(model, batches[:1], False, optim)
    ordinary, logs = run_steps(model, batches, False, optim)
    lean, lean_logs = run_steps(model, batches, True, optim)
    assert ordinary.keys() == lean.keys()
    for key, value in ordinary.items():
        if exact:
            assert torch.equal(value, lean[key]), key
        else:
            assert torch.allclose(value.float(), lean[key].float(), rtol=1e-4, atol=1e-6), key
    moved = [k for k, v in ordinary.items() if v.is_floating_point() and
             not torch.equal(v, start[k])]
    assert moved, 'the steps changed no weight: the comparison would prove nothing'
    for a, b in zip(logs, lean_logs):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]) if exact else torch.allclose(a[k], b[k]), k


def cls_batches(n=3):
    return [dict(zip(('inputs', 'data_samples'), batch(seed=s))) for s in range(n)]


def build(type_, members, **kw):
    init_default_scope('bikd')
    torch.manual_seed(0)
    return MODELS.build(dict(type=type_, members=members, **kw))


@pytest.mark.parametrize('k', [2, 3])
@pytest.mark.parametrize('detach_teacher', [True, False])
def test_bikd_classification(k, detach_teacher):
    members = [tiny('vit', **NOISY), {**BN, 'name': 'resnet'}, tiny('vit2', **NOISY)][:k]
    model = build('BiKDMetaArch', members, detach_teacher=detach_teacher)
    assert_lean_equals_ordinary(model, cls_batches())


@pytest.mark.parametrize('type_, kw', [('DMLMetaArch', {}), ('KDMetaArch', dict(teacher='b')),
                                       ('KLDPMetaArch', dict(student='a')),
                                       ('IndependentMetaArch', {})])
def test_baselines(type_, kw):
    model = build(type_, [tiny('a', **NOISY), {**BN, 'name': 'b'}, tiny('c', **NOISY)]
                  [:2 if type_ == 'KLDPMetaArch' else 3], **kw)
    assert_lean_equals_ordinary(model, cls_batches())


def test_clipping_and_gradient_accumulation():
    model = build('BiKDMetaArch', [tiny('a', **NOISY), {**BN, 'name': 'b'}])
    assert_lean_equals_ordinary(model, cls_batches(4), dict(
        type='BiKDOptimWrapper', optimizer=dict(type='AdamW', lr=1e-3), accumulative_counts=2,
        clip_grad=dict(max_norm=0.05)))


def test_bf16_autocast():
    model = build('BiKDMetaArch', [tiny('a', **NOISY), {**BN, 'name': 'b'}])
    assert_lean_equals_ordinary(model, cls_batches(), dict(
        type='BiKDAmpOptimWrapper', dtype='bfloat16', optimizer=dict(type='Adam', lr=1e-3)))


def test_nonfinite_step_is_dropped_before_any_backward():
    model = build('BiKDMetaArch', [tiny('a'), tiny('b')], lean=True).train()
    wrapper = build_optim_wrapper(model, dict(type='BiKDOptimWrapper',
                                              optimizer=dict(type='Adam', lr=1e-3)))
    before = copy.deepcopy(model.state_dict())
    images, samples = batch()
    with torch.no_grad():
        model.members[0].model.head.bias.fill_(float('nan'))
    before = copy.deepcopy(model.state_dict())
    model.train_step(dict(inputs=images, data_samples=samples), wrapper)
    assert wrapper.skipped_steps == 1
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) or torch.isnan(v).any() for k, v in before.items())


# ----------------------------------------------------------------------------- dense tasks
M2F = os.path.join(ROOT, 'configs/ade20k/members/mask2former_r18_tiny.py')
UPERNET = os.path.join(ROOT, 'configs/ade20k/members/upernet_r18_tiny.py')


def seg_batches(n=2):
    return [dict(zip(('inputs', 'data_samples'), seg_batch(2, seed=s))) for s in range(n)]


def test_segmentation_mask2former_and_upernet():
    """mmseg's Mask2Former samples points at random in its criterion; UperNet has dropout
    and batch norm."""
    pytest.importorskip('mmseg')
    import mask2former_bikd  # noqa: F401
    model = build('BiKDMetaArch', [
        dict(type='MMSegMember', name='m2f', config=M2F, pretrained=False),
        dict(type='MMSegMember', name='upernet', config=UPERNET, pretrained=False)],
        partition='loss', data_preprocessor=dict(type='BaseDataPreprocessor'))
    assert_lean_equals_ordinary(model, seg_batches())


def test_segmentation_official_mask2former():
    """Its gradients in a process's first backward differ from later ones' by one ulp here
    (same loss, same random state): compared after a warm-up run."""
    pytest.importorskip('detectron2', reason='detectron2 is not installed (make d2)')
    pytest.importorskip('mmseg')
    import mask2former_bikd  # noqa: F401
    tiny_d2 = os.path.join(ROOT, 'configs/ade20k/members/maskformer2_r18_tiny.yaml')
    model = build('BiKDMetaArch', [
        dict(type='Mask2FormerMember', name='official', config=tiny_d2, pretrained=False),
        dict(type='MMSegMember', name='upernet', config=UPERNET, pretrained=False)],
        partition='loss')
    assert_lean_equals_ordinary(model, seg_batches(), warm_up=True)


def test_saliency_members_with_the_authors_gradient_into_the_teacher():
    import saliency_bikd  # noqa: F401
    arch = dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                window_size=[2, 4, 4], decoder_channels=8)
    tmfi = dict(type='TMFINetMember', pretrained=False, input_size=[32, 64], arch=arch)
    g = torch.Generator().manual_seed(0)
    batches = [dict(inputs=torch.randint(0, 256, (2, 32, 3, 32, 64), dtype=torch.uint8,
                                         generator=g),
                    data_samples=dict(map=torch.rand(2, 32, 64, generator=g) ** 4,
                                      target_pos=torch.full((2, ), 31)))
               for _ in range(2)]
    model = build('BiKDMetaArch', [{**tmfi, 'name': 'a'}, {**tmfi, 'name': 'b'}],
                  partition='loss', detach_teacher=False)
    assert_lean_equals_ordinary(model, batches)


# ----------------------------------------------------------------------------- DDP
def _ddp_worker(rank, port, lean, out):
    import torch.distributed as dist

    from bikd.engine import BiKDDistributedDataParallel, setup_engine
    import classification_bikd  # noqa: F401
    setup_engine()
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    torch.set_num_threads(1)
    model = build('BiKDMetaArch', [tiny('a', **NOISY), {**BN, 'name': 'b'}], lean=lean).train()
    ddp = BiKDDistributedDataParallel(module=model, device_ids=None, broadcast_buffers=False)
    optim = build_optim_wrapper(ddp.module, dict(type='BiKDOptimWrapper',
                                                 optimizer=dict(type='Adam', lr=1e-3)))
    torch.manual_seed(1 + rank)
    for s in range(3):  # each process its own batch
        images, samples = batch(seed=10 * s + rank)
        ddp.train_step(dict(inputs=images, data_samples=samples), optim)
    if rank == 0:
        torch.save(model.state_dict(), out)
    dist.destroy_process_group()


def test_ddp_two_processes(tmp_path):
    from bikd.engine.launch import free_port
    states = []
    for lean in (False, True):
        out = str(tmp_path / f'lean{lean}.pth')
        mp.start_processes(_ddp_worker, nprocs=2, start_method='spawn',
                           args=(free_port(), lean, out))
        states.append(torch.load(out))
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key


def test_train_net_chooses_the_suites_ddp_wrapper(monkeypatch):
    from mmengine.config import Config

    from bikd.engine import launch
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setattr(launch.dist, 'is_initialized', lambda: True)
    monkeypatch.setattr(launch.torch.cuda, 'is_available', lambda: False)
    for lean in (True, False):  # the lean step, and the ordinary one through model.update
        cfg = Config(dict(model=dict(type='BiKDMetaArch', lean=lean)))
        assert launch.setup_distributed(cfg) == 'pytorch'
        assert cfg.model_wrapper_cfg['type'] == 'bikd.BiKDDistributedDataParallel'
    # a config that names its wrapper keeps it
    cfg = Config(dict(model=dict(type='BiKDMetaArch'),
                      model_wrapper_cfg=dict(type='MMDistributedDataParallel')))
    launch.setup_distributed(cfg)
    assert cfg.model_wrapper_cfg['type'] == 'MMDistributedDataParallel'


# ----------------------------------------------------------------------------- evaluation
def stacked_metrics(model, evaluator, batches):
    """The metrics as before: all K + 1 predictions of a batch stacked at once."""
    evaluator.results.clear()
    for data in batches:
        with torch.no_grad():
            data = model.data_preprocessor(data, False)
            preds = model.predict(data['inputs'], data['data_samples'])[0]['preds'].stacked()
        evaluator.model_names = model.member_names + ['ensemble']
        evaluator.results.extend(evaluator.sample_stats(preds, data))
    return evaluator.compute_metrics(evaluator.results)


def memberwise_metrics(model, evaluator, batches):
    evaluator.results.clear()
    for data in batches:
        with torch.no_grad():
            outputs = model.val_step(data)
            evaluator.process(data, outputs)
    return evaluator.compute_metrics(evaluator.results)


def test_evaluation_member_by_member_gives_the_stacked_numbers():
    from classification_bikd.evaluator import ClassificationEvaluator
    model = build('BiKDMetaArch', [tiny('a'), {**BN, 'name': 'b'}, tiny('c')]).eval()
    evaluator = ClassificationEvaluator(topk=(1, 2))
    ref = stacked_metrics(model, evaluator, cls_batches(2))
    assert memberwise_metrics(model, evaluator, cls_batches(2)) == ref
    assert set(ref) == {f'{m}/top{k}' for m in ('a', 'b', 'c', 'ensemble') for k in (1, 2)}
    stacked = model.predict(*batch())[0]['preds'].stacked()
    assert torch.equal(stacked[3], stacked[:3].mean(0))


def test_segmentation_evaluation_member_by_member():
    pytest.importorskip('mmseg')
    import mask2former_bikd  # noqa: F401
    from mask2former_bikd.evaluator import SegmentationEvaluator
    model = build('BiKDMetaArch', [
        dict(type='MMSegMember', name='m2f', config=M2F, pretrained=False),
        dict(type='MMSegMember', name='upernet', config=UPERNET, pretrained=False)],
        partition='loss', data_preprocessor=dict(type='BaseDataPreprocessor')).eval()
    evaluator = SegmentationEvaluator(num_classes=150)
    ref = stacked_metrics(model, evaluator, seg_batches())
    got = memberwise_metrics(model, evaluator, seg_batches())
    assert got.keys() == ref.keys()
    np.testing.assert_array_equal(np.array(list(got.values())), np.array(list(ref.values())))


def test_saliency_evaluation_member_by_member():
    import saliency_bikd  # noqa: F401
    from saliency_bikd.evaluator import SaliencyEvaluator
    arch = dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                window_size=[2, 4, 4], decoder_channels=8)
    tmfi = dict(type='TMFINetMember', pretrained=False, input_size=[32, 64], arch=arch)
    model = build('BiKDMetaArch', [{**tmfi, 'name': 'a'}, {**tmfi, 'name': 'b'}],
                  partition='loss').eval()
    g = torch.Generator().manual_seed(0)
    fix = torch.rand(2, 32, 64, generator=g) > 0.97
    batches = [dict(inputs=torch.randint(0, 256, (2, 32, 3, 32, 64), dtype=torch.uint8,
                                         generator=g),
                    data_samples=dict(map=torch.rand(2, 32, 64, generator=g), fixation=fix,
                                      other_fixation=fix.flip(0), index=torch.arange(2),
                                      target_pos=torch.full((2, ), 31)))]
    evaluator = SaliencyEvaluator(sauc_splits=5)
    ref = stacked_metrics(model, evaluator, batches)
    got = memberwise_metrics(model, evaluator, batches)
    np.testing.assert_array_equal(np.array(list(got.values())), np.array(list(ref.values())))


def test_a_method_that_overrides_loss_is_refused_in_lean_mode():
    from bikd import BiKDMetaArch

    class OldStyle(BiKDMetaArch):
        def loss(self, inputs, data_samples):
            return super().loss(inputs, data_samples)

    init_default_scope('bikd')
    model = OldStyle([tiny('a'), tiny('b')], lean=True)
    wrapper = build_optim_wrapper(model, dict(type='BiKDOptimWrapper',
                                              optimizer=dict(type='Adam', lr=1e-3)))
    images, samples = batch()
    with pytest.raises(TypeError, match='OldStyle overrides loss.*loss_from_outputs'):
        model.train_step(dict(inputs=images, data_samples=samples), wrapper)
