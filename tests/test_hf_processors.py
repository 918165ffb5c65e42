"""Hugging Face members preprocess as their image processors do: for the processor types of the
models the README lists (ViT, DeiT, BiT/DINOv2, ConvNeXt, PoolFormer, LeViT, EfficientNet,
MobileViT, BEiT, SegFormer, DPT, Mask2Former, MaskFormer), on tiny random models written with
save_pretrained, the input a member feeds its model equals (<= 1e-5) the ``pixel_values`` of the
processor's torchvision backend for the same image; a segmenter's label maps agree with the
processor's pipeline (processor -> model -> post_process_semantic_segmentation at the original
size) at least as well as transformers' two backends (torchvision, PIL) agree with each other;
an export's image processor gives the member's preprocessing back; what the member cannot
reproduce is refused in one line naming the option."""
import math
import os

import numpy as np
import pytest
import torch

transformers = pytest.importorskip('transformers')

from bikd.errors import UserError  # noqa: E402
from conftest import ROOT, run_tool  # noqa: E402

NUM_CLASSES = 6


def calibrated(model, size=(48, 48), gain=None):
    """``model`` with trained-ish statistics: its batch norms' running statistics taken on
    random images (``gain``: its weights re-drawn at that scale), so that its label maps on
    random images are not one class."""
    g = torch.Generator().manual_seed(1)
    if gain:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.copy_(torch.randn(p.shape, generator=g) * gain / math.sqrt(p[0].numel()))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if norms:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        with torch.no_grad():
            model(pixel_values=torch.rand(4, 3, *size, generator=g) * 4 - 2)
    return model.eval()


# ----------------------------------------------------------------------------- tiny models
def vit(num_labels=5):
    return transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=24, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=num_labels))


def deit():
    return transformers.DeiTForImageClassification(transformers.DeiTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=5))


def dinov2():
    return transformers.Dinov2ForImageClassification(transformers.Dinov2Config(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        mlp_ratio=2, num_labels=5))


def swin():
    return transformers.SwinForImageClassification(transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 1],
        window_size=4, num_labels=5))


def convnext():
    return calibrated(transformers.ConvNextForImageClassification(transformers.ConvNextConfig(
        hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], num_labels=5)))


def poolformer():
    return transformers.PoolFormerForImageClassification(transformers.PoolFormerConfig(
        depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 16, 16], num_labels=5))


def levit():
    return calibrated(transformers.LevitForImageClassification(transformers.LevitConfig(
        image_size=32, hidden_sizes=[16, 32, 32], num_attention_heads=[1, 2, 2],
        depths=[1, 1, 1], key_dim=[8, 8, 8], patch_size=16, num_labels=5)), (32, 32))


def efficientnet():
    return calibrated(transformers.EfficientNetForImageClassification(
        transformers.EfficientNetConfig(
            image_size=32, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128,
            kernel_sizes=[3, 3], in_channels=[32, 16], out_channels=[16, 24], strides=[1, 2],
            num_block_repeats=[1, 1], expand_ratios=[1, 2], num_labels=5)))


def mobilevit_config(**kw):
    return transformers.MobileViTConfig(
        image_size=32, hidden_sizes=[16, 16, 16], neck_hidden_sizes=[8, 8, 16, 16, 16, 16, 32],
        num_attention_heads=2, **kw)


def mobilevit():
    return calibrated(transformers.MobileViTForImageClassification(mobilevit_config(
        num_labels=5)))


def beit():
    return transformers.BeitForImageClassification(transformers.BeitConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        image_size=24, patch_size=8, num_labels=5))


def segformer():
    return calibrated(transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
        num_attention_heads=[1, 2], decoder_hidden_size=32, num_labels=NUM_CLASSES,
        patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2])), gain=1.5)


def mobilevit_seg():
    model = calibrated(transformers.MobileViTForSemanticSegmentation(mobilevit_config(
        output_stride=8, aspp_out_channels=16, atrous_rates=[1, 2, 3],
        num_labels=NUM_CLASSES)), gain=1.5)
    with torch.no_grad():  # logits of a trained model's size, not near ties
        model.segmentation_head.classifier.convolution.weight.mul_(100)
    return model


