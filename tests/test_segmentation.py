"""mmseg segmentors as members: per-image task losses equal mmseg's own, the configs build,
train_net trains with the loss partition on data in ADE20K's layout, exports reload in mmseg."""
import json
import os
import warnings

import pytest
import torch
from mmengine.registry import MODELS, init_default_scope

from bikd import BiKDMetaArch
from bikd.engine import load_config
from conftest import ROOT, run_tool, seg_batch as batch

mmseg = pytest.importorskip('mmseg')
from mask2former_bikd import (MMSegDecodeHeadMember, MMSegMask2FormerMember,  # noqa: E402
                              build_mmseg_member)

M2F = os.path.join(ROOT, 'configs/ade20k/members/mask2former_r18_tiny.py')
UPERNET = os.path.join(ROOT, 'configs/ade20k/members/upernet_r18_tiny.py')
TOY = os.path.join(ROOT, 'configs/ade20k_toy/m2f_upernet_bikd.yaml')


def mmseg_loss(member, inputs, samples):
    data = member.segmentor.data_preprocessor(dict(inputs=inputs, data_samples=samples), True)
    losses = member.segmentor.loss(data['inputs'], data['data_samples'])
    return sum(v.sum() for k, v in losses.items() if 'loss' in k)


def test_mask2former_per_image_loss_is_mmsegs_loss_for_one_image():
    torch.manual_seed(0)
    member = build_mmseg_member(M2F, pretrained=False).train()
    inputs, samples = batch(1)
    torch.manual_seed(1)  # the criterion samples points at random
    ours = member.forward_train(inputs, samples)
    torch.manual_seed(1)
    theirs = mmseg_loss(member, inputs, samples)
    assert ours.loss.shape == (1, )
    assert ours.loss[0].item() == pytest.approx(theirs.item(), rel=1e-5)
    # distilled: per-pixel log class distribution at 1/4 of the crop, normalised over classes
    assert ours.logits.shape == (1, 150, 16, 16)
    assert torch.allclose(ours.logits.exp().sum(1), torch.ones(1, 16, 16), atol=1e-3)


def test_decode_head_per_image_losses_average_to_mmsegs_loss():
    torch.manual_seed(0)
    member = build_mmseg_member(UPERNET, pretrained=False).train()
    inputs, samples = batch(2)  # no ignored pixels: the batch mean is the mean of image means
    torch.manual_seed(1)  # the heads have dropout
    ours = member.forward_train(inputs, samples)
    assert ours.loss.shape == (2, ) and ours.loss[0] != ours.loss[1]
    torch.manual_seed(1)
    assert ours.loss.mean().item() == pytest.approx(mmseg_loss(member, inputs, samples).item(),
                                                    rel=1e-5)
    assert ours.logits.shape == (2, 150, 16, 16)


def test_mmseg_member_builds_the_class_of_its_segmentors_kind():
    assert type(build_mmseg_member(M2F, pretrained=False)) is MMSegMask2FormerMember
    assert type(build_mmseg_member(config=UPERNET, pretrained=False)) is MMSegDecodeHeadMember


def test_mask2former_and_upernet_train_together_with_loss_partition():
    torch.manual_seed(0)
    model = BiKDMetaArch([dict(type='MMSegMember', name='m2f', config=M2F, pretrained=False),
                          dict(type='MMSegMember', name='upernet', config=UPERNET,
                               pretrained=False)], partition='loss')
    inputs, samples = batch(2)
    losses = model(inputs, samples, mode='loss')
    assert losses.teacher_share['upernet'].item() in (0.0, 0.5, 1.0)
    assert losses.distill_loss.item() > 0
    losses.total().backward()
    for m in model.members:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_members_with_different_label_spaces_are_refused():
    with pytest.raises(ValueError, match=r"'m2f': 150, 'upernet': 19"):
        BiKDMetaArch([dict(type='MMSegMember', name='m2f', config=M2F, pretrained=False),
                      dict(type='MMSegMember', name='upernet', config=UPERNET, pretrained=False,
                           cfg_options={'model.decode_head.num_classes': 19,
                                        'model.auxiliary_head.num_classes': 19})])


