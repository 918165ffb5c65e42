"""TMFI-Net: full-size forward on one clip, the release's parameter names, loading and export."""
import re

import pytest
import torch

from saliency_bikd import TMFINetMember
from saliency_bikd.tmfinet import from_release, to_release


@pytest.fixture(scope='module')
def tmfi():
    torch.manual_seed(0)
    return TMFINetMember(pretrained=False).eval()


def test_full_size_forward_on_one_clip(tmfi):
    clip = torch.randint(0, 256, (1, 32, 3, 180, 320), dtype=torch.uint8)  # shared clip
    assert tmfi.view(clip).shape == (1, 3, 32, 224, 384)
    with torch.no_grad():
        out = tmfi.net(tmfi.view(clip))
        maps = tmfi.predict(clip, dict(map=torch.zeros(1, 360, 640)))
    assert out.shape == (1, 224, 384) and 0 <= out.min() and out.max() <= 1
    assert maps.shape == (1, 360, 640)


def test_release_name_map_is_complete_and_lossless(tmfi):
    ours = tmfi.net.state_dict()
    release = to_release(ours)
    assert len(release) == len(ours)  # no two of our keys map to one release key
    pattern = re.compile(r'^(decoder\.[a-z]+\d?\.|backbone\.(patch_embed\.proj|norm)\.|'
                         r'backbone\.layers\.[0-3]\.(downsample\.(reduction|norm)|'
                         r'blocks\.\d+\.(norm1|norm2|attn\.(qkv|proj|relative_position_'
                         r'(bias_table|index))|mlp\.fc[12]))\b)')
    strays = [k for k in release if not pattern.match(k)]
    assert not strays, strays[:5]
    # the release's decoder layout (DecoderConvUp), e.g. the heads' conv indices
    assert {k for k in release if k.startswith('decoder.convtsp1.')} == {
        f'decoder.convtsp1.{i}.weight' for i in (0, 3, 6, 8)}
    assert {k for k in release if k.startswith('decoder.convtsp4.')} == {
        f'decoder.convtsp4.{i}.weight' for i in (0, 3, 6, 9)}
    assert len([k for k in release if '.blocks.' in k and k.endswith('qkv.weight')]) == 24
    back = from_release(release)
    assert set(back) == set(ours) and all(torch.equal(back[k], ours[k]) for k in ours)


def test_release_checkpoint_loads_and_export_writes_it(tmfi, tmp_path):
    path = tmp_path / 'best_VSTNet147.pth'
    torch.save(to_release(tmfi.net.state_dict()), path)  # as the release stores it
    loaded = TMFINetMember(checkpoint=str(path))
    loaded.take_weights()
    for k, v in tmfi.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[k], v), k
    info = loaded.export(str(tmp_path / 'out'), 'tmfinet')
    exported = torch.load(tmp_path / 'out' / info['checkpoint'])
    assert set(exported) == set(torch.load(path)) and 'backbone.layers.2.blocks.17.mlp.fc2.weight' in exported


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save({'backbone.conv.weight': torch.zeros(1)}, path)
    with pytest.raises(RuntimeError, match=r"(?s)other\.pth.*'tmfinet'.*missing keys"):
        TMFINetMember(checkpoint=str(path)).take_weights()


def test_train_net_on_dhf1k_layout(tmp_path):
    """The toy pair (reduced TMFI-Net and ViNet-A, random weights) through train_net.py on
    videos in DHF1K's layout; then the trained members exported in the releases' layouts."""
    import json
    import os

    from conftest import ROOT, run_tool
    from tools.make_dhf1k_toy import make_dhf1k_toy

    data = str(tmp_path / 'dhf1k')
    make_dhf1k_toy(data, n_train=2, n_val=1, n_frames=34, size=(36, 64))
    work = tmp_path / 'run'
    config = os.path.join(ROOT, 'configs/dhf1k_toy/tmfi_vinetA_bikd.yaml')
    opts = ['model.random_init=true', f'train_dataloader.dataset.data_root={data}',
            f'val_dataloader.dataset.data_root={data}', 'train_dataloader.num_workers=0',
            'val_dataloader.num_workers=0', 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
            f'work_dir={work}']
    proc = run_tool('train_net.py', '--config-file', config, *opts)
    summary = json.loads((work / 'summary.json').read_text())
    assert summary['primary_metric'] == 'CC' and summary['iterations'] == 2
    for m in ('tmfinet', 'vinet_a'):
        after = summary['members'][m]['after']
        assert after['frames'] == 34 and -1 <= after['CC'] <= 1 and 0 <= after['AUC_J'] <= 1
    assert abs(sum(summary['teacher_share'].values()) - 1) < 1e-6
    assert 'distill_loss' in proc.stdout and 'CC before' in proc.stdout
    run_tool('export_members.py', '--config-file', config, '--output-dir', str(tmp_path / 'out'),
             *opts)
    tmfi = torch.load(tmp_path / 'out' / 'tmfinet.pth')
    vinet_a = torch.load(tmp_path / 'out' / 'vinet_a.pth')
    assert 'decoder.convtsp1.0.weight' in tmfi and 'backbone.layers.0.blocks.0.attn.qkv.weight' in tmfi
    assert 'backbone.slow_res1.0.conv1.weight' in vinet_a and 'neck.conv_skip1.0.weight' in vinet_a
    assert json.loads((tmp_path / 'out' / 'vinet_a.json').read_text())['format'].startswith('ViNet-A')


