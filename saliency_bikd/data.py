"""DHF1K and Hollywood-2 in their released layouts: clips of consecutive frames, the last
frame's saliency map and fixations as the target."""
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from bikd.data import unreadable_file
from bikd.errors import UserError
from bikd.registry import DATASETS

IMG_EXT = ('.png', '.jpg', '.jpeg')
# split -> folder names to look for, per layout (DHF1K's train split is also shipped as annotation/)
SPLITS = {
    'dhf1k': {'train': ('train', 'annotation'), 'val': ('val', ), 'test': ('test', )},
    'hollywood2': {'train': ('training', ), 'test': ('testing', ), 'val': ('testing', )},
}


def _read(path: str, flags: int) -> np.ndarray:
    img = cv2.imread(path, flags)
    if img is None:
        raise unreadable_file(path)
    return img


def _frames(folder: str) -> List[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMG_EXT))


def rescale_fixations(fixations: np.ndarray, shape: Sequence[int]) -> Tuple[np.ndarray, ...]:
    """The pixels ``(rows, cols)`` of a binary fixation map's fixations in a map of ``shape``:
    each fixation's coordinates scaled to it (pixel centres), so that none is lost when the
    map is smaller, as the benchmark's MATLAB code moves fixations between sizes."""
    rows, cols = np.nonzero(fixations)
    h, w = fixations.shape
    rows = np.clip(((rows + 0.5) * shape[0] / h).astype(np.int64), 0, shape[0] - 1)
    cols = np.clip(((cols + 0.5) * shape[1] / w).astype(np.int64), 0, shape[1] - 1)
    return rows, cols


