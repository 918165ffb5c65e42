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
                  if not os.path.basename(p).startswith(('_', 'hf_')))
#: the ImageNet configs whose members all build offline (no Hugging Face hub id to read a
#: configuration from; those are built from local folders in test_transformers_members.py)
OFFLINE = [p for p in IMAGENET if 'TransformersClassifierMember' not in open(p).read()]


def build(path, *overrides):
    cfg = load_config(path, ['model.random_init=true', *overrides])
    init_default_scope(cfg.default_scope)
    return cfg, MODELS.build(dict(cfg.model))


#: the paper's models by timm name (REFERENCE.md: Table 1 and the authors' scripts)
VITB, VITS, VITT = ('vit_base_patch16_224.augreg_in1k', 'vit_small_patch16_224.augreg_in1k',
                    'vit_tiny_patch16_224.augreg_in21k_ft_in1k')
COAT, PITXS, PITB = 'coat_lite_mini.in1k', 'pit_xs_224.in1k', 'pit_b_224.in1k'
SWSL, DINOV2 = 'resnext101_32x8d.fb_swsl_ig1b_ft_in1k', 'vit_small_patch14_dinov2.lvd142m'
RESMLP24 = 'resmlp_24_224.fb_distilled_in1k'
MAMBAVISION_T2 = 'nvidia/MambaVision-T2-1K'  # from the hub with its own code, as the authors
#: config stem -> its members' timm names, in order (Tables 2, 3 and 6)
TABLE2 = {
    'vitb_vitt': (VITB, VITT), 'vitb_vits': (VITB, VITS), 'vits_vitt': (VITS, VITT),
    'pitb_swslresnext101': (PITB, SWSL), 'coatlitemini_senet154': (COAT, 'senet154.gluon_in1k'),
    'pitxs_resmlp36': (PITXS, 'resmlp_36_224.fb_in1k'), 'coatlitemini_pitxs': (COAT, PITXS),
    'dinov2_mae': (DINOV2, 'vit_base_patch16_224'), 'dinov2_swslresnext101': (DINOV2, SWSL),
    'coatlitemini_dinov2': (COAT, DINOV2), 'dinov2_mambavisionT2': (DINOV2, MAMBAVISION_T2),
    'coatlitemini_pitxs_resmlp24dist': (COAT, PITXS, RESMLP24),
    'coatlitemini_pitxs_resmlp24dist_dinov2': (COAT, PITXS, RESMLP24, DINOV2),
}


def test_all_table2_pairs_have_configs_with_the_papers_members():
    stems = {os.path.basename(p)[:-len('_bikd.yaml')] for p in IMAGENET}
    assert stems == set(TABLE2)
    for stem, names in TABLE2.items():
        cfg = load_config(os.path.join(ROOT, f'configs/imagenet/{stem}_bikd.yaml'))
        assert tuple(m.get('model_name') or m.get('model') for m in cfg.model.members) == \
            names, stem
        dinov2 = [m for m in cfg.model.members if m.get('model_name') == DINOV2]
        assert all(m.type == 'DinoV2LinearMember' for m in dinov2), stem


def test_imagenet_schedule_is_the_papers():
    cfg = load_config(os.path.join(ROOT, 'configs/imagenet/vitb_vitt_bikd.yaml'))
    assert cfg.train_dataloader.batch_size == 128
    # the authors' timm loader: bilinear random resized crops
    assert cfg.train_dataloader.dataset.transform.interpolation == 'bilinear'
    # KL+DP's own recipe (Roth et al.): SGD, lr 1e-4 x 128 / 256, momentum 0.9, wd 1e-4
    kldp = cfg.method_recipes.kldp.optim_wrapper.optimizer
    assert (kldp.type, kldp.lr, kldp.momentum, kldp.weight_decay) == ('SGD', 5e-5, 0.9, 1e-4)
    assert (cfg.train_cfg.type, cfg.train_cfg.max_epochs, cfg.train_cfg.val_interval) == (
        'EpochBasedTrainLoop', 20, 1)
    assert not cfg.get('param_scheduler')  # constant learning rate, as the authors ran it