def dpt():
    return calibrated(transformers.DPTForSemanticSegmentation(transformers.DPTConfig(
        hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
        image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=16, num_labels=NUM_CLASSES)),
        (32, 32), gain=1.5)


def beit_seg():
    return calibrated(transformers.BeitForSemanticSegmentation(transformers.BeitConfig(
        hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
        image_size=32, patch_size=8, out_indices=[0, 1, 2, 3], pool_scales=[1, 2],
        auxiliary_channels=8, use_absolute_position_embeddings=True,
        num_labels=NUM_CLASSES)), (32, 32), gain=1.5)


def swin_backbone():
    return transformers.SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                                   num_heads=[1, 1, 1, 1], window_size=4,
                                   out_features=['stage1', 'stage2', 'stage3', 'stage4'])


def mask2former():
    return transformers.Mask2FormerForUniversalSegmentation(transformers.Mask2FormerConfig(
        backbone_config=swin_backbone(), feature_size=32, mask_feature_size=32, hidden_dim=32,
        encoder_feedforward_dim=64, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
        dim_feedforward=64, num_queries=8, num_labels=NUM_CLASSES)).eval()


def maskformer():
    detr = transformers.DetrConfig(d_model=32, encoder_layers=1, decoder_layers=1,
                                   encoder_attention_heads=2, decoder_attention_heads=2,
                                   encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=8)
    return transformers.MaskFormerForInstanceSegmentation(transformers.MaskFormerConfig(
        backbone_config=swin_backbone(), decoder_config=detr, fpn_feature_size=32,
        mask_feature_size=32, num_labels=NUM_CLASSES)).eval()


#: name -> (model, image processor class, its options): the shared batch is 40x56, so every
#: resize, crop and padding below changes it
CLASSIFIERS = {
    'vit_nearest': (vit, 'ViTImageProcessor', dict(
        size={'height': 24, 'width': 24}, resample=0, image_mean=[0.4, 0.5, 0.6],
        image_std=[0.2, 0.3, 0.25])),
    'deit_crop': (deit, 'DeiTImageProcessor', dict(
        size={'height': 36, 'width': 36}, crop_size={'height': 32, 'width': 32})),
    'dinov2_bit': (dinov2, 'BitImageProcessor', dict(
        size={'shortest_edge': 35}, crop_size={'height': 32, 'width': 32})),
    'swin_vit_pad': (swin, 'ViTImageProcessor', dict(
        size={'shortest_edge': 30}, resample=3, do_pad=True, pad_size={'height': 48,
                                                                        'width': 48})),
    'convnext_crop_pct': (convnext, 'ConvNextImageProcessor', dict(
        size={'shortest_edge': 32}, crop_pct=0.8)),
    'poolformer_crop_pct': (poolformer, 'PoolFormerImageProcessor', dict(
        size={'shortest_edge': 32}, crop_pct=0.9, crop_size={'height': 32, 'width': 32})),
    'levit': (levit, 'LevitImageProcessor', dict(
        size={'shortest_edge': 30}, crop_size={'height': 32, 'width': 32})),
    'efficientnet': (efficientnet, 'EfficientNetImageProcessor', dict(
        size={'height': 36, 'width': 36}, do_center_crop=True,
        crop_size={'height': 32, 'width': 32}, rescale_offset=True, include_top=True,
        rescale_factor=1 / 127.5)),
    'mobilevit': (mobilevit, 'MobileViTImageProcessor', dict(
        size={'shortest_edge': 36}, crop_size={'height': 32, 'width': 32})),
    'beit_crop': (beit, 'BeitImageProcessor', dict(
        size={'height': 30, 'width': 30}, do_center_crop=True,
        crop_size={'height': 24, 'width': 24})),
}
SEGMENTERS = {
    'segformer': (segformer, 'SegformerImageProcessor', dict(size={'height': 32, 'width': 48})),
    'mobilevit': (mobilevit_seg, 'MobileViTImageProcessor', dict(
        size={'shortest_edge': 40}, crop_size={'height': 32, 'width': 32})),
    'dpt': (dpt, 'DPTImageProcessor', dict(
        size={'height': 30, 'width': 30}, do_pad=True, size_divisor=16)),
    'beit': (beit_seg, 'BeitImageProcessor', dict(
        size={'height': 32, 'width': 32}, do_reduce_labels=True)),
    'mask2former': (mask2former, 'Mask2FormerImageProcessor', dict(
        size={'shortest_edge': 40, 'longest_edge': 72})),
    'maskformer': (maskformer, 'MaskFormerImageProcessor', dict(
        size={'shortest_edge': 36, 'longest_edge': 60}, size_divisor=16)),
}