def test_vinet_s_full_size_forward_decoder_layout_and_export(tmp_path):
    from saliency_bikd import ViNetSMember
    torch.manual_seed(0)
    member = ViNetSMember(pretrained=False).eval()
    # the release's DecoderConvUpGrouped parameter names
    assert {k for k in member.net.state_dict() if k.startswith('decoder.')} == {
        'decoder.convtsp1.0.weight', 'decoder.convtsp2.0.weight', 'decoder.convtsp3.0.weight',
        'decoder.convtsp4.0.weight', 'decoder.convtsp4.3.weight', 'decoder.convtsp4.6.weight',
        'decoder.convtsp4.8.weight', 'decoder.convtsp4.8.bias'}
    assert member.net.decoder.convtsp1[0].groups == 32
    clip = torch.randint(0, 256, (1, 32, 3, 224, 384), dtype=torch.uint8)
    with torch.no_grad():
        taps = member.net.features(member.view(clip))
        out = member.net(member.view(clip))
    assert [tuple(t.shape[1:]) for t in taps] == [(192, 16, 56, 96), (480, 16, 28, 48),
                                                  (832, 8, 14, 24), (1024, 4, 7, 12)]
    assert out.shape == (1, 224, 384) and 0 <= out.min() and out.max() <= 1
    info = member.export(str(tmp_path), 'vinet_s')
    again = ViNetSMember(checkpoint=str(tmp_path / info['checkpoint'])).eval()
    again.take_weights()
    with torch.no_grad():
        assert torch.equal(again.net(member.view(clip)), out)


def test_vinet_s_release_name_map_is_complete_and_lossless(tmp_path):
    from saliency_bikd import ViNetSMember
    from saliency_bikd.vinet_s import from_release as vs_from, to_release as vs_to

    member = ViNetSMember(pretrained=False)
    ours = member.net.state_dict()
    release = vs_to(ours)
    assert len(release) == len(ours) == 462 + 8
    assert 'backbone.base2.0.branch1.1.conv_s.weight' in release
    assert tuple(release['backbone.base2.0.branch3.1.conv.weight'].shape) == (32, 192, 1, 1, 1)
    assert tuple(release['backbone.base1.0.conv_t.weight'].shape) == (64, 64, 7, 1, 1)
    assert not [k for k in release if re.search(r'\.\d+\.\d+\.\d+\.', k) or '.branch0.1.' in k]
    back = vs_from(release)
    assert set(back) == set(ours) and all(torch.equal(back[k], ours[k]) for k in ours)
    # the release's file loads, and the export writes that layout again
    torch.save(release, tmp_path / 'DHF1K_vinet_s.pt')
    again = ViNetSMember(checkpoint=str(tmp_path / 'DHF1K_vinet_s.pt'))
    again.take_weights()
    assert all(torch.equal(again.net.state_dict()[k], v) for k, v in ours.items())
    info = again.export(str(tmp_path / 'out'), 'vinet_s')
    assert set(torch.load(tmp_path / 'out' / info['checkpoint'])) == set(release)