def test_every_control_differs_from_its_bikd_config_in_type_alone():
    for path in sorted(glob.glob(os.path.join(ROOT, 'configs/*/*_independent.yaml'))):
        twin = path.replace('_independent.yaml', '_bikd.yaml')
        ours = load_config(path, import_modules=False).to_dict()
        theirs = load_config(twin, import_modules=False).to_dict()
        assert ours['model'].pop('type') == 'IndependentMetaArch'
        assert theirs['model'].pop('type') == 'BiKDMetaArch'
        assert ours == theirs, os.path.relpath(path, ROOT)


@pytest.mark.parametrize('path', OFFLINE, ids=os.path.basename)
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
    assert out['preds'].stacked().shape == (len(model.members) + 1, 1, 1000)
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
    # ViNet-A takes the frames of the authors' loaders (the paper's numbers come from them)
    window = (-32, 30) if stem.startswith('dhf1k') else (-16, 15)
    assert sizes['tmfinet'] == ((224, 384), -31, 0) and sizes['vinet_a'] == ((256, 456), *window)
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        # the clips carry every frame the windows reach, each size resized once from the source
        assert loader.dataset.clip_len - 1 >= -window[0] and \
            loader.dataset.frames_after >= window[1]
        assert loader.dataset.layout == stem.split('/')[0]
        assert sorted(map(tuple, loader.dataset.frame_size)) == [(224, 384), (256, 456)]
    assert tuple(cfg.train_dataloader.dataset.target_size) == (256, 456)
    assert cfg.val_evaluator.type == 'SaliencyEvaluator'
    ind_cfg, ind = build(os.path.join(ROOT, f'configs/{stem}_independent.yaml'))
    assert type(ind).__name__ == 'IndependentMetaArch' and ind.member_names == model.member_names
    assert ind_cfg.optim_wrapper == cfg.optim_wrapper and ind_cfg.train_cfg == cfg.train_cfg


#: experiment configs (configs/tables holds grids of them, tests/test_grid.py reads those)
EXPERIMENTS = sorted(p for p in glob.glob(os.path.join(ROOT, 'configs/*/*.yaml'))
                     if '_base_' not in p and os.sep + 'tables' + os.sep not in p)


@pytest.mark.parametrize('path', EXPERIMENTS, ids=lambda p: os.path.relpath(p, ROOT))
def test_evaluation_runs_batched(path):
    cfg = load_config(path, import_modules=False)
    assert cfg.val_dataloader.batch_size > 1, 'evaluation one sample at a time'


OFFICIAL = 'configs/ade20k/semantic-segmentation/'
MMSEG = 'mmseg::mask2former/mask2former_{}_8xb2-160k_ade20k-512x512.py'


@pytest.mark.parametrize('pair, configs, weights', [
    ('swinT_swinS', (OFFICIAL + 'swin/maskformer2_swin_tiny_bs16_160k.yaml',
                     OFFICIAL + 'swin/maskformer2_swin_small_bs16_160k.yaml'),
     ('model_final_5274a6.pkl', 'model_final_011c6d.pkl')),
    ('r50_swinT', (OFFICIAL + 'maskformer2_R50_bs16_160k.yaml',
                   OFFICIAL + 'swin/maskformer2_swin_tiny_bs16_160k.yaml'),
     ('model_final_500878.pkl', 'model_final_5274a6.pkl')),
    ('mmseg_swinT_swinS', (MMSEG.format('swin-t'), MMSEG.format('swin-s')), ('zoo', 'zoo')),
    ('mmseg_r50_swinT', (MMSEG.format('r50'), MMSEG.format('swin-t')), ('zoo', 'zoo'))])