@pytest.mark.parametrize('pair', ['mmseg_swinT_swinS', 'mmseg_r50_swinT'])
def test_table4_configs_on_mmsegs_model_zoo_build(pair):
    for method in ('bikd', 'independent'):
        cfg = load_config(os.path.join(ROOT, f'configs/ade20k/{pair}_{method}.yaml'),
                          ['model.random_init=true'])
        init_default_scope('bikd')
        model = MODELS.build(dict(cfg.model))
        assert model.partition == 'loss'
        assert all(isinstance(m, MMSegMask2FormerMember) for m in model.members)
        assert all(m.num_classes == 150 for m in model.members)
        opt = cfg.optim_wrapper.optimizer
        assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 1e-6, 1e-5)


def test_real_size_mask2former_pair_takes_a_training_step():
    """mmseg's R50 + Swin-T at full size (random weights), one 128x128 image: loss partition,
    KL and gradients into both members."""
    cfg = load_config(os.path.join(ROOT, 'configs/ade20k/mmseg_r50_swinT_bikd.yaml'),
                      ['model.random_init=true'])
    init_default_scope('bikd')
    torch.manual_seed(0)
    model = MODELS.build(dict(cfg.model)).train()
    from mmengine.model import revert_sync_batchnorm
    model = revert_sync_batchnorm(model)  # as mmengine's Runner does outside DDP
    inputs, samples = batch(2, size=128)
    losses = model(inputs, samples, mode='loss')
    assert set(losses.task_losses) == {'r50', 'swin_t'} and losses.distill_loss > 0
    losses.total().backward()
    for m in model.members:
        assert m.segmentor.decode_head.cls_embed.weight.grad.abs().sum() > 0


@pytest.fixture(scope='module')
def toy_root(tmp_path_factory):
    from tools.make_ade20k_toy import make_ade20k_toy
    root = str(tmp_path_factory.mktemp('ade') / 'toy')
    make_ade20k_toy(root, n_train=16, n_val=6, size=96)
    return os.path.join(root, 'ADEChallengeData2016')


def toy_overrides(root, work):
    return [f'train_dataloader.dataset.data_root={root}',
            f'val_dataloader.dataset.data_root={root}', 'train_dataloader.num_workers=0',
            'val_dataloader.num_workers=0', 'model.random_init=true', f'work_dir={work}',
            'train_cfg.max_iters=4', 'train_cfg.val_interval=4',
            'default_hooks.checkpoint.interval=4', 'default_hooks.logger.interval=2']


def test_train_net_and_export_on_ade20k_layout(toy_root, tmp_path):
    work = str(tmp_path / 'run')
    proc = run_tool('train_net.py', '--config-file', TOY, *toy_overrides(toy_root, work))
    summary = json.loads(open(os.path.join(work, 'summary.json')).read())
    assert summary['primary_metric'] == 'mIoU' and summary['iterations'] == 4
    for m in ('mask2former', 'upernet'):
        for k in ('mIoU', 'fwIoU', 'mACC', 'pACC'):
            assert 0 <= summary['members'][m]['after'][k] <= 100
    assert sum(summary['teacher_share'].values()) == pytest.approx(1.0)
    assert 'distill_loss' in proc.stdout and 'teacher_share/mask2former' in proc.stdout

    # each member exported as an mmseg checkpoint that mmseg's own init_model loads
    from mmseg.apis import init_model
    out = tmp_path / 'export'
    run_tool('export_members.py', '--config-file', TOY, '--output-dir', out, f'work_dir={work}')
    from bikd.engine.export import load_trained
    model = load_trained(TOY, os.path.join(work, 'iter_4.pth'))
    inputs, samples = batch(1, size=96, seed=3)
    for member in model.members:
        info = json.loads((out / f'{member.name}.json').read_text())
        seg = init_model(str(out / info['config']), str(out / info['checkpoint']), device='cpu')
        assert seg.dataset_meta['classes'][2] == 'sky' and len(seg.dataset_meta['classes']) == 150
        with torch.no_grad():
            x, s = member._preprocess(inputs, samples, training=False)
            ours = member.segmentor.predict(x, s)[0].seg_logits.data
            x, s = member._preprocess(inputs, samples, training=False)
            theirs = seg.predict(x, s)[0].seg_logits.data
        assert torch.allclose(ours, theirs, atol=1e-5), member.name


def test_pixel_ce_partition_loss_is_cross_entropy_of_the_distilled_distribution():
    torch.manual_seed(0)
    member = build_mmseg_member(M2F, pretrained=False, partition_loss='pixel_ce').train()
    inputs, samples = batch(2)
    out = member.forward_train(inputs, samples)
    gt = torch.stack([s.gt_sem_seg.data[0, ::4, ::4] for s in samples])  # nearest, 64 -> 16
    ref = -out.logits.detach().gather(1, gt[:, None]).squeeze(1).flatten(1).mean(1)
    assert torch.allclose(out.partition_loss, ref, atol=1e-5)
    assert member.partition_loss_kind == 'pixel_ce'


