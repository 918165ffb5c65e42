"""The official Mask2Former (detectron2) as a member: its per-image losses are the official
criterion's, its weights load from official files without running pickle code, its export
loads back through detectron2's own checkpointer, and bad input is named."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, seg_batch

pytest.importorskip('detectron2', reason='detectron2 is not installed (make d2)')
pytest.importorskip('mmseg')
from bikd.errors import UserError  # noqa: E402
from mask2former_bikd import Mask2FormerMember  # noqa: E402
from mask2former_bikd import d2  # noqa: E402

TINY = os.path.join(ROOT, 'configs/ade20k/members/maskformer2_r18_tiny.yaml')


def tiny(**kw):
    torch.manual_seed(0)
    return Mask2FormerMember(TINY, name='m2f', pretrained=False, **kw)


def official_batch(inputs, samples, member):
    """The same images as detectron2's semantic mapper gives them to the official model."""
    from detectron2.structures import BitMasks, Instances
    batch = member.batched_inputs(inputs, samples, with_labels=True)
    for item in batch:
        sem = item['sem_seg']
        classes = torch.unique(sem)
        classes = classes[classes != 255]
        inst = Instances(tuple(sem.shape))
        inst.gt_classes = classes.long()
        inst.gt_masks = BitMasks(torch.stack([sem == c for c in classes])).tensor
        item['instances'] = inst
    return batch


def test_per_image_loss_is_the_official_models_training_loss_on_one_image():
    member = tiny().train()
    inputs, samples = seg_batch(1)
    torch.manual_seed(1)  # the criterion samples points at random
    ours = member.forward_train(inputs, samples)
    torch.manual_seed(1)
    theirs = member.model(official_batch(inputs, samples, member))
    assert ours.loss.shape == (1, )
    assert ours.loss[0].item() == pytest.approx(sum(theirs.values()).item(), rel=1e-5)
    # distilled: the semantic inference at 1/4 of the crop, a distribution over the classes
    assert ours.logits.shape == (1, 150, 16, 16)
    assert torch.allclose(ours.logits.exp().sum(1), torch.ones(1, 16, 16), atol=1e-3)


def test_gradients_reach_both_members_through_the_kl():
    """An official Mask2Former and an mmseg UPerNet, each teaching one of two images: the
    distillation term alone gives both of them gradient."""
    from bikd.losses import distillation_loss
    from mask2former_bikd import MMSegDecodeHeadMember
    official = tiny(partition_loss='pixel_ce').train()
    upernet = MMSegDecodeHeadMember(
        os.path.join(ROOT, 'configs/ade20k/members/upernet_r18_tiny.py'), pretrained=False).train()
    inputs, samples = seg_batch(2)
    outs = [m.forward_train(inputs, samples) for m in (official, upernet)]
    assert outs[0].logits.shape == outs[1].logits.shape == (2, 150, 16, 16)
    distillation_loss([o.logits for o in outs], torch.tensor([0, 1])).backward()
    for member, head in ((official, official.model.sem_seg_head.predictor.class_embed),
                         (upernet, upernet.segmentor.decode_head.conv_seg)):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0, member.name


def test_prediction_is_the_official_semantic_inference():
    member = tiny().eval()
    inputs, samples = seg_batch(2, seed=4)
    with torch.no_grad():
        probs = member.predict(inputs, samples)
        official = member.model(member.batched_inputs(inputs, samples, with_labels=False))
    assert probs.shape == (2, 150, 64, 64)
    for p, o in zip(probs, official):
        assert torch.allclose(p, o['sem_seg'] / o['sem_seg'].sum(0, keepdim=True), atol=1e-6)
    # the evaluation resize is detectron2's test mapper's (short side 128 for this config)
    assert tuple(member.test_resize(inputs[0]).shape) == (3, 128, 128)


