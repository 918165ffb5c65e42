"""DHF1K / Hollywood-2 layouts: clips end at the target frame, evaluation scores every frame,
s-AUC negatives come from other videos, bad input is named."""
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

from saliency_bikd.data import VideoSaliencyDataset
from tools.make_dhf1k_toy import make_dhf1k_toy


@pytest.fixture(scope='module')
def dhf1k(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('sal') / 'dhf1k')
    make_dhf1k_toy(root, n_train=2, n_val=2, n_frames=10, size=(36, 64))
    return root


def test_training_clips_end_at_their_target_frame(dhf1k):
    ds = VideoSaliencyDataset(dhf1k, 'train', clip_len=4, frame_size=(32, 48))
    assert len(ds) == 2 * (10 - 3)  # every frame with a full clip behind it
    sample = ds[0]
    clip, target = sample['inputs'], sample['data_samples']
    assert clip.shape == (4, 3, 32, 48) and clip.dtype == torch.uint8
    assert target['map'].shape == (32, 48) and 0 <= target['map'].min() <= target['map'].max() <= 1
    # the last frame of the clip is the target frame: its discs sit where its fixations are
    v, t = ds.index[0]
    assert t == 3 and ds.videos[v]['maps'][t].endswith('0004.png')
    assert set(np.unique(target['fixation'].numpy())) <= {0, 1}


def test_evaluation_scores_every_frame_with_clamped_first_clips(dhf1k):
    ds = VideoSaliencyDataset(dhf1k, 'val', clip_len=4, frame_size=(36, 64))
    assert len(ds) == 2 * 10
    first = ds[0]
    clip = first['inputs']
    assert all(torch.equal(clip[k], clip[0]) for k in range(4))  # frame 1 repeated
    samples = first['data_samples']
    assert samples['map'].shape == (36, 64)  # the ground truth's own size in evaluation
    other = samples['other_fixation'].numpy()
    assert other.any()
    # negatives are fixations of the other video (index 1) only, the same on every call
    union = np.zeros_like(other)
    for i, (v, _) in enumerate(ds.index):
        if v == 1:
            union |= ds[i]['data_samples']['fixation'].numpy()
    assert not (other & ~union.astype(bool)).any()
    assert np.array_equal(other, ds[0]['data_samples']['other_fixation'].numpy())


def test_short_video_is_named_or_skipped(dhf1k, tmp_path):
    root = tmp_path / 'short'
    shutil.copytree(dhf1k, root)
    video = root / 'train' / '0001'
    for sub in ('images', 'maps', 'fixation'):
        for f in sorted(os.listdir(video / sub))[3:]:
            os.remove(video / sub / f)
    with pytest.raises(ValueError, match=r'0001 has 3 frames, fewer than the clip length 4'):
        VideoSaliencyDataset(str(root), 'train', clip_len=4)
    ds = VideoSaliencyDataset(str(root), 'train', clip_len=4, skip_short=True)
    assert len(ds.skipped) == 1 and len(ds) == 10 - 3