def test_loss_partition_over_differently_defined_losses_warns():
    from bikd.method.meta_arch import PartitionWarning
    members = [dict(type='MMSegMember', name='m2f', config=M2F, pretrained=False),
               dict(type='MMSegMember', name='upernet', config=UPERNET, pretrained=False)]
    with pytest.warns(PartitionWarning, match='partition_loss="pixel_ce"'):
        BiKDMetaArch(members, partition='loss')
    with warnings.catch_warnings():
        warnings.simplefilter('error', PartitionWarning)
        BiKDMetaArch([{**m, 'partition_loss': 'pixel_ce'} for m in members], partition='loss')


def test_bad_annotations_are_named(tmp_path):
    """An image without its annotation, labels outside the 150 classes, an annotation of
    another size: each error names the file (and the image) at fault."""
    import numpy as np
    from mmengine.registry import DATASETS
    from PIL import Image

    from tools.make_ade20k_toy import make_ade20k_toy
    make_ade20k_toy(str(tmp_path / 'toy'), n_train=3, n_val=1, size=64)
    root = tmp_path / 'toy' / 'ADEChallengeData2016'
    cfg = load_config(TOY, [f'train_dataloader.dataset.data_root={root}'])
    init_default_scope('bikd')
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    infos = [dataset.get_data_info(i) for i in range(len(dataset))]
    anns = [d['seg_map_path'] for d in infos]
    assert len(anns) == 3
    os.remove(anns[0])
    with pytest.raises(FileNotFoundError, match=os.path.basename(anns[0])):
        dataset[0]
    label = np.array(Image.open(anns[1]))
    label[:3, :3] = 200  # 199 after reduce_zero_label
    Image.fromarray(label).save(anns[1])
    with pytest.raises(ValueError, match=rf'{anns[1]} .*labels \[199\] outside the 150 classes'):
        dataset[1]
    img = Image.open(anns[2])
    img.resize((img.width // 2, img.height)).save(anns[2])
    with pytest.raises(ValueError, match=rf'annotation {anns[2]} is \d+x\d+ pixels but its '
                                         rf'image {infos[2]["img_path"]}'):
        dataset[2]


def test_unreadable_images_and_annotations_are_named(tmp_path):
    """bikd.LoadImageFromFile / bikd.LoadAnnotations (the shipped pipelines' loaders): an image
    cut short (mmcv: an AssertionError naming nothing useful with PIL) or an empty annotation is
    an OSError naming the file, which train_net reports in one line and skip_bad_samples skips."""
    from mmengine.registry import DATASETS

    from tools.make_ade20k_toy import make_ade20k_toy
    make_ade20k_toy(str(tmp_path / 'toy'), n_train=3, n_val=1, size=64)
    root = tmp_path / 'toy' / 'ADEChallengeData2016'
    for backend in ('cv2', 'pillow'):
        cfg = load_config(TOY, [f'train_dataloader.dataset.data_root={root}'])
        cfg.train_dataloader.dataset.pipeline[0]['imdecode_backend'] = backend
        init_default_scope('bikd')
        dataset = DATASETS.build(cfg.train_dataloader.dataset)
        dataset[0]  # readable as made
        infos = [dataset.get_data_info(i) for i in range(len(dataset))]
        image, ann = infos[0]['img_path'], infos[1]['seg_map_path']
        data = open(image, 'rb').read()
        with open(image, 'wb') as f:
            f.write(data[:len(data) // 3])
        with pytest.raises(OSError, match=rf'^cannot read image file {image}: '):
            dataset[0]
        open(image, 'wb').write(b'')
        with pytest.raises(OSError, match=rf'^cannot read image file {image}: it is empty'):
            dataset[0]
        open(image, 'wb').write(data)
        annotation = open(ann, 'rb').read()
        open(ann, 'wb').write(b'')
        with pytest.raises(OSError, match=rf'^cannot read annotation file {ann}: it is empty '
                                          rf'\(0 bytes\) \(image {infos[1]["img_path"]}\)'):
            dataset[1]
        open(ann, 'wb').write(annotation)
        dataset[1]