def write(folder, make, processor, options):
    torch.manual_seed(0)
    make().save_pretrained(folder)
    getattr(transformers, processor)(**options).save_pretrained(folder)
    return folder


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp('hf_processors')
    return {**{f'cls/{k}': write(str(root / 'cls' / k), *v) for k, v in CLASSIFIERS.items()},
            **{f'seg/{k}': write(str(root / 'seg' / k), *v) for k, v in SEGMENTERS.items()}}


def built(cfg):
    from bikd.method.meta_arch import build_member
    member = build_member(cfg)
    member.take_weights()
    return member.eval()


def classifier(folder, **kw):
    import classification_bikd  # noqa: F401
    return built(dict(type='TransformersClassifierMember', model=folder, name='hf', **kw))


def segmenter(folder, **kw):
    import mask2former_bikd  # noqa: F401
    return built(dict(type='TransformersSegmentationMember', model=folder, name='hf', **kw))


def processor(folder, backend='torchvision'):
    return transformers.AutoImageProcessor.from_pretrained(folder, backend=backend)


def shared_batch(n=3, size=(40, 56), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, *size), dtype=torch.uint8, generator=g)


def assert_same_input(ours, theirs):
    assert ours.shape == theirs.shape
    assert (ours - theirs.float()).abs().max().item() <= 1e-5


# ----------------------------------------------------------------------------- classification
@pytest.mark.parametrize('kind', sorted(CLASSIFIERS))
def test_a_classifiers_input_is_its_processors_output(folders, kind):
    member = classifier(folders[f'cls/{kind}'])
    images = shared_batch()
    fast = processor(folders[f'cls/{kind}'])
    theirs = fast(images=list(images), return_tensors='pt')['pixel_values']
    ours = member.normalize(images)
    assert_same_input(ours, theirs)
    with torch.no_grad():
        assert torch.allclose(member.logits(images), member.model(pixel_values=theirs).logits,
                              atol=1e-5)
    assert member.input_size == tuple(ours.shape[-2:])


def test_the_options_that_moved_the_inputs_before(folders):
    """The three of the issue, against what the member used to feed: EfficientNet's offset and
    include_top, MobileViT's BGR order without normalisation, a nearest filter."""
    from bikd.members.hf import ImagePreprocessing
    images = shared_batch()
    effnet = classifier(folders['cls/efficientnet'])
    # ((x / 127.5 - 1) - 0.5) / 0.5 / 0.5 reaches -6; (x / 255 - 0.5) / 0.5 stops at -1
    assert effnet.normalize(images).min() < -5.9
    mobile = classifier(folders['cls/mobilevit'])
    ours = mobile.normalize(images)
    assert 0 <= ours.min() and ours.max() <= 1  # [0, 1], not normalised
    rgb = processor(folders['cls/mobilevit'])
    rgb.do_flip_channel_order = False
    assert torch.equal(ours, ImagePreprocessing(rgb, 'm')(images)[:, [2, 1, 0]])  # BGR
    nearest = classifier(folders['cls/vit_nearest'])
    assert nearest.interpolation == 'nearest'
    raw = nearest.normalize(images) * nearest.std + nearest.mean  # back to [0, 1]
    assert set(torch.round(raw * 255).long().unique().tolist()) <= \
        set(images.unique().tolist())  # picked, not blended