def test_vinet_a_full_size_release_layout_forward_and_export(tmp_path):
    from saliency_bikd import ViNetAMember
    torch.manual_seed(0)
    member = ViNetAMember(pretrained=False).eval()
    state = member.net.state_dict()
    # the release's ViNet_A tree (SlowFast-R50 alpha 4 beta 1/8, neck, grouped decoder):
    # same names and shapes, so its checkpoint loads without a key map
    assert len(state) == 655
    assert sum(p.numel() for p in member.net.parameters()) == 38_693_241
    shapes = {'backbone.fast_conv1.weight': (8, 3, 5, 7, 7),
              'backbone.slow_conv1.weight': (64, 3, 1, 7, 7),
              'backbone.Tconv4.weight': (256, 128, 5, 1, 1),
              'backbone.slow_res1.0.downsample.0.weight': (256, 80, 1, 1, 1),
              'backbone.slow_res3.0.conv1.weight': (256, 640, 3, 1, 1),
              'backbone.slow_res4.2.conv2.weight': (512, 512, 1, 3, 3),
              'backbone.fast_res4.0.downsample_bn.running_var': (256, ),
              'neck.conv_slow.0.weight': (1024, 2048, 1, 1, 1),
              'neck.conv_skip4.0.weight': (640, 1280, 1, 1, 1),
              'decoder.convtsp1.0.weight': (640, 1536 // 32, 3, 3, 3),
              'decoder.convtsp5.0.weight': (64, 80 // 4, 2, 3, 3),
              'decoder.convtsp6.3.weight': (16, 32, 2, 3, 3),
              'decoder.convtsp6.7.bias': (1, )}
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert member.net.backbone.slow_res4[0].conv2.dilation == (1, 2, 2)
    # a shared 63-frame clip (31 after the target); frame k holds value k
    clip = torch.arange(63, dtype=torch.uint8).view(1, 63, 1, 1, 1).expand(1, 63, 3, 128, 228)
    x = member.view(clip.contiguous(), target_pos=31)
    assert x.shape == (1, 3, 32, 256, 456)
    frames = (x[0, 0, :, 0, 0] * 0.225 + 0.45) * 255
    assert torch.allclose(frames, torch.arange(0, 63, 2, dtype=torch.float), atol=1e-3)
    with torch.no_grad():
        out = member.net(x)
    assert out.shape == (1, 256, 456) and 0 <= out.min() and out.max() <= 1
    info = member.export(str(tmp_path), 'vinet_a')
    assert set(torch.load(tmp_path / info['checkpoint'])) == set(state)
    again = ViNetAMember(checkpoint=str(tmp_path / info['checkpoint'])).eval()
    again.take_weights()
    with torch.no_grad():
        assert torch.equal(again.net(x), out)


def test_vinet_a_backbone_from_action_model_checkpoints(tmp_path):
    from saliency_bikd import ViNetAMember
    arch = dict(width=16, layers=(1, 1, 1, 1), decoder_groups=4)
    source = ViNetAMember(pretrained=False, input_size=(64, 112), arch=arch)
    backbone = source.net.backbone.state_dict()
    # ACAR-Net's AVA model nests the backbone and adds a detection head
    acar = {f'module.backbone.module.{k}': v for k, v in backbone.items()}
    acar['module.head.fc1.weight'] = torch.zeros(3, 3)
    torch.save({'state_dict': acar}, tmp_path / 'AVA_SLOWFAST_R50_ACAR_HR2O.pth.tar')
    member = ViNetAMember(backbone_checkpoint=str(tmp_path / 'AVA_SLOWFAST_R50_ACAR_HR2O.pth.tar'),
                          input_size=(64, 112), arch=arch)
    member.take_weights()
    assert all(torch.equal(member.net.backbone.state_dict()[k], v) for k, v in backbone.items())
    # a file missing part of the backbone is refused with the keys listed
    partial = {k: v for k, v in backbone.items() if not k.startswith('fast_res4.')}
    torch.save(partial, tmp_path / 'partial.pth')
    with pytest.raises(RuntimeError, match=r"(?s)partial\.pth.*'vinet_a'.*fast_res4\.0"):
        ViNetAMember(backbone_checkpoint=str(tmp_path / 'partial.pth'), input_size=(64, 112),
                     arch=arch).take_weights()
    with pytest.raises(ValueError, match='backbone_checkpoint=PATH'):
        ViNetAMember(input_size=(64, 112), arch=arch).take_weights()
    with pytest.raises(ValueError, match='multiples of 16'):
        ViNetAMember(pretrained=False, input_size=(250, 112), arch=arch)
