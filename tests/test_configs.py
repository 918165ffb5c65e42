"""Every shipped config parses and builds; the ImageNet pairs are real timm models (random
weights, as no hub is reachable here) that run a forward pass on their own input size."""
import glob
import os

import pytest
import torch
from mmengine.registry import MODELS, init_default_scope

from bikd.engine import load_config
from conftest import ROOT

IMAGENET = sorted(p for p in glob.glob(os.path.join(ROOT, 'configs/imagenet/*_bikd.yaml'))
                  if not os.path.basename(p).startswith('_'))


def build(path, *overrides):
    cfg = load_config(path, ['model.random_init=true', *overrides])
    init_default_scope(cfg.default_scope)
    return cfg, MODELS.build(dict(cfg.model))


def test_all_table2_pairs_have_configs():
    stems = {os.path.basename(p)[:-len('_bikd.yaml')] for p in IMAGENET}
    assert {'vitb_vitt', 'vitb_vits', 'vits_vitt', 'pitb_swslresnext101', 'coatlitemini_senet154',
            'pitxs_resmlp36', 'coatlitemini_pitxs', 'dinov2_mae', 'dinov2_swslresnext101',
            'coatlitemini_dinov2'} <= stems


@pytest.mark.parametrize('path', IMAGENET, ids=os.path.basename)
def test_imagenet_config_builds_with_paper_settings(path):
    cfg, model = build(path)
    assert type(model).__name__ == 'BiKDMetaArch'
    assert model.partition == 'confidence' and model.temperature == 1.0 and model.detach_teacher
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('Adam', 1e-6, 1e-5)
    assert len(model.members) >= 2 and all(m.num_classes == 1000 for m in model.members)
    model.eval()
    images = torch.randint(0, 256, (1, 3, 224, 224), dtype=torch.uint8)
    with torch.no_grad():
        (out, ) = model(images, mode='predict')
    assert out['preds'].shape == (len(model.members) + 1, 1, 1000)
    # the control differs only in type
    ind_cfg, ind = build(path.replace('_bikd.yaml', '_independent.yaml'))
    assert type(ind).__name__ == 'IndependentMetaArch'
    assert ind.member_names == model.member_names
    assert ind_cfg.optim_wrapper == cfg.optim_wrapper and ind_cfg.train_cfg == cfg.train_cfg


@pytest.mark.parametrize('name', ['resnet_convnext_bikd', 'resnet_convnext_independent', 'pretrain_resnet',
                                  'pretrain_convnext'])
def test_digits_configs_build(name):
    _, model = build(os.path.join(ROOT, f'configs/digits/{name}.yaml'))
    assert all(m.num_classes == 10 for m in model.members)


def test_overrides_reach_list_items():
    cfg = load_config(os.path.join(ROOT, 'configs/digits/resnet_convnext_bikd.yaml'),
                      ['model.members.1.checkpoint=x.pth', 'optim_wrapper.optimizer.lr=0.5'])
    assert cfg.model.members[1].checkpoint == 'x.pth'
    assert cfg.model.members[0].checkpoint == 'checkpoints/digits/resnet.pth'
    assert cfg.optim_wrapper.optimizer.lr == 0.5


def test_yaml_configs_cannot_construct_python_objects(tmp_path):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('model: !!python/object/apply:os.system ["echo owned"]\n')
    with pytest.raises(ValueError, match='cannot parse config'):
        load_config(str(bad))


SALIENCY = ['dhf1k/tmfi_vinetA', 'dhf1k/tmfi_vinetA_vinetS', 'hollywood2/tmfi_vinetA']


@pytest.mark.parametrize('stem', SALIENCY)
def test_saliency_paper_configs_build_with_paper_settings(stem):
    """Tables 5 and 6b: the members at full size (random weights), the paper's optimiser and
    loss partition, clips that carry ViNet-A's frames after the target; the control differs
    only in type."""
    cfg, model = build(os.path.join(ROOT, f'configs/{stem}_bikd.yaml'))
    assert type(model).__name__ == 'BiKDMetaArch'
    assert model.partition == 'loss' and model.temperature == 1.0 and model.detach_teacher
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('Adam', 1e-6, 1e-5)
    assert cfg.train_dataloader.batch_size == 4
    kinds = {m.name: type(m).__name__ for m in model.members}
    assert kinds['tmfinet'] == 'TMFINetMember' and kinds['vinet_a'] == 'ViNetAMember'
    assert ('vinet_s' in kinds) == stem.endswith('vinetS')
    sizes = {m.name: (m.input_size, m.frame_offsets[0], m.frame_offsets[-1]) for m in model.members}
    assert sizes['tmfinet'] == ((224, 384), -31, 0) and sizes['vinet_a'] == ((256, 456), -31, 31)
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        assert loader.dataset.clip_len == 32 and loader.dataset.frames_after == 31
        assert loader.dataset.layout == stem.split('/')[0]
    assert cfg.val_evaluator.type == 'SaliencyEvaluator'
    ind_cfg, ind = build(os.path.join(ROOT, f'configs/{stem}_independent.yaml'))
    assert type(ind).__name__ == 'IndependentMetaArch' and ind.member_names == model.member_names
    assert ind_cfg.optim_wrapper == cfg.optim_wrapper and ind_cfg.train_cfg == cfg.train_cfg


@pytest.mark.parametrize('path', sorted(
    p for p in glob.glob(os.path.join(ROOT, 'configs/*/*.yaml'))
    if '_base_' not in p), ids=lambda p: os.path.relpath(p, ROOT))
def test_evaluation_runs_batched(path):
    cfg = load_config(path, import_modules=False)
    assert cfg.val_dataloader.batch_size > 1, 'evaluation one sample at a time'