@DATASETS.register_module()
class VideoSaliencyDataset(Dataset):
    """Videos in DHF1K's layout (``<root>/{train,val}/<video>/{images,maps,fixation}/%04d.png``)
    or Hollywood-2's (``<root>/{training,testing}/<video>_<shot>/{images,maps,fixation}/``,
    frames in sorted order).

    A sample is the clip of ``clip_len`` consecutive frames ending at a target frame (and
    ``frames_after`` more after it, for members whose window is centred on the target, as
    ViNet-A's), with that frame's continuous map and binary fixations; ``target_pos`` is the
    target's position in the clip. Windows reaching past the video's ends repeat its first or
    last frame. In training, targets are the frames with a full clip behind them (a target
    whose map is all zero is replaced by the nearest one of the same video that is not, with a
    warning naming the file); in evaluation every frame is a target, and the first frames
    repeat the video's first frame to fill their clip.

    Frames are decoded once and resized, from the source frame, to every size in
    ``frame_size`` with PIL's bilinear filter (antialiased; the saliency releases' own
    preprocessing): one size gives ``inputs`` as ``uint8 [T, 3, H, W]`` RGB, several (each
    member's input size, e.g. ``[[224, 384], [256, 456]]``) give a dict ``{'HxW': clip}``,
    from which each member takes its own view (length, normalisation).

    Hollywood-2 ships each video as shots (``<video>_<shot>``); with ``join_shots`` (the
    default, as the releases' and the paper authors' loaders do) the shots of a video are one
    frame sequence (shots in sorted folder order, frames in sorted order within a shot), so
    windows run across shot boundaries; ``join_shots=False`` treats every shot as a video.

    Yields ``dict(inputs=frames, data_samples=dict(map, fixation, index[, other_fixation]))``:
    ``map`` float in [0, 1] and ``fixation`` uint8 at ``target_size`` (training; default
    the first ``frame_size``) or at the ground truth's own size (evaluation). In evaluation,
    ``other_fixation`` is the union of the fixations of ``other_frames`` random frames of
    other videos (the s-AUC's negatives), fixed by ``seed``, each frame's fixations moved to
    this frame's size by scaling their coordinates (as the benchmark's MATLAB code does; a
    resized map would lose single-pixel fixations).

    Args:
        data_root: dataset root. split: ``train`` / ``val`` / ``test``.
        layout: ``dhf1k`` or ``hollywood2``.
        test_mode: evaluation sampling (default: ``split != 'train'``).
        skip_short: leave out (and count in ``skipped``) videos shorter than ``clip_len`` in
            training instead of raising an error that names them.
        join_shots: Hollywood-2: one frame sequence per video (see above).
    """

    #: where its data is, for the run's fingerprint (:func:`bikd.data.dataset_fingerprint`)
    source_arguments = ('data_root', 'split', 'layout')

    def __init__(self, data_root: str, split: str = 'train', layout: str = 'dhf1k',
                 clip_len: int = 32, frame_size: Sequence[int] = (224, 384),
                 target_size: Optional[Sequence[int]] = None, test_mode: Optional[bool] = None,
                 other_frames: int = 10, seed: int = 0, skip_short: bool = False,
                 frames_after: int = 0, join_shots: bool = True):
        if layout not in SPLITS:
            raise UserError(f'layout must be one of {sorted(SPLITS)}, got {layout!r}')
        folder = next((os.path.join(data_root, f) for f in SPLITS[layout].get(split, ())
                       if os.path.isdir(os.path.join(data_root, f))), None)
        if folder is None:
            names = ' or '.join(SPLITS[layout].get(split, (split, )))
            raise FileNotFoundError(f'dataset folder not found: {os.path.join(data_root, names)} '
                                    f'({layout} layout, split {split!r})')
        self.test_mode = split != 'train' if test_mode is None else bool(test_mode)
        self.clip_len = int(clip_len)
        self.frames_after = int(frames_after)
        sizes = [frame_size] if isinstance(frame_size[0], int) else list(frame_size)
        self.frame_sizes = [tuple(int(v) for v in size) for size in sizes]
        self.several_sizes = not isinstance(frame_size[0], int)
        self.target_size = tuple(int(v) for v in (target_size or self.frame_sizes[0]))
        self.videos: List[Dict[str, List[str]]] = []
        self.skipped: List[str] = []
        for video in self._scan(folder, join_shots and layout == 'hollywood2'):
            vdir = video['name']
            if not self.test_mode and len(video['images']) < self.clip_len:
                if skip_short:
                    self.skipped.append(vdir)
                    continue
                raise UserError(f'{vdir} has {len(video["images"])} frames, fewer than the clip '
                                f'length {self.clip_len} (skip_short=True leaves such videos out)')
            self.videos.append(video)
        if not self.videos:
            raise FileNotFoundError(f'no videos with images/ under {folder}')
        first = 0 if self.test_mode else self.clip_len - 1
        self.index: List[Tuple[int, int]] = [(v, t) for v, video in enumerate(self.videos)
                                             for t in range(first, len(video['images']))]
        self.other_frames = int(other_frames)
        self.seed = int(seed)
        self.substituted: set = set()  # all-zero training maps replaced (per process)

    @staticmethod
    def _scan(folder: str, join_shots: bool) -> List[Dict[str, List[str]]]:
        """The videos of a split folder, each ``dict(name, images, maps, fixation)``."""
        groups: Dict[str, List[str]] = {}
        for name in sorted(os.listdir(folder)):
            vdir = os.path.join(folder, name)
            if os.path.isdir(vdir):
                key = os.path.join(folder, name.split('_')[0]) if join_shots else vdir
                groups.setdefault(key, []).append(vdir)
        videos = []
        for key, shots in groups.items():
            video: Dict[str, List[str]] = dict(images=[], maps=[], fixation=[])
            for vdir in shots:
                frames = {k: _frames(os.path.join(vdir, k)) for k in video}
                missing = [k for k in ('maps', 'fixation')
                           if len(frames[k]) != len(frames['images'])]
                if missing:
                    raise UserError(f'{vdir}: {len(frames["images"])} frames but '
                                    + ', '.join(f'{len(frames[k])} {k}' for k in missing))
                for k in video:
                    video[k] += frames[k]
            if video['images']:
                video['name'] = key
                videos.append(video)
        return videos

    def __len__(self) -> int:
        return len(self.index)

    def _other_fixation(self, idx: int, video: int, shape) -> np.ndarray:
        rng = np.random.default_rng([self.seed, idx])
        pool = [i for i, (v, _) in enumerate(self.index) if v != video] or list(range(len(self)))
        union = np.zeros(shape, np.uint8)
        for j in rng.choice(len(pool), size=min(self.other_frames, len(pool)), replace=False):
            v, t = self.index[pool[j]]
            fix = _read(self.videos[v]['fixation'][t], cv2.IMREAD_GRAYSCALE)
            union[rescale_fixations(fix > 0, shape)] = 1
        return union

    def _target_map(self, v: int, t: int) -> Tuple[int, np.ndarray]:
        """The target frame and its saliency map (``uint8``): ``t``, or in training, when its
        map is all zero (KL and CC are undefined, so no loss can be taken on it), the nearest
        target frame of the same video whose map is not; each substitution is warned about
        once per file and counted in ``substituted``."""
        video = self.videos[v]
        if self.test_mode:
            return t, _read(video['maps'][t], cv2.IMREAD_GRAYSCALE)
        first, last = self.clip_len - 1, len(video['images']) - 1
        for cand in sorted(range(first, last + 1), key=lambda k: (abs(k - t), k)):
            sal = _read(video['maps'][cand], cv2.IMREAD_GRAYSCALE)
            if sal.any():
                if cand != t:
                    if video['maps'][t] not in self.substituted:
                        warnings.warn(f'{video["maps"][t]} is all zero (no loss is defined on '
                                      f'it); training on frame {cand + 1} of {video["name"]} '
                                      'in its place')
                    self.substituted.add(video['maps'][t])
                return cand, sal
        raise UserError(f'every saliency map of {video["name"]} is all zero; remove the video '
                        'from the training set')

    def __getitem__(self, idx: int) -> dict:
        v, t = self.index[idx]
        t, sal = self._target_map(v, t)
        video = self.videos[v]
        views: Dict[str, List[np.ndarray]] = {f'{h}x{w}': [] for h, w in self.frame_sizes}
        last = len(video['images']) - 1
        for k in range(t - self.clip_len + 1, t + self.frames_after + 1):
            img = Image.fromarray(_read(video['images'][min(max(k, 0), last)],
                                        cv2.IMREAD_COLOR)[:, :, ::-1])
            for (h, w), frames in zip(self.frame_sizes, views.values()):
                frames.append(np.asarray(img if img.size == (w, h) else
                                         img.resize((w, h), Image.BILINEAR)))
        clips = {key: torch.from_numpy(np.ascontiguousarray(np.stack(frames))).permute(0, 3, 1, 2)
                 for key, frames in views.items()}
        clip = clips if self.several_sizes else next(iter(clips.values()))
        sal = sal.astype(np.float32) / 255.0
        fix = (_read(video['fixation'][t], cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8)
        if sal.shape != fix.shape:
            raise UserError(f'{video["maps"][t]} is {sal.shape}, its fixation map '
                            f'{video["fixation"][t]} is {fix.shape}')
        samples = dict(index=idx, target_pos=self.clip_len - 1)
        if not self.test_mode:
            th, tw = self.target_size
            sal = cv2.resize(sal, (tw, th), interpolation=cv2.INTER_LINEAR)
            fix = cv2.resize(fix, (tw, th), interpolation=cv2.INTER_NEAREST)
        else:
            samples['other_fixation'] = torch.from_numpy(self._other_fixation(idx, v, fix.shape))
        samples.update(map=torch.from_numpy(sal), fixation=torch.from_numpy(fix))
        return dict(inputs=clip, data_samples=samples)