def export_and_load_fresh(member, folder):
    """Nudge ``member``'s weights (values no fresh model has), export it to ``folder`` and
    load the export with detectron2's checkpointer into a fresh official model built from the
    exported config; returns (fresh model in eval mode, its config)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model
    with torch.no_grad():
        for p in member.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    info = member.export(str(folder), 'm2f')
    cfg = d2.load_d2_config(str(folder / info['config']))
    cfg.defrost()
    cfg.MODEL.DEVICE = 'cpu'
    torch.manual_seed(5)
    fresh = build_model(cfg).eval()
    DetectionCheckpointer(fresh).load(str(folder / info['checkpoint']))
    return fresh, cfg


def test_export_loads_through_detectrons_checkpointer_into_a_fresh_official_model(tmp_path):
    member = tiny()
    fresh, _ = export_and_load_fresh(member, tmp_path)
    inputs, samples = seg_batch(1, seed=2)
    batch = member.batched_inputs(inputs, samples, with_labels=False)
    member.eval()
    with torch.no_grad():
        ours, theirs = member.model(batch)[0]['sem_seg'], fresh(batch)[0]['sem_seg']
    assert torch.equal(ours, theirs)
    # and the member's own checkpoint argument reads it back
    again = Mask2FormerMember(TINY, checkpoint=str(tmp_path / 'm2f.pth'))
    again.take_weights()
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(),
                                                  member.model.state_dict().values()))


def official_pkl(member, path, extra=None, old_layout=False):
    """A file in the layout of the official model_final_*.pkl: pickled numpy arrays in plain
    dicts (no module versions); ``old_layout``: the pixel decoder named as before Mask2Former
    moved it into a submodule (``sem_seg_head.<x>``)."""
    state = {k: v.numpy() for k, v in member.model.state_dict().items()}
    if old_layout:
        state = {k.replace('sem_seg_head.pixel_decoder.', 'sem_seg_head.'): v
                 for k, v in state.items()}
    with open(path, 'wb') as f:
        pickle.dump(dict(model=state, __author__='Detectron2 Model Zoo', **(extra or {})), f)


@pytest.mark.parametrize('old_layout', [False, True])
def test_official_pkl_loads_without_running_pickle_code(tmp_path, old_layout):
    from detectron2.checkpoint import DetectionCheckpointer
    member = tiny()
    with torch.no_grad():
        for p in member.model.parameters():
            p.add_(0.01)
    path = str(tmp_path / 'model_final_test.pkl')
    official_pkl(member, path, old_layout=old_layout)
    if old_layout:
        assert 'sem_seg_head.adapter_1.weight' in pickle.load(open(path, 'rb'))['model']
    loaded = Mask2FormerMember(TINY, checkpoint=path)
    loaded.take_weights()
    for k, v in member.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    if old_layout:  # the same weights as detectron2's own checkpointer reads from the file
        fresh = tiny().model
        DetectionCheckpointer(fresh).load(path)
        for k, v in fresh.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[k], v), k
    # (a file in today's layout without module versions is one detectron2's checkpointer
    # renames wrongly, Mask2Former issues #95 / #110; the member reads it right)


class Payload:
    """Stands for an object a malicious pickle would construct."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_pkl_with_another_object_is_refused_and_named(tmp_path):
    member = tiny()
    official_pkl(member, tmp_path / 'bad.pkl', extra=dict(payload=Payload()))
    with pytest.raises(UserError, match=r'refusing to load .*bad.pkl: it holds a Python object '
                                        r'of type posix.getcwd.*trust_checkpoint=True'):
        Mask2FormerMember(TINY, checkpoint=str(tmp_path / 'bad.pkl')).take_weights()
    # a user who trusts the file can load it (the object is then constructed)
    Mask2FormerMember(TINY, checkpoint=str(tmp_path / 'bad.pkl'),
                      trust_checkpoint=True).take_weights()


def test_checkpoint_of_another_architecture_lists_the_keys(tmp_path):
    other = tiny(opts=['MODEL.MASK_FORMER.NUM_OBJECT_QUERIES', 10])
    official_pkl(other, tmp_path / 'other.pkl')
    with pytest.raises(RuntimeError, match=r"(?s)other.pkl does not fit the model for member "
                                           r"'m2f'.*shape mismatches: "
                                           r'sem_seg_head.predictor.query_feat.weight'):
        Mask2FormerMember(TINY, name='m2f', checkpoint=str(tmp_path / 'other.pkl')).take_weights()
    torch.save({'model': {'backbone.stem.conv1.weight': torch.zeros(1)}}, tmp_path / 'x.pth')
    with pytest.raises(RuntimeError, match=r'(?s)missing keys: backbone.res2'):
        Mask2FormerMember(TINY, name='m2f', checkpoint=str(tmp_path / 'x.pth')).take_weights()


def test_config_that_does_not_exist_is_named():
    with pytest.raises(FileNotFoundError, match=r'Mask2Former config not found: '
                                                r'configs/nosuch.yaml \(neither a file nor a '
                                                r'config of the Mask2Former repository'):
        Mask2FormerMember('configs/nosuch.yaml', pretrained=False)


