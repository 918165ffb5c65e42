#!/usr/bin/env python
"""Write a small synthetic video-saliency set in DHF1K's layout, for CPU runs and tests.

    python tools/make_dhf1k_toy.py --out datasets/dhf1k_toy [--train 24] [--val 4] [--frames 48]

``<out>/{train,val}/<video>/{images,maps,fixation}/%04d.png`` (1-indexed, as DHF1K; train
videos 0001.., val videos numbered after them). Each video has a textured background and one
to three moving discs; observers' fixations fall on the discs (mostly on the fastest one),
and the map is the fixations blurred with a Gaussian, scaled to [0, 255]. Deterministic per
``--seed``.
"""
import argparse
import os
import sys

import cv2
import numpy as np


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script: tools.<module> is this folder's

from tools.demo_data import make_dataset_once  # noqa: E402


def make_video(rng, folder, n_frames, h, w):
    for sub in ('images', 'maps', 'fixation'):
        os.makedirs(os.path.join(folder, sub))
    background = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3)).astype(np.uint8), (0, 0), 4)
    n_obj = rng.integers(1, 4)
    pos = rng.uniform([0.2 * h, 0.2 * w], [0.8 * h, 0.8 * w], (n_obj, 2))
    vel = rng.normal(0, 1.5, (n_obj, 2))
    radius = rng.uniform(0.06, 0.12, n_obj) * min(h, w)
    colour = rng.integers(0, 255, (n_obj, 3))
    for t in range(1, n_frames + 1):
        pos += vel
        for k in range(2):  # bounce off the borders
            limit = (h, w)[k]
            out = (pos[:, k] < 0) | (pos[:, k] > limit - 1)
            vel[out, k] *= -1
            pos[:, k] = np.clip(pos[:, k], 0, limit - 1)
        img = background.copy()
        for (y, x), r, c in zip(pos, radius, colour):
            cv2.circle(img, (int(x), int(y)), int(r), tuple(int(v) for v in c), -1)
        fix = np.zeros((h, w), np.uint8)
        weights = np.linalg.norm(vel, axis=1) + 0.5
        for _ in range(rng.integers(8, 16)):  # one fixation per observer
            k = rng.choice(n_obj, p=weights / weights.sum())
            y, x = pos[k] + rng.normal(0, radius[k] / 3, 2)
            fix[int(np.clip(y, 0, h - 1)), int(np.clip(x, 0, w - 1))] = 255
        sal = cv2.GaussianBlur(fix.astype(np.float32), (0, 0), 0.04 * w)
        sal = (255 * sal / max(sal.max(), 1e-8)).astype(np.uint8)
        cv2.imwrite(os.path.join(folder, 'images', f'{t:04d}.png'), img)
        cv2.imwrite(os.path.join(folder, 'maps', f'{t:04d}.png'), sal)
        cv2.imwrite(os.path.join(folder, 'fixation', f'{t:04d}.png'), fix)


def make_dhf1k_toy(out, n_train=24, n_val=4, n_frames=48, size=(72, 128), seed=0, force=False):
    """Write the set once; one made with other settings is refused unless ``force``."""
    def write(tmp: str) -> dict:
        rng = np.random.default_rng(seed)
        for i in range(1, n_train + n_val + 1):
            split = 'train' if i <= n_train else 'val'
            make_video(rng, os.path.join(tmp, split, f'{i:04d}'), n_frames, *size)
        return {}

    settings = dict(source='tools/make_dhf1k_toy.py', seed=seed, train=n_train, val=n_val,
                    frames=n_frames, size=list(size))
    return make_dataset_once(out, settings, write, force, 'toy.json')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='datasets/dhf1k_toy')
    parser.add_argument('--train', type=int, default=24)
    parser.add_argument("--val", type=int, default=4)
    parser.add_argument('--frames', type=int, default=48)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--force', action='store_true')
    args = parser.parse_args(argv)
    info = make_dhf1k_toy(args.out, args.train, args.val, args.frames, seed=args.seed,
                          force=args.force)
    print(f'{args.out}: {info["train"]} train / {info["val"]} val videos of {info["frames"]} frames')


if __name__ == '__main__':
    sys.exit(main())