def test_the_member_overrides_and_the_export_give_the_preprocessing_back(folders, tmp_path):
    """input_size / interpolation given: the member resizes straight to them; its export's
    image processor (AutoImageProcessor) makes the member's input from the same images."""
    images = shared_batch()
    for kind, kw in (('convnext_crop_pct', dict(input_size=[28, 36], interpolation='bilinear')),
                     ('efficientnet', dict(input_size=[30, 30])),
                     ('vit_nearest', dict(mean=[0.5] * 3, std=[0.25] * 3))):
        member = classifier(folders[f'cls/{kind}'], **kw)
        ours = member.normalize(images)
        if 'input_size' in kw:
            assert tuple(ours.shape[-2:]) == tuple(kw['input_size'])
        member.export(str(tmp_path), kind)
        back = processor(str(tmp_path / kind))
        assert_same_input(ours, back(images=list(images), return_tensors='pt')['pixel_values'])


def test_a_folder_without_an_image_processor(folders, tmp_path):
    """It needs input_size, mean and std, says so in one line, and its export writes the image
    processor it preprocessed with."""
    folder = str(tmp_path / 'bare')
    torch.manual_seed(0)
    dinov2().save_pretrained(folder)
    with pytest.raises(UserError, match=r"ships no image processor configuration .*; give "
                                        r"input_size, mean, std in the member's config") as e:
        classifier(folder)
    assert '\n' not in str(e.value)
    member = classifier(folder, input_size=[24, 32], mean=[0.4] * 3, std=[0.2] * 3,
                        interpolation='bicubic')
    member.export(str(tmp_path / 'out'), 'bare')
    assert os.path.isfile(tmp_path / 'out' / 'bare' / 'preprocessor_config.json')
    back = processor(str(tmp_path / 'out' / 'bare'))
    assert type(back).__name__ == 'BitImageProcessor'  # DINOv2's own kind
    images = shared_batch()
    assert_same_input(member.normalize(images),
                      back(images=list(images), return_tensors='pt')['pixel_values'])


def test_find_partners_on_a_folder_without_an_image_processor_is_one_line(tmp_path):
    folder = tmp_path / 'bare'
    dinov2().save_pretrained(str(folder))
    proc = run_tool('find_partners.py', '--config-file',
                    os.path.join(ROOT, 'configs/digits/resnet_convnext_bikd.yaml'),
                    '--target', 'resnet', '--hf', folder, '--output-dir', tmp_path / 'out',
                    expect_ok=False)
    assert proc.returncode == 2 and 'Traceback' not in proc.stdout, proc.stdout[-3000:]
    assert 'ships no image processor configuration' in proc.stdout
    assert 'give input_size, mean, std' in proc.stdout


# ----------------------------------------------------------------------------- segmentation
def seg_inputs(sizes, seed=0):
    """mmseg's evaluation batch: BGR uint8 images (already resized by the data pipeline) and
    samples whose ori_shape is the original size the prediction is scored at."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for h, w in sizes:
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))
        s = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h + 9, w + 13),
                                        reduce_zero_label=True))
        s.gt_sem_seg = PixelData(data=torch.randint(0, NUM_CLASSES, (1, h, w), generator=g))
        samples.append(s)
    return inputs, samples


def pipeline(folder, model, image, target, backend):
    """transformers' own pipeline on one RGB image: processor, model, post-processing."""
    proc = processor(folder, backend)
    rgb = image if backend == 'torchvision' else image.permute(1, 2, 0).numpy()
    pixels = proc(images=[rgb], return_tensors='pt')['pixel_values']
    with torch.no_grad():
        out = model(pixel_values=pixels)
    return proc.post_process_semantic_segmentation(out, target_sizes=[target])[0], pixels


SIZES = [(40, 56), (56, 40), (44, 44)]


