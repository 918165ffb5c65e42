"""Mixed precision (bf16 autocast through the BiKDAmpOptimWrapper switch) and channels-last memory
format on the three tasks' members: the switches engage, change no result beyond rounding, and a
training step under them updates every member from finite losses."""
import copy
import os

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS, init_default_scope

import classification_bikd  # noqa: F401  (registers TimmMember)
import saliency_bikd  # noqa: F401  (registers the saliency members)
from bikd.engine import BiKDAmpOptimWrapper
from bikd.step import TASK_LOSS, log_key
from conftest import ROOT

mmseg = pytest.importorskip('mmseg')
import mask2former_bikd  # noqa: E402,F401  (registers MMSegMember)
from conftest import seg_batch  # noqa: E402


def classification():
    members = [dict(type='TimmMember', name=n, model_name=n, pretrained=False, num_classes=5,
                    input_size=[32, 32]) for n in ('resnet10t', 'convnext_atto')]
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)
    return dict(members=members, partition='confidence'), \
        dict(inputs=images, data_samples=dict(label=torch.tensor([0, 1, 2, 3])))


def segmentation():
    members = [dict(type='MMSegMember', name='m2f', pretrained=False, partition_loss='pixel_ce',
                    config=os.path.join(ROOT, 'configs/ade20k/members/mask2former_r18_tiny.py')),
               dict(type='MMSegMember', name='upernet', pretrained=False, partition_loss='pixel_ce',
                    config=os.path.join(ROOT, 'configs/ade20k/members/upernet_r18_tiny.py'))]
    inputs, samples = seg_batch(2, size=64)
    return dict(members=members, partition='loss'), dict(inputs=inputs, data_samples=samples)


def saliency():
    members = [dict(type='TMFINetMember', name='tmfinet', input_size=(32, 64),
                    arch=dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                              drop_path=0.0, window_size=[4, 4, 4], decoder_channels=16)),
               dict(type='ViNetAMember', name='vinet_a', input_size=(32, 64),
                    arch=dict(width=8, layers=[1, 1, 1, 1], decoder_groups=4))]
    g = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (2, 63, 3, 32, 64), dtype=torch.uint8, generator=g)
    maps = torch.rand(2, 32, 64, generator=g)
    return dict(members=members, partition='loss'), \
        dict(inputs=clips, data_samples=dict(map=maps, target_pos=torch.tensor([31, 31])))


TASKS = dict(classification=classification, segmentation=segmentation, saliency=saliency)


def build(model_cfg, **kw):
    init_default_scope('bikd')
    torch.manual_seed(0)
    return MODELS.build(dict(type='BiKDMetaArch', random_init=True, **model_cfg, **kw))


def losses(model, data):
    model.train()
    torch.manual_seed(1)  # Mask2Former's criterion samples points at random
    with torch.no_grad():
        out = model(**model.data_preprocessor(copy.deepcopy(data), True), mode='loss')
    return out.log_vars()


def convs(model):
    return [m for m in model.modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)) and m.weight.dim() in (4, 5)]


@pytest.mark.parametrize('task', sorted(TASKS))
def test_channels_last_changes_layout_not_results(task):
    model_cfg, data = TASKS[task]()
    plain = build(model_cfg)
    fast = build(model_cfg, channels_last=True)
    fast.load_state_dict(plain.state_dict())
    layouts = {2: torch.channels_last, 3: torch.channels_last_3d}
    weights = [m.weight for m in convs(fast) if m.weight.shape[1] > 1]
    assert weights, 'the members have convolutions'
    for w in weights:
        assert w.is_contiguous(memory_format=layouts[w.dim() - 2]), tuple(w.shape)
    assert not all(m.weight.is_contiguous(memory_format=layouts[m.weight.dim() - 2])
                   for m in convs(plain) if m.weight.shape[1] > 1)
    ours, ref = losses(fast, data), losses(plain, data)
    assert ours.keys() == ref.keys()
    for key in ref:
        assert torch.allclose(ours[key], ref[key], rtol=1e-4, atol=1e-5), key


@pytest.mark.parametrize('task', sorted(TASKS))
def test_bf16_autocast_step_updates_every_member_from_finite_losses(task):
    model_cfg, data = TASKS[task]()
    model = build(model_cfg, channels_last=True)
    ref = losses(copy.deepcopy(model), data)
    wrapper = build_optim_wrapper(model, dict(type='BiKDAmpOptimWrapper', dtype='bf16',
                                              optimizer=dict(type='AdamW', lr=1e-3)))
    assert isinstance(wrapper, BiKDAmpOptimWrapper) and wrapper.cast_dtype == torch.bfloat16
    seen = []
    hook = convs(model)[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    log = model.train_step(copy.deepcopy(data), wrapper)
    hook.remove()
    assert seen == [torch.bfloat16]  # autocast ran the member in bf16
    assert log.keys() == ref.keys()
    for key, value in log.items():
        assert torch.isfinite(value).all(), key
    for name in model.member_names:  # task losses: bf16 rounding
        key = log_key(TASK_LOSS, name)
        assert log[key].item() == pytest.approx(ref[key].item(), rel=0.05, abs=0.02), key
    after = model.state_dict()
    for i, name in enumerate(model.member_names):
        changed = [k for k, v in after.items() if k.startswith(f'members.{i}.')
                   and v.is_floating_point() and not torch.equal(v, before[k])]
        assert changed, f'{name} was not updated'


def test_fp16_on_cpu_is_refused_with_the_fix():
    init_default_scope('bikd')
    if torch.cuda.is_available():
        pytest.skip('fp16 is valid on a GPU')
    with pytest.raises(ValueError, match='bfloat16 only.*optim_wrapper.dtype=bfloat16'):
        build_optim_wrapper(torch.nn.Linear(2, 2), dict(
            type='BiKDAmpOptimWrapper', dtype='float16', optimizer=dict(type='SGD', lr=0.1)))