def test_config_by_its_name_in_the_mask2former_repository():
    cfg = d2.load_d2_config('configs/ade20k/semantic-segmentation/swin/'
                         'maskformer2_swin_small_bs16_160k.yaml')
    assert cfg.MODEL.BACKBONE.NAME == 'D2SwinTransformer' and cfg.MODEL.SWIN.DEPTHS == [2, 2, 18, 2]
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 150


def test_without_detectron2_the_error_says_how_to_install_it():
    code = ('import sys; sys.modules["detectron2"] = None\n'
            'from mask2former_bikd import Mask2FormerMember\n'
            'Mask2FormerMember("x.yaml")\n')
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert 'the official Mask2Former needs detectron2' in proc.stderr
    assert 'make d2' in proc.stderr


def test_deformable_attention_runs_the_pytorch_fallback_and_says_so(monkeypatch):
    assert d2.deformable_attention_backend() == 'PyTorch fallback'
    from mask2former.modeling.pixel_decoder.ops.modules import ms_deform_attn
    calls = []
    fallback = ms_deform_attn.ms_deform_attn_core_pytorch
    monkeypatch.setattr(ms_deform_attn, 'ms_deform_attn_core_pytorch',
                        lambda *a: calls.append(1) or fallback(*a))
    attn = ms_deform_attn.MSDeformAttn(d_model=16, n_levels=1, n_heads=2, n_points=2)
    x = torch.randn(1, 16, 16)
    out = attn(x, torch.rand(1, 16, 1, 2), x, torch.tensor([[4, 4]]), torch.tensor([0]))
    assert calls == [1] and out.shape == (1, 16, 16) and torch.isfinite(out).all()


def test_real_size_official_pair_takes_a_training_step():
    """The paper's R50 + Swin-T (official configs, full size, random weights) from the Table 4
    config, two 128x128 images: loss partition, KL, gradients into both members."""
    from mmengine.registry import MODELS, init_default_scope

    from bikd.engine import load_config
    cfg = load_config(os.path.join(ROOT, 'configs/ade20k/r50_swinT_bikd.yaml'),
                      ['model.random_init=true'])
    init_default_scope('bikd')
    torch.manual_seed(0)
    model = MODELS.build(dict(cfg.model)).train()
    assert [m.num_classes for m in model.members] == [150, 150]
    assert type(model.members[1].model.backbone).__name__ == 'D2SwinTransformer'
    inputs, samples = seg_batch(2, size=128)
    losses = model(inputs, samples, mode='loss')
    assert set(losses.task_losses) == {'r50', 'swin_t'} and losses.distill_loss > 0
    losses.total().backward()
    for m in model.members:
        assert m.model.sem_seg_head.predictor.class_embed.weight.grad.abs().sum() > 0


def test_train_net_trains_the_official_member_beside_an_mmseg_one_and_exports(tmp_path):
    """The toy's official Mask2Former with the mmseg UPerNet through train_net on data in
    ADE20K's layout; the runner's checkpoint exports the official member as a detectron2
    checkpoint."""
    import json

    from conftest import run_tool
    from tools.make_ade20k_toy import make_ade20k_toy
    make_ade20k_toy(str(tmp_path / 'toy'), n_train=8, n_val=2, size=96)
    root = tmp_path / 'toy' / 'ADEChallengeData2016'
    config = os.path.join(ROOT, 'configs/ade20k_toy/m2f_official_upernet_bikd.yaml')
    work = tmp_path / 'run'
    overrides = [f'train_dataloader.dataset.data_root={root}',
                 f'val_dataloader.dataset.data_root={root}', 'train_dataloader.num_workers=0',
                 'val_dataloader.num_workers=0', 'model.random_init=true', f'work_dir={work}',
                 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
                 'default_hooks.checkpoint.interval=2']
    proc = run_tool('train_net.py', '--config-file', config, *overrides)
    assert 'deformable attention: PyTorch fallback' in proc.stdout
    summary = json.loads((work / 'summary.json').read_text())
    assert set(summary['members']) == {'m2f_official', 'upernet'} and summary['iterations'] == 2
    assert 0 <= summary['members']['m2f_official']['after']['mIoU'] <= 100
    run_tool('export_members.py', '--config-file', config, '--output-dir', tmp_path / 'export',
             f'work_dir={work}')
    info = json.loads((tmp_path / 'export' / 'm2f_official.json').read_text())
    assert info['format'] == 'detectron2'
    exported = torch.load(tmp_path / 'export' / info['checkpoint'], weights_only=True)
    trained = torch.load(work / 'iter_2.pth', weights_only=False)['state_dict']
    for k, v in exported['model'].items():
        assert torch.equal(v, trained[f'members.0.model.{k}']), k