@pytest.mark.parametrize('kind', sorted(SEGMENTERS))
def test_a_segmenters_input_and_labels_are_its_processors_pipeline(folders, kind):
    folder = folders[f'seg/{kind}']
    member = segmenter(folder)
    inputs, samples = seg_inputs(SIZES)
    agree_member, agree_backends, classes = [], [], set()
    for image, sample in zip(inputs, samples):
        target = sample.metainfo['ori_shape']
        rgb = image[[2, 1, 0]]
        fast, pixels = pipeline(folder, member.model, rgb, target, 'torchvision')
        slow, _ = pipeline(folder, member.model, rgb, target, 'pil')
        ours, sizes = member.pixel_values([image], [sample], training=False)
        assert_same_input(ours, pixels)
        with torch.no_grad():
            labels = member.predict([image], [sample])[0].argmax(0)
        assert labels.shape == fast.shape == tuple(target)
        agree_member.append((labels == fast).float().mean().item())
        agree_backends.append((slow == fast).float().mean().item())
        classes |= set(fast.unique().tolist())
    assert len(classes) >= 2, 'the maps of this random model are one class: no test'
    assert np.mean(agree_member) >= np.mean(agree_backends), (agree_member, agree_backends)


@pytest.mark.parametrize('kind', ['segformer', 'mask2former', 'dpt'])
def test_a_batch_of_images_of_different_sizes_keeps_each_images_input(folders, kind):
    """Each image's processed input is in its corner of the padded batch, zeros around it."""
    member = segmenter(folders[f'seg/{kind}'])
    inputs, samples = seg_inputs(SIZES)
    batch, sizes = member.pixel_values(inputs, samples, training=False)
    fast = processor(folders[f'seg/{kind}'])
    for i, image in enumerate(inputs):
        theirs = fast(images=[image[[2, 1, 0]]], return_tensors='pt')['pixel_values'][0]
        assert sizes[i] == tuple(theirs.shape[-2:])
        assert_same_input(batch[i, :, :sizes[i][0], :sizes[i][1]], theirs)
        assert batch[i, :, sizes[i][0]:].abs().sum() == 0
        assert batch[i, :, :, sizes[i][1]:].abs().sum() == 0


def test_training_takes_the_steps_on_values_only(folders):
    """The data pipeline's training crops are the model's input size: no resize, crop or
    padding, but its rescale, normalisation and channel order."""
    member = segmenter(folders['seg/mobilevit'])
    inputs, samples = seg_inputs([(40, 56)])
    x, _ = member.pixel_values(inputs, samples, training=True)
    assert torch.allclose(x[0], inputs[0].float() / 255)  # BGR in [0, 1], as MobileViT takes


def test_labels_reduced_by_the_processor_need_reduced_data(folders):
    """BEiT's processor here reduces labels: data that say they are not reduced are refused in
    one line; reduced ones train."""
    member = segmenter(folders['seg/beit'])
    inputs, samples = seg_inputs([(32, 32)] * 2)
    assert member.forward_train(inputs, samples).loss.shape == (2, )
    for s in samples:
        s.set_metainfo(dict(reduce_zero_label=False))
    with pytest.raises(UserError, match=r"member 'hf': its image processor reduces labels "
                                        r"\(do_reduce_labels: true.*reduce_zero_label: true") as e:
        member.forward_train(inputs, samples)
    assert '\n' not in str(e.value)


def test_the_universal_segmenters_train(folders):
    for kind in ('mask2former', 'maskformer'):
        member = segmenter(folders[f'seg/{kind}'])
        inputs, samples = seg_inputs([(32, 32)] * 2)
        torch.manual_seed(0)
        assert torch.isfinite(member.forward_train(inputs, samples).loss).all()