def test_table4_configs_carry_the_papers_settings(pair, configs, weights):
    """Table 4: the Mask2Former pairs on ADE20K (the official models, and mmseg's zoo
    versions), teacher per image by loss (Eq. 6), AdamW lr 1e-6 wd 1e-5, T = 1; Mask2Former's
    recipe where the paper is silent; the official protocol for the official models."""
    cfg = load_config(os.path.join(ROOT, f'configs/ade20k/{pair}_bikd.yaml'), import_modules=False)
    model = cfg.model
    assert (model.type, model.partition, model.temperature, model.detach_teacher) == (
        'BiKDMetaArch', 'loss', 1.0, True)
    assert tuple(m.config for m in model.members) == configs
    assert tuple(os.path.basename(m.checkpoint) for m in model.members) == weights
    official = not pair.startswith('mmseg')
    assert {m.type for m in model.members} == {
        'Mask2FormerMember' if official else 'MMSegMask2FormerMember'}
    opt = cfg.optim_wrapper
    assert (opt.optimizer.type, opt.optimizer.lr, opt.optimizer.weight_decay) == (
        'AdamW', 1e-6, 1e-5)
    assert opt.clip_grad.max_norm == 0.01 and opt.paramwise_cfg.custom_keys.backbone.lr_mult == 0.1
    assert cfg.train_dataloader.batch_size == 4
    assert (cfg.train_cfg.type, cfg.train_cfg.max_iters) == ('IterBasedTrainLoop', 160000)
    crop = next(t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomCrop')
    assert crop.crop_size == 512
    assert cfg.val_evaluator.num_classes == 150
    # the official protocol: PIL-decoded images at their original size, resized by each
    # member as detectron2's test mapper does; mIoU over the classes in the ground truth
    val = [t.type for t in cfg.val_dataloader.dataset.pipeline]
    assert ('Resize' not in val) == official
    assert cfg.val_evaluator.get('miou_over', 'union') == ('gt' if official else 'union')


def test_the_digits_demo_is_the_papers_method_at_a_short_schedule():
    cfg = load_config(os.path.join(ROOT, 'configs/digits/resnet_convnext_bikd.yaml'))
    assert (cfg.model.type, cfg.model.partition, cfg.model.temperature,
            cfg.model.detach_teacher) == ('BiKDMetaArch', 'confidence', 1.0, True)
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.weight_decay) == ('Adam', 1e-5)  # lr 1e-4 for 200 steps, said there
    assert [m.checkpoint for m in cfg.model.members] == [
        'checkpoints/digits/resnet.pth', 'checkpoints/digits/convnext.pth']


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(ROOT, 'configs/*/pools/*.yaml'))),
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_partner_pools_list_members_that_build(path):
    """A pool (tools/find_partners.py --pool) is a list of member configs, not a run config."""
    import yaml
    from bikd.method.meta_arch import build_member
    with open(path) as f:
        pool = yaml.safe_load(f)
    assert isinstance(pool, list) and pool
    init_default_scope('bikd')
    for spec in pool:
        member = build_member(dict(spec, checkpoint=None, pretrained=False))
        assert member.name == spec['name']
        x = torch.rand(2, 3, *spec['input_size'])
        assert member.predict(x).shape == (2, spec['num_classes'])


@pytest.mark.parametrize('path', sorted(
    p for p in glob.glob(os.path.join(ROOT, 'configs/**/*.yaml'), recursive=True)
    if '/pools/' not in p and '/tables/' not in p), ids=lambda p: os.path.relpath(p, ROOT))
def test_mmengine_reads_every_shipped_config(path):
    """Plain YAML: mmengine's own Config.fromfile reads them (our loader adds key checks)."""
    from mmengine.config import Config
    Config.fromfile(path, import_custom_modules=False)


def test_resize_scales_are_tuples_for_mmcv():
    cfg = load_config(os.path.join(ROOT, 'configs/ade20k_toy/m2f_upernet_bikd.yaml'))
    resize = [t for t in cfg.val_dataloader.dataset.pipeline if t['type'] == 'Resize']
    assert resize and all(isinstance(t['scale'], tuple) for t in resize)
