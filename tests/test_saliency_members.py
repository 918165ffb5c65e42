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
    for k, v in tmfi.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[k], v), k
    info = loaded.export(str(tmp_path / 'out'), 'tmfinet')
    exported = torch.load(tmp_path / 'out' / info['checkpoint'])
    assert set(exported) == set(torch.load(path)) and 'backbone.layers.2.blocks.17.mlp.fc2.weight' in exported


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save({'backbone.conv.weight': torch.zeros(1)}, path)
    with pytest.raises(RuntimeError, match=r"(?s)other\.pth.*'tmfinet'.*missing keys"):
        TMFINetMember(checkpoint=str(path))


def test_train_net_on_dhf1k_layout(tmp_path):
    import json
    import os

    from conftest import ROOT, run_tool
    from tools.make_dhf1k_toy import make_dhf1k_toy

    data = str(tmp_path / 'dhf1k')
    make_dhf1k_toy(data, n_train=2, n_val=1, n_frames=34, size=(36, 64))
    work = tmp_path / 'run'
    proc = run_tool('train_net.py', '--config-file',
                    os.path.join(ROOT, 'configs/dhf1k_toy/tmfi_pair_bikd.yaml'),
                    f'train_dataloader.dataset.data_root={data}',
                    f'val_dataloader.dataset.data_root={data}', 'train_dataloader.num_workers=0',
                    'val_dataloader.num_workers=0', 'train_cfg.max_epochs=1',
                    'train_cfg.val_interval=1', f'work_dir={work}')
    summary = json.loads((work / 'summary.json').read_text())
    assert summary['primary_metric'] == 'CC' and summary['iterations'] == 2  # 6 clips / 4
    for m in ('tmfi_small', 'tmfi_wide'):
        after = summary['members'][m]['after']
        assert after['frames'] == 34 and -1 <= after['CC'] <= 1 and 0 <= after['AUC_J'] <= 1
    assert 'loss_distill' in proc.stdout and 'CC before' in proc.stdout


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
    with torch.no_grad():
        assert torch.equal(again.net(member.view(clip)), out)


def test_vinet_s_release_name_map_is_complete_and_lossless(tmp_path):
    from saliency_bikd import ViNetSMember
    from saliency_bikd.vinet import from_release as vs_from, to_release as vs_to

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
    assert all(torch.equal(again.net.state_dict()[k], v) for k, v in ours.items())
    info = again.export(str(tmp_path / 'out'), 'vinet_s')
    assert set(torch.load(tmp_path / 'out' / info['checkpoint'])) == set(release)