# ----------------------------------------------------------------------------- refused
@pytest.mark.parametrize('options, message', [
    (dict(resample=4), r'resizes with resample=4 \(box\)'),
    (dict(do_center_crop=True, crop_size=None), r'crops \(do_center_crop\) to crop_size=None'),
    (dict(size={'longest_edge': 30}), r"has size=\{'longest_edge': 30\}, which its resize "
                                      r"does not take"),
    (dict(image_mean=[0.5, 0.5]), r'has image_mean=\[0.5, 0.5\], not one value per RGB channel'),
])
def test_an_option_the_member_cannot_reproduce_is_refused_naming_it(tmp_path, options, message):
    folder = str(tmp_path / 'vit')
    vit().save_pretrained(folder)
    transformers.ViTImageProcessor(**{**dict(size={'height': 24, 'width': 24}),
                                      **options}).save_pretrained(folder)
    with pytest.raises(UserError, match=r"member 'hf': its image processor "
                                        r"ViTImageProcessor " + message) as e:
        classifier(folder)
    assert '\n' not in str(e.value)


def test_convnext_without_crop_pct_and_dpt_padding_without_size_divisor_are_refused(tmp_path):
    from bikd.members.hf import ImagePreprocessing
    with pytest.raises(UserError, match=r'ConvNextImageProcessor has crop_pct=None'):
        ImagePreprocessing(transformers.ConvNextImageProcessor(
            size={'shortest_edge': 32}, crop_pct=None), 'm')
    with pytest.raises(UserError, match=r'DPTImageProcessor pads \(do_pad\) to a multiple of '
                                        r'size_divisor=None'):
        ImagePreprocessing(transformers.DPTImageProcessor(do_pad=True), 'm')


class OwnResize(transformers.ViTImageProcessor):
    """A processor with steps of its own (as a remote-code processor may have)."""

    def resize(self, image, size, resample=None, **kwargs):
        return super().resize(image.flip(-1), size, resample, **kwargs)


def test_a_processor_with_steps_of_its_own_is_refused_unless_replaced(tmp_path):
    from bikd.members.hf import ImagePreprocessing
    with pytest.raises(UserError, match=r"OwnResize prepares images in its own way \(its own "
                                        r"resize\), which the member does not reproduce; give "
                                        r"input_size, mean and std"):
        ImagePreprocessing(OwnResize(), 'm', 'give input_size, mean and std')


# ----------------------------------------------------------------------------- checkpoints
def test_a_checkpoint_that_does_not_fit_names_the_member_the_checkpoint_and_the_shapes(
        folders, tmp_path, monkeypatch):
    folder = folders['cls/vit_nearest']
    other = str(tmp_path / 'vit7')
    vit(num_labels=7).save_pretrained(other)
    with pytest.raises(UserError, match=rf"checkpoint {other} does not fit the model for member "
                                        r"'hf' \(ViTForImageClassification\).*\n  shape "
                                        r"mismatches: classifier.bias \(checkpoint \[7\], model "
                                        r"\[5\]\), classifier.weight \(checkpoint \[7, 16\]"):
        classifier(folder, checkpoint=other)
    # the release's weights with another label space: only the head is new, and says so
    assert 'head re-initialised for 7 classes' in classifier(folder, num_classes=7).weights_from
    # ... but a backbone of another size is not the release's
    with pytest.raises(UserError, match=r'shape mismatches: .*vit.embeddings.*\(checkpoint '
                                        r'\[1, 1, 16\], model \[1, 1, 24\]\)'):
        classifier(folder, num_classes=7, config_overrides=dict(hidden_size=24))

    def refuses(*args, **kwargs):  # as transformers refuses weights it cannot convert
        raise RuntimeError('Error(s) in loading state_dict for ViTForImageClassification:\n\t'
                           'size mismatch for vit.layers.0.attention.q_proj.weight: copying a '
                           'param with shape torch.Size([48, 48]) from checkpoint, the shape in '
                           'current model is torch.Size([16, 16]).')
    for loader in (transformers.AutoModelForImageClassification,  # (a hub id's loader)
                   transformers.ViTForImageClassification):  # (a folder's, read once)
        monkeypatch.setattr(loader, 'from_pretrained', refuses)
    with pytest.raises(UserError, match=rf"checkpoint {other} does not fit the model for member "
                                        r"'hf' .*\n  transformers: Error\(s\) in loading "
                                        r"state_dict .* / size mismatch for vit.layers.0.attention"
                                        r".q_proj.weight: .*\[48, 48\]"):
        classifier(folder, checkpoint=other)