def test_missing_maps_and_folders_are_named(dhf1k, tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere/training'):
        VideoSaliencyDataset(str(tmp_path / 'nowhere'), 'train', layout='hollywood2')
    root = tmp_path / 'holes'
    shutil.copytree(dhf1k, root)
    os.remove(root / 'val' / '0003' / 'maps' / '0005.png')
    with pytest.raises(ValueError, match=r'0003: 10 frames but 9 maps'):
        VideoSaliencyDataset(str(root), 'val')


def test_hollywood2_layout(dhf1k, tmp_path):
    root = tmp_path / 'hollywood2'
    shutil.copytree(os.path.join(dhf1k, 'train'), root / 'training')
    shutil.copytree(os.path.join(dhf1k, 'val'), root / 'testing')
    for i, name in enumerate(sorted(os.listdir(root / 'testing'))):
        os.rename(root / 'testing' / name, root / 'testing' / f'actioncliptest00{i}_1')
    ds = VideoSaliencyDataset(str(root), 'test', layout='hollywood2', clip_len=4)
    assert len(ds) == 20 and ds.videos[0]['name'].endswith('actioncliptest000')
    # the shots of a video are one frame sequence (as the releases' loaders join them) ...
    os.rename(root / 'testing' / 'actioncliptest001_1', root / 'testing' / 'actioncliptest000_2')
    ds = VideoSaliencyDataset(str(root), 'test', layout='hollywood2', clip_len=4)
    assert [len(v['images']) for v in ds.videos] == [20]
    assert ds.videos[0]['images'][10].split(os.sep)[-3] == 'actioncliptest000_2'
    # ... unless each shot is asked to be a video of its own
    ds = VideoSaliencyDataset(str(root), 'test', layout='hollywood2', clip_len=4,
                              join_shots=False)
    assert [v['name'].split(os.sep)[-1] for v in ds.videos] == [
        'actioncliptest000_1', 'actioncliptest000_2']


def test_centred_windows_take_frames_after_the_target(dhf1k):
    from saliency_bikd.member import SaliencyMember

    ds = VideoSaliencyDataset(dhf1k, 'val', clip_len=4, frames_after=3, frame_size=(36, 64))
    sample = ds[9]  # the last frame of the first video: frames after it repeat it
    clip, pos = sample['inputs'], sample['data_samples']['target_pos']
    assert clip.shape[0] == 7 and pos == 3
    assert all(torch.equal(clip[k], clip[pos]) for k in range(pos, 7))
    # a member taking every second frame of a window centred on the target, as ViNet-A does
    member = SaliencyMember('centred', clip_len=4, input_size=(36, 64), mean=(0, 0, 0),
                            std=(1, 1, 1), frame_offsets=[-3, -1, 1, 3])
    mid = ds[5]
    view = member.view(mid['inputs'][None], mid['data_samples']['target_pos'])  # [1, 3, 4, H, W]
    for j, offset in enumerate([-3, -1, 1, 3]):
        assert torch.allclose(view[0, :, j], mid['inputs'][3 + offset].float() / 255)


def test_all_zero_training_map_is_replaced_and_named(dhf1k, tmp_path):
    """No loss is defined on an all-zero map (KL and CC divide by its sum): in training the
    nearest frame of the same video stands in for it, with a warning that names the file; a
    video without any usable map is refused by name. Evaluation keeps every frame (the
    evaluator drops and counts the NaN frames)."""
    import cv2
    root = tmp_path / 'zeros'
    shutil.copytree(dhf1k, root)
    maps = root / 'train' / '0001' / 'maps'
    blank = np.zeros((36, 64), np.uint8)
    cv2.imwrite(str(maps / '0005.png'), blank)
    ds = VideoSaliencyDataset(str(root), 'train', clip_len=4, frame_size=(36, 64))
    i = ds.index.index((0, 4))
    with pytest.warns(UserWarning, match=r'0001/maps/0005\.png is all zero.*frame 4 of'):
        sample = ds[i]
    expected = cv2.imread(str(maps / '0004.png'), cv2.IMREAD_GRAYSCALE) / 255.0
    assert np.allclose(sample['data_samples']['map'].numpy(), expected, atol=1e-6)
    assert ds.substituted == {str(maps / '0005.png')}
    assert ds[i - 1]['data_samples']['map'].numpy().any()  # its neighbours are untouched
    for f in os.listdir(maps):
        cv2.imwrite(str(maps / f), blank)
    with pytest.raises(ValueError, match=r'every saliency map of .*0001 is all zero'):
        ds[0]
    val = VideoSaliencyDataset(str(root), 'val', clip_len=4)
    assert len(val) == 20


def test_frames_are_resized_once_from_the_source_with_the_releases_filter(dhf1k):
    """Several sizes: each member's frames are PIL's bilinear resize of the decoded source
    frame (as the releases' transforms.Resize does); a member resizing a single shared size
    itself lands within one grey level of PIL's filter."""
    from PIL import Image

    from saliency_bikd.member import SaliencyMember
    ds = VideoSaliencyDataset(dhf1k, 'val', clip_len=4, frame_size=[[36, 64], [24, 40]])
    sample = ds[5]
    assert set(sample['inputs']) == {'36x64', '24x40'}
    source = Image.open(ds.videos[0]['images'][5]).convert('RGB')
    for key, (h, w) in (('36x64', (36, 64)), ('24x40', (24, 40))):
        expected = np.asarray(source.resize((w, h), Image.BILINEAR))
        assert np.array_equal(sample['inputs'][key][-1].permute(1, 2, 0).numpy(), expected)
    # a member fed the source size resizes with an antialiased filter, within 1 of PIL's
    member = SaliencyMember('m', clip_len=1, input_size=(24, 40), mean=(0, 0, 0),
                            std=(1, 1, 1), pretrained=False)
    rng = np.random.default_rng(0)
    photo = cv2.GaussianBlur(rng.integers(0, 256, (360, 640, 3)).astype(np.uint8), (0, 0), 2)
    clip = torch.from_numpy(photo).permute(2, 0, 1)[None, None]
    ours = (member.view(clip)[0, :, 0] * 255).round().permute(1, 2, 0).numpy()
    pil = np.asarray(Image.fromarray(photo).resize((40, 24), Image.BILINEAR)).astype(np.float64)
    assert np.abs(ours - pil).max() <= 1


def test_s_auc_negatives_keep_single_pixel_fixations_when_downscaled():
    """200 single-pixel fixations at 720x1280 moved to 360x640 by their coordinates (the
    MATLAB code's way): none lost, each where its coordinates scale to."""
    from saliency_bikd.data import rescale_fixations
    rng = np.random.default_rng(0)
    fix = np.zeros((720, 1280), bool)
    ys = rng.choice(360, 200, replace=False) * 2 + rng.integers(0, 2, 200)
    xs = rng.choice(640, 200, replace=False) * 2 + rng.integers(0, 2, 200)
    fix[ys, xs] = True
    rows, cols = rescale_fixations(fix, (360, 640))
    small = np.zeros((360, 640), bool)
    small[rows, cols] = True
    assert small.sum() == 200
    assert set(zip(rows.tolist(), cols.tolist())) == set(zip((ys // 2).tolist(),
                                                             (xs // 2).tolist()))
    resized = cv2.resize(fix.astype(np.uint8), (640, 360), interpolation=cv2.INTER_NEAREST)
    assert resized.sum() < 200  # what nearest-neighbour resizing of the map loses
