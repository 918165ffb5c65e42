"""Hugging Face transformers members, on tiny random models written with save_pretrained: they
load as members, their per-sample losses are the models' own losses, their predictions the
processors' post-processing, their exports load back with from_pretrained and give the same
outputs, and they train beside timm and official Mask2Former members (lean mode included)."""
import copy
import json
import os

import pytest
import torch

transformers = pytest.importorskip('transformers')

from bikd.errors import UserError  # noqa: E402
from bikd.members.loading import take_weights  # noqa: E402
from conftest import ROOT, batch, seg_batch, tiny  # noqa: E402

NUM_CLASSES = 6


def tiny_vit(folder, num_labels=5, image_size=16):
    """A 2-layer ViT with its image processor, as save_pretrained writes them."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor
    torch.manual_seed(0)
    config = ViTConfig(image_size=image_size, patch_size=8, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, num_labels=num_labels)
    model = ViTForImageClassification(config)
    model.save_pretrained(folder)
    ViTImageProcessor(size={'height': image_size, 'width': image_size}, image_mean=[0.4] * 3,
                      image_std=[0.3] * 3, resample=3).save_pretrained(folder)
    return model


def tiny_segformer(folder):
    from transformers import (SegformerConfig, SegformerForSemanticSegmentation,
                              SegformerImageProcessor)
    torch.manual_seed(0)
    model = SegformerForSemanticSegmentation(SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
        num_attention_heads=[1, 2], decoder_hidden_size=32, num_labels=NUM_CLASSES,
        patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2]))
    with torch.no_grad():  # a decode head that is not zero at the start
        for p in model.decode_head.parameters():
            p.normal_(0, 0.2)
    model.save_pretrained(folder)
    SegformerImageProcessor(size={'height': 64, 'width': 64}).save_pretrained(folder)
    return model


def tiny_upernet(folder):
    """UperNet on a tiny ConvNeXt, with its auxiliary head (whose loss counts 0.4)."""
    from transformers import (ConvNextConfig, SegformerImageProcessor, UperNetConfig,
                              UperNetForSemanticSegmentation)
    torch.manual_seed(0)
    backbone = ConvNextConfig(num_channels=3, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                              out_features=['stage1', 'stage2', 'stage3', 'stage4'])
    model = UperNetForSemanticSegmentation(UperNetConfig(
        backbone_config=backbone, hidden_size=16, auxiliary_channels=8, num_labels=NUM_CLASSES,
        pool_scales=[1, 2]))
    model.save_pretrained(folder)
    SegformerImageProcessor(size={'height': 64, 'width': 64}).save_pretrained(folder)
    return model


def tiny_mask2former(folder):
    from transformers import (Mask2FormerConfig, Mask2FormerForUniversalSegmentation,
                              Mask2FormerImageProcessor, SwinConfig)
    torch.manual_seed(0)
    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                      num_heads=[1, 1, 1, 1], window_size=4,
                      out_features=['stage1', 'stage2', 'stage3', 'stage4'])
    model = Mask2FormerForUniversalSegmentation(Mask2FormerConfig(
        backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32,
        encoder_feedforward_dim=64, encoder_layers=1, decoder_layers=3, num_attention_heads=2,
        dim_feedforward=64, num_queries=8, num_labels=NUM_CLASSES, train_num_points=256))
    model.save_pretrained(folder)
    Mask2FormerImageProcessor(size={'shortest_edge': 64, 'longest_edge': 128}).save_pretrained(
        folder)
    return model


SEGMENTERS = {'segformer': tiny_segformer, 'upernet': tiny_upernet,
              'mask2former': tiny_mask2former}


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp('hf')
    out = {'vit': str(root / 'vit')}
    tiny_vit(out['vit'])
    for name, make in SEGMENTERS.items():
        out[name] = str(root / name)
        make(out[name])
    return out


def hf_classifier(folder, name='hf', **kw):
    return dict(type='TransformersClassifierMember', model=folder, name=name, **kw)


def built(cfg):
    from bikd.method.meta_arch import build_member
    member = build_member(cfg)
    member.take_weights()
    return member


# ----------------------------------------------------------------------------- classification
def test_classifier_takes_its_processors_preprocessing_and_its_models_loss(folders):
    import classification_bikd  # noqa: F401
    member = built(hf_classifier(folders['vit']))
    assert member.input_size == (16, 16) and member.interpolation == 'bicubic'
    assert torch.allclose(member.mean.flatten(), torch.tensor([0.4] * 3))
    assert member.num_classes == 5 and member.weights_from == folders['vit']
    images, samples = batch(n=4)
    out = member.forward_train(images, samples)
    x = member.normalize(images)
    for i in range(4):  # the model's own loss on each sample
        own = member.model(pixel_values=x[i:i + 1], labels=samples['label'][i:i + 1]).loss
        assert out.loss[i].item() == pytest.approx(own.item(), rel=1e-5)
    probs = member.model(pixel_values=x).logits.softmax(1)
    assert torch.allclose(out.confidence, probs.gather(1, samples['label'][:, None])[:, 0])


def test_classifier_export_loads_back_with_from_pretrained(folders, tmp_path):
    import classification_bikd  # noqa: F401
    from transformers import AutoImageProcessor, AutoModelForImageClassification
    member = built(hf_classifier(folders['vit']))
    with torch.no_grad():
        member.model.classifier.bias.add_(1.0)  # trained weights, not the release's
    info = member.export(str(tmp_path), 'hf')
    assert json.loads((tmp_path / 'hf.json').read_text())['checkpoint'] == 'hf'
    back, loading = AutoModelForImageClassification.from_pretrained(
        str(tmp_path / 'hf'), output_loading_info=True)
    assert not any(loading[k] for k in ('missing_keys', 'unexpected_keys', 'mismatched_keys'))
    assert set(os.listdir(tmp_path / 'hf')) >= {'config.json', 'model.safetensors',
                                               'preprocessor_config.json'}
    processor = AutoImageProcessor.from_pretrained(str(tmp_path / 'hf'))
    assert list(processor.image_mean) == pytest.approx([0.4] * 3)
    images, _ = batch(n=3)
    x = member.normalize(images)
    with torch.no_grad():
        assert torch.equal(back(pixel_values=x).logits, member.logits(images))
    # and the member's checkpoint argument reads the export back
    again = built(hf_classifier(folders['vit'], checkpoint=str(tmp_path / info['checkpoint'])))
    assert torch.equal(again.model.classifier.bias, member.model.classifier.bias)


def test_classifier_head_for_another_label_space_and_strict_checkpoints(folders, tmp_path):
    import classification_bikd  # noqa: F401
    member = built(hf_classifier(folders['vit'], num_classes=10))
    assert member.num_classes == 10 and 'head re-initialised for 10 classes' in \
        member.weights_from
    released = transformers.AutoModelForImageClassification.from_pretrained(folders['vit'])
    assert torch.equal(member.model.vit.embeddings.patch_embeddings.projection.weight,
                       released.vit.embeddings.patch_embeddings.projection.weight)
    # a checkpoint of another label space does not fit, and says so
    with pytest.raises(UserError, match=r"does not fit the model for member 'hf'"):
        built(hf_classifier(folders['vit'], num_classes=10, checkpoint=folders['vit']))


def test_a_hub_id_that_cannot_be_had_says_to_pass_a_folder(monkeypatch):
    import classification_bikd  # noqa: F401
    from bikd.method.meta_arch import build_member
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    # the hub library reads the variable once, at import: without its constant set too, the
    # test waited for the network's time-outs (23 s)
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(FileNotFoundError, match='pass the path of a folder written by '
                                                'save_pretrained'):
        build_member(hf_classifier('nosuch-org/nosuch-model-xyz'))


REMOTE_CONFIG = '''
from transformers import PretrainedConfig


class TinyConfig(PretrainedConfig):
    model_type = 'bikd_tiny'

    def __init__(self, width=8, **kwargs):
        self.width = width
        super().__init__(**kwargs)
'''
REMOTE_MODEL = '''
import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from .configuration_tiny import TinyConfig


class TinyClassifier(PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.conv = torch.nn.Conv2d(3, config.width, 3, padding=1)
        self.head = torch.nn.Linear(config.width, config.num_labels)
        self.post_init()

    def forward(self, pixel_values, labels=None, **kwargs):
        logits = self.head(self.conv(pixel_values).mean((2, 3)))
        return ImageClassifierOutput(logits=logits)
'''


def remote_code_model(folder):
    """A model that brings its own code (a folder with its modeling file and auto_map)."""
    os.makedirs(folder)
    with open(os.path.join(folder, 'configuration_tiny.py'), 'w') as f:
        f.write(REMOTE_CONFIG)
    with open(os.path.join(folder, 'modeling_tiny.py'), 'w') as f:
        f.write(REMOTE_MODEL)
    config = dict(model_type='bikd_tiny', width=8, num_labels=5,
                  id2label={str(i): str(i) for i in range(5)},
                  auto_map={'AutoConfig': 'configuration_tiny.TinyConfig',
                            'AutoModelForImageClassification': 'modeling_tiny.TinyClassifier'})
    with open(os.path.join(folder, 'config.json'), 'w') as f:
        json.dump(config, f)
    transformers.ViTImageProcessor(size={'height': 16, 'width': 16}).save_pretrained(folder)


def test_remote_code_runs_only_when_trusted(tmp_path):
    import classification_bikd  # noqa: F401
    from bikd.method.meta_arch import build_member
    folder = str(tmp_path / 'remote')
    remote_code_model(folder)
    with pytest.raises(ValueError, match='runs its own code .*trust_remote_code: true'):
        build_member(hf_classifier(folder, pretrained=False))
    member = built(hf_classifier(folder, pretrained=False, trust_remote_code=True))
    images, samples = batch(n=2)
    assert member.forward_train(images, samples).loss.shape == (2, )
    member.export(str(tmp_path / 'out'), 'remote')
    back = transformers.AutoModelForImageClassification.from_pretrained(
        str(tmp_path / 'out' / 'remote'), trust_remote_code=True)
    with torch.no_grad():
        assert torch.equal(back(pixel_values=member.normalize(images)).logits,
                           member.logits(images))


# ----------------------------------------------------------------------------- segmentation
def seg_member(folders, kind, **kw):
    import mask2former_bikd  # noqa: F401
    return built(dict(type='TransformersSegmentationMember', model=folders[kind], name=kind,
                      **kw))


@pytest.mark.parametrize('kind', sorted(SEGMENTERS))
def test_segmenter_per_image_loss_is_the_models_own_loss_on_that_image(folders, kind):
    member = seg_member(folders, kind).eval()  # no dropout: the same forward twice
    inputs, samples = seg_batch(2, size=64)
    x, _ = member.pixel_values(inputs, samples, training=True)
    gt = member.labels(samples, x.shape[-2:])
    torch.manual_seed(3)  # Mask2Former samples points at random in its loss
    out = member.forward_train(inputs, samples)
    torch.manual_seed(3)
    for i in range(2):
        if member.kind == 'semantic':
            own = member.model(pixel_values=x[i:i + 1], labels=gt[i:i + 1]).loss
        else:
            labels = torch.unique(gt[i])
            own = member.model(pixel_values=x[i:i + 1], class_labels=[labels],
                               mask_labels=[(gt[i][None] == labels[:, None, None]).float()]).loss
        assert out.loss[i].item() == pytest.approx(own.item(), rel=1e-5), i
    # distilled at a quarter of the crop, a distribution over the classes
    assert out.logits.shape == (2, NUM_CLASSES, 16, 16)
    assert torch.allclose(out.logits.exp().sum(1), torch.ones(2, 16, 16), atol=1e-3) or \
        torch.allclose(out.logits.softmax(1).sum(1), torch.ones(2, 16, 16), atol=1e-3)


@pytest.mark.parametrize('kind', sorted(SEGMENTERS))
def test_segmenter_prediction_is_the_processors_post_processing(folders, kind):
    member = seg_member(folders, kind).eval()
    inputs, samples = seg_batch(2, size=48)  # resized by the processor to 64 in evaluation
    for s in samples:
        s.set_metainfo(dict(ori_shape=(48, 48)))
    with torch.no_grad():
        probs = member.predict(inputs, samples)
        x, _ = member.pixel_values(inputs, samples, training=False)
        assert x.shape[-2:] == (64, 64)
        theirs = member.image_processor.post_process_semantic_segmentation(
            member.model(pixel_values=x), target_sizes=[(48, 48)] * 2)
    assert probs.shape == (2, NUM_CLASSES, 48, 48)
    assert torch.allclose(probs.sum(1), torch.ones(2, 48, 48), atol=1e-4)
    for p, t in zip(probs, theirs):
        assert torch.equal(p.argmax(0), t)


@pytest.mark.parametrize('kind', sorted(SEGMENTERS))
def test_segmenter_export_loads_back_and_predicts_the_same(folders, kind, tmp_path):
    member = seg_member(folders, kind).eval()
    member.export(str(tmp_path), kind)
    auto = getattr(transformers, member.auto_class)
    model, loading = auto.from_pretrained(str(tmp_path / kind), output_loading_info=True)
    assert not any(loading[k] for k in ('missing_keys', 'unexpected_keys', 'mismatched_keys'))
    inputs, samples = seg_batch(1, size=64)
    x, _ = member.pixel_values(inputs, samples, training=False)
    with torch.no_grad():
        ours = member.model(pixel_values=x)
        theirs = model.eval()(pixel_values=x)
    key = 'logits' if member.kind == 'semantic' else 'masks_queries_logits'
    assert torch.equal(getattr(ours, key), getattr(theirs, key))


# ----------------------------------------------------------------------------- Bi-KD steps
def step_moves_every_member(members, data, lean=False, **model_kw):
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope('bikd')
    model = MODELS.build(dict(type='BiKDMetaArch', members=members, lean=lean, **model_kw))
    take_weights(model)
    model.train()
    wrapper = build_optim_wrapper(model, dict(type='BiKDOptimWrapper',
                                              optimizer=dict(type='Adam', lr=1e-3)))
    before = copy.deepcopy(model.state_dict())
    logs = model.train_step(data, wrapper)
    after = model.state_dict()
    for i, name in enumerate(model.member_names):
        moved = [k for k, v in after.items() if k.startswith(f'members.{i}.')
                 and v.is_floating_point() and not torch.equal(v, before[k])]
        assert moved, f'{name} was not updated'
    return model, logs


def test_a_bikd_step_with_an_hf_member_beside_a_timm_member(folders):
    import classification_bikd  # noqa: F401
    images, samples = batch(n=8)
    _, logs = step_moves_every_member([hf_classifier(folders['vit']), tiny('timm')],
                                      dict(inputs=images, data_samples=samples))
    assert set(logs) >= {'task_loss/hf', 'task_loss/timm', 'distill_loss',
                         'teacher_share/hf'}


def test_a_bikd_step_with_hf_segmenters_beside_the_official_mask2former(folders):
    pytest.importorskip('detectron2', reason='detectron2 is not installed (make d2)')
    import mask2former_bikd  # noqa: F401
    official = dict(type='Mask2FormerMember', name='m2f_official', pretrained=False,
                    partition_loss='pixel_ce',
                    config=os.path.join(ROOT, 'configs/ade20k/members/maskformer2_r18_tiny.yaml'),
                    opts=['MODEL.SEM_SEG_HEAD.NUM_CLASSES', NUM_CLASSES])
    members = [dict(type='TransformersSegmentationMember', model=folders[k], name=k,
                    partition_loss='pixel_ce') for k in ('segformer', 'mask2former')]
    inputs, samples = seg_batch(2, size=64)
    _, logs = step_moves_every_member(members + [official],
                                      dict(inputs=inputs, data_samples=samples),
                                      partition='loss')
    assert set(logs) >= {'task_loss/segformer', 'task_loss/mask2former',
                         'task_loss/m2f_official', 'distill_loss'}


def test_lean_mode_is_bit_for_bit_the_ordinary_step_with_hf_members(folders):
    import classification_bikd  # noqa: F401
    import mask2former_bikd  # noqa: F401
    from test_lean import assert_lean_equals_ordinary
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope('bikd')
    cls = MODELS.build(dict(type='BiKDMetaArch', members=[hf_classifier(folders['vit']),
                                                          tiny('timm')]))
    take_weights(cls)
    images = [dict(zip(('inputs', 'data_samples'), batch(n=8, seed=s))) for s in range(2)]
    assert_lean_equals_ordinary(cls, images)
    seg = MODELS.build(dict(type='BiKDMetaArch', partition='loss', members=[
        dict(type='TransformersSegmentationMember', model=folders[k], name=k,
             partition_loss='pixel_ce') for k in ('segformer', 'mask2former')]))
    take_weights(seg)
    seg_batches = [dict(zip(('inputs', 'data_samples'), seg_batch(2, size=64, seed=s)))
                   for s in range(2)]
    assert_lean_equals_ordinary(seg, seg_batches)


# ----------------------------------------------------------------------------- shipped configs
def test_the_shipped_imagenet_configs_with_hf_members_build_and_predict(folders, tmp_path):
    """hf_vit_convnext and the paper's DINOv2 + MambaVision-T2 pair, their hub ids replaced by
    local folders (a tiny ViT; a tiny model with its own code for MambaVision)."""
    import classification_bikd  # noqa: F401
    from mmengine.registry import MODELS, init_default_scope

    from bikd.engine import load_config
    remote = str(tmp_path / 'remote')
    remote_code_model(remote)
    vit1000 = str(tmp_path / 'vit1000')
    tiny_vit(vit1000, num_labels=1000)
    for stem, overrides in (
            ('hf_vit_convnext', [f'model.members.0.model={vit1000}',
                                 f'model.members.1.model={vit1000}']),
            ('dinov2_mambavisionT2', [f'model.members.1.model={remote}',
                                      'model.members.1.num_classes=1000'])):
        for method in ('bikd', 'independent'):
            cfg = load_config(os.path.join(ROOT, f'configs/imagenet/{stem}_{method}.yaml'),
                              ['model.random_init=true', *overrides])
            init_default_scope('bikd')
            model = MODELS.build(dict(cfg.model)).eval()
            assert all(m.num_classes == 1000 for m in model.members)
            if stem.startswith('dinov2'):
                assert model.members[1].trust_remote_code
                assert model.members[1].input_size == (224, 224)
            with torch.no_grad():
                (out, ) = model(torch.randint(0, 256, (1, 3, 224, 224), dtype=torch.uint8),
                                mode='predict')
            assert out['preds'].stacked().shape == (3, 1, 1000)


def test_train_net_on_the_shipped_hf_segformer_m2f_config(folders, tmp_path):
    """tools/train_net.py on configs/ade20k/hf_segformer_m2f_bikd.yaml, the SegFormer pointed at
    a tiny local folder (150 classes) and the official Mask2Former at its tiny config, on toy
    scenes in ADE20K's layout: two real Bi-KD steps and the evaluation of both members."""
    pytest.importorskip('detectron2', reason='detectron2 is not installed (make d2)')
    from conftest import run_tool
    from tools.make_ade20k_toy import make_ade20k_toy
    make_ade20k_toy(str(tmp_path / 'toy'), n_train=4, n_val=2, size=64)
    root = str(tmp_path / 'toy' / 'ADEChallengeData2016')
    work = str(tmp_path / 'work')
    proc = run_tool(
        'train_net.py', '--config-file', 'configs/ade20k/hf_segformer_m2f_bikd.yaml',
        f'model.members.0.model={folders["segformer"]}', 'model.members.0.num_classes=150',
        'model.members.1.config=configs/ade20k/members/maskformer2_r18_tiny.yaml',
        'model.random_init=true', f'work_dir={work}',
        f'train_dataloader.dataset.data_root={root}', f'val_dataloader.dataset.data_root={root}',
        'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=false', 'val_dataloader.persistent_workers=false',
        'train_dataloader.batch_size=2', 'val_dataloader.batch_size=2',
        'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
        'default_hooks.checkpoint.interval=2')
    with open(os.path.join(work, 'summary.json')) as f:
        summary = json.load(f)
    assert summary['iterations'] == 2 and set(summary['members']) == {'segformer_b2', 'r50'}
    assert 'member segformer_b2: weights from random initialisation (random_init)' in proc.stdout
    for name in ('segformer_b2', 'r50'):
        assert 0 <= summary['members'][name]['after']['mIoU'] <= 100


def test_find_partners_ranks_a_hugging_face_candidate(digits_root, tmp_path):
    import csv

    from conftest import digits_overrides, run_tool
    import timm
    folder = str(tmp_path / 'vit_digits')
    tiny_vit(folder, num_labels=10, image_size=32)
    weights = []  # the config's members, with random weights of their own
    for i, arch in enumerate(('resnet10t', 'convnext_atto')):
        weights.append(f'model.members.{i}.checkpoint={tmp_path / arch}.pth')
        torch.save(timm.create_model(arch, num_classes=10).state_dict(),
                   tmp_path / f'{arch}.pth')
    out = tmp_path / 'out'
    run_tool('find_partners.py', '--config-file', 'configs/digits/resnet_convnext_bikd.yaml',
             '--target', 'resnet', '--hf', folder, '--output-dir', out, *weights,
             *[o for o in digits_overrides(digits_root, tmp_path / 'w')
               if o.startswith('val_dataloader')])
    with open(out / 'partners.csv') as f:
        rows = {r['candidate']: r for r in csv.DictReader(f)}
    assert set(rows) == {'convnext', 'vit_digits'}
    assert 0 <= float(rows['vit_digits']['own']) <= 100
