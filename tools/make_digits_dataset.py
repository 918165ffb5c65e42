#!/usr/bin/env python
"""Write scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes) as PNG files in
the ImageFolder layout: ``<out>/{train,val}/<digit>/<index>.png``.

    python tools/make_digits_dataset.py --out datasets/digits [--val-fraction 0.3]

The split is stratified and fixed by ``--seed``. An existing, complete dataset made with the
same settings is kept; one made with other settings is refused unless ``--force``.
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script: tools.<module> is this folder's

from tools.demo_data import make_dataset_once  # noqa: E402


def make_digits(out: str, val_fraction: float = 0.3, seed: int = 0, force: bool = False) -> dict:
    """Write the set once; one made with other settings is refused unless ``force``."""
    from sklearn.datasets import load_digits

    def write(tmp: str) -> dict:
        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # values 0..16
        rng = np.random.default_rng(seed)
        split = np.empty(len(images), dtype=object)
        for c in range(10):
            idx = rng.permutation(np.flatnonzero(digits.target == c))
            n_val = int(round(val_fraction * len(idx)))
            split[idx[:n_val]] = 'val'
            split[idx[n_val:]] = 'train'
        for i, (img, label) in enumerate(zip(images, digits.target)):
            folder = os.path.join(tmp, split[i], str(label))
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(img, mode='L').save(os.path.join(folder, f'{i:04d}.png'))
        return dict(classes=[str(c) for c in range(10)], train=int((split == 'train').sum()),
                    val=int((split == 'val').sum()), image_size=[8, 8])

    settings = dict(source='sklearn.datasets.load_digits', val_fraction=val_fraction, seed=seed)
    return make_dataset_once(out, settings, write, force, 'dataset.json')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='datasets/digits')
    parser.add_argument('--val-fraction', type=float, default=0.3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--force', action='store_true', help='rewrite an existing dataset')
    args = parser.parse_args(argv)
    info = make_digits(args.out, args.val_fraction, args.seed, args.force)
    print(f'digits in {args.out}: {info["train"]} train / {info["val"]} val images')


if __name__ == '__main__':
    sys.exit(main())
