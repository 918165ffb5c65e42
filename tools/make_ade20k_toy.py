#!/usr/bin/env python
"""Write a small synthetic street-scene dataset in ADE20K's layout, for CPU runs and tests.

    python tools/make_ade20k_toy.py --out datasets/ade20k_toy [--train 160] [--val 40] [--size 128]

Layout (as the release): ``<out>/ADEChallengeData2016/images/{training,validation}/*.jpg`` and
``annotations/{training,validation}/*.png`` with ADE20K's label ids (0 = "other", ignored with
``reduce_zero_label``; 1..150 the classes), and ``annotations_detectron2/`` with the labels
detectron2 reads (0..149, 255 = "other"), as Mask2Former's ``prepare_ade20k_sem_seg.py`` writes
them; ``DETECTRON2_DATASETS=<out>`` then makes detectron2's ``ade20k_sem_seg_{train,val}`` this
set. Where Mask2Former is installed, also ADE20K's panoptic and instance layout, as its
``prepare_ade20k_pan_seg.py`` / ``prepare_ade20k_ins_seg.py`` write them:
``ade20k_panoptic_{train,val}/*.png`` + ``ade20k_panoptic_{train,val}.json`` (every person and
car its own segment, every other class one segment per image) and
``ade20k_instance_{train,val}.json`` (COCO instances of the things). Scenes have sky, one kind of ground, buildings with windows, trees, people and cars in
ADE20K's classes, textured and noisy, plus a few "other" blobs. Images vary in size around
``--size`` (short side) and aspect ratio. Deterministic per ``--seed``.
"""
import argparse
import json
import os
import sys

import numpy as np
from PIL import Image


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script: tools.<module> is this folder's

from tools.demo_data import make_dataset_once  # noqa: E402

# ADE20K ids (objectInfo150): the classes the toy scenes use.
SKY, BUILDING, FLOOR, TREE, ROAD, GRASS, SIDEWALK, PERSON, EARTH, CAR = 3, 2, 4, 5, 7, 10, 12, 13, 14, 21
GROUNDS = {ROAD: (105, 105, 110), GRASS: (70, 140, 60), SIDEWALK: (170, 160, 150),
           EARTH: (130, 100, 70), FLOOR: (150, 110, 80)}


def _jitter(rng, colour, amount=25):
    return np.clip(np.array(colour) + rng.integers(-amount, amount + 1, 3), 0, 255)


def _ellipse(h, w, cy, cx, ry, rx):
    y, x = np.ogrid[:h, :w]
    return ((y - cy) / max(ry, 1))**2 + ((x - cx) / max(rx, 1))**2 <= 1


#: the toy classes that are things in ADE20K's panoptic annotations (one segment per object);
#: the others are stuff (one segment per class and image)
THINGS = (PERSON, CAR)


def _paint_things(rng, paint, h, w, horizon):
    """Cars, people and unlabeled clutter, painted over a scene (``paint(mask, label, ...)``)."""
    for _ in range(rng.integers(0, 3)):  # cars on the ground
        cw, ch = int(w * rng.uniform(0.12, 0.22)), int(h * rng.uniform(0.06, 0.1))
        y0, x0 = rng.integers(horizon, max(h - ch, horizon + 1)), rng.integers(0, max(w - cw, 1))
        m = np.zeros((h, w), bool)
        m[y0:y0 + ch, x0:x0 + cw] = True
        m |= _ellipse(h, w, y0, x0 + cw / 2, ch * 0.6, cw * 0.3) & (np.arange(h)[:, None] < y0)
        paint(m, CAR, rng.integers(30, 226, 3), texture=8)
    for _ in range(rng.integers(0, 4)):  # people: body and head
        ph = int(h * rng.uniform(0.12, 0.25))
        cx, foot = rng.integers(0, w), rng.integers(horizon, h)
        body = _ellipse(h, w, foot - ph * 0.4, cx, ph * 0.4, ph * 0.12)
        head = _ellipse(h, w, foot - ph * 0.88, cx, ph * 0.1, ph * 0.08)
        paint(body, PERSON, rng.integers(20, 200, 3), texture=10)
        paint(head, PERSON, (200, 160, 130), texture=6, same_object=True)
    for _ in range(rng.integers(0, 3)):  # unlabeled clutter: "other" (0)
        paint(_ellipse(h, w, rng.integers(0, h), rng.integers(0, w), rng.integers(2, 8),
                       rng.integers(2, 8)), 0, rng.integers(0, 256, 3), texture=30)


def make_scene(rng, short_side, with_instances=False):
    """One image ``[H, W, 3]`` uint8 and its label map ``[H, W]`` uint8 (ADE20K ids); with
    ``with_instances`` also an instance map ``[H, W]`` int32 (0: no thing; each car and person
    its own id). The instances take no random numbers: the image and labels are the same
    either way."""
    aspect = rng.uniform(1.0, 1.5)
    h, w = (short_side, int(short_side * aspect)) if rng.random() < 0.7 else \
        (int(short_side * aspect), short_side)
    img = np.zeros((h, w, 3), np.float32)
    lab = np.zeros((h, w), np.uint8)
    inst = np.zeros((h, w), np.int32)
    objects = [0]

    def paint(mask, label, colour, texture=12, same_object=False):
        img[mask] = _jitter(rng, colour) + rng.normal(0, texture, (int(mask.sum()), 3))
        lab[mask] = label
        if label in THINGS:
            objects[0] += 0 if same_object else 1
            inst[mask] = objects[0]
        else:
            inst[mask] = 0

    horizon = int(h * rng.uniform(0.3, 0.55))
    sky = np.zeros((h, w), bool)
    sky[:horizon] = True
    paint(sky, SKY, (120, 170, 230), texture=6)
    img[:horizon] += np.linspace(-30, 20, horizon)[:, None, None]  # brighter towards the horizon
    ground = ~sky
    g = list(GROUNDS)[rng.integers(len(GROUNDS))]
    paint(ground, g, GROUNDS[g])
    for _ in range(rng.integers(1, 4)):  # buildings with a window grid
        bw, bh = int(w * rng.uniform(0.15, 0.35)), int(h * rng.uniform(0.2, 0.45))
        x0 = rng.integers(0, max(w - bw, 1))
        m = np.zeros((h, w), bool)
        m[max(horizon - bh, 0):horizon + 2, x0:x0 + bw] = True
        paint(m, BUILDING, (140, 120, 110))
        win = m.copy()
        win[::6] = False
        win[:, ::6] = False
        img[win & (np.arange(h)[:, None] % 6 < 3) & (np.arange(w)[None] % 6 < 3)] *= 0.55
    for _ in range(rng.integers(0, 3)):  # trees: trunk + canopy
        cx, r = rng.integers(0, w), int(h * rng.uniform(0.06, 0.12))
        cy = horizon - rng.integers(0, r + 1)
        trunk = np.zeros((h, w), bool)
        trunk[cy:min(horizon + r, h), max(cx - r // 5, 0):cx + r // 5 + 1] = True
        paint(trunk, TREE, (90, 60, 40))
        paint(_ellipse(h, w, cy, cx, r, r * 1.1), TREE, (40, 110, 45), texture=20)
    _paint_things(rng, paint, h, w, horizon)
    img += rng.normal(0, 4, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return (img, lab, inst) if with_instances else (img, lab)


def panoptic_record(lab, inst, image_id, file_name):
    """A scene's panoptic PNG (COCO's RGB id encoding), its ``segments_info`` (ADE20K's
    contiguous category ids 0..149) and its thing instances as COCO annotations (uncompressed
    RLE), as Mask2Former's ``prepare_ade20k_pan_seg.py`` / ``prepare_ade20k_ins_seg.py``
    write them."""
    h, w = lab.shape
    ids = np.zeros((h, w), np.int64)
    segments, instances = [], []
    for cls in np.unique(lab):
        if cls == 0:
            continue  # "other": void
        parts = [inst == i for i in np.unique(inst[lab == cls]) if i > 0] \
            if cls in THINGS else [lab == cls]
        for mask in parts:
            mask = mask & (lab == cls)
            if not mask.any():
                continue
            seg_id = len(segments) + 1
            ids[mask] = seg_id
            ys, xs = np.nonzero(mask)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                    int(ys.max() - ys.min() + 1)]
            segments.append(dict(id=seg_id, category_id=int(cls) - 1, iscrowd=0,
                                 area=int(mask.sum()), bbox=bbox))
            if cls in THINGS:
                instances.append(dict(image_id=image_id, category_id=int(cls) - 1, iscrowd=0,
                                      area=int(mask.sum()), bbox=bbox,
                                      segmentation=dict(size=[h, w], counts=rle(mask))))
    png = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    return png, dict(image_id=image_id, file_name=file_name, segments_info=segments), instances


def rle(mask):
    """COCO's uncompressed run-length encoding: run lengths of the column-major mask,
    starting with a (possibly empty) run of zeros."""
    flat = mask.T.ravel().astype(np.uint8)
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def ade20k_categories():
    """ADE20K's 150 panoptic categories (id, name, isthing, color) and its 100 instance
    categories (id, name), as Mask2Former lists them, or ``None`` where Mask2Former is not
    installed (no panoptic layout is written then)."""
    try:
        sys.path.insert(0, os.path.join(ROOT, 'plugins'))
        from mask2former_bikd import d2
        d2.import_mask2former()
        from mask2former.data.datasets.register_ade20k_instance import ADE_CATEGORIES
        from mask2former.data.datasets.register_ade20k_panoptic import ADE20K_150_CATEGORIES
    except ImportError:
        return None
    return ([dict(id=c['id'], name=c['name'], isthing=c['isthing'], color=c['color'])
             for c in ADE20K_150_CATEGORIES],
            [dict(id=c['id'], name=c['name']) for c in ADE_CATEGORIES])


def make_ade20k_toy(out: str, n_train: int = 160, n_val: int = 40, size: int = 128,
                    seed: int = 0, force: bool = False) -> dict:
    """Write the set once; one made with other settings is refused unless ``force``."""
    categories, thing_categories = ade20k_categories() or (None, None)

    def write(tmp: str) -> dict:
        rng = np.random.default_rng(seed)
        counts = np.zeros(151, np.int64)
        root = os.path.join(tmp, 'ADEChallengeData2016')
        for split, short, prefix, n in (('training', 'train', 'ADE_train', n_train),
                                        ('validation', 'val', 'ADE_val', n_val)):
            for sub in ('images', 'annotations', 'annotations_detectron2'):
                os.makedirs(os.path.join(root, sub, split))
            if categories:
                os.makedirs(os.path.join(root, f'ade20k_panoptic_{short}'))
            images, panoptic, instances = [], [], []
            for i in range(1, n + 1):
                img, lab, inst = make_scene(rng, size, with_instances=True)
                counts += np.bincount(lab.ravel(), minlength=151)
                stem = f'{prefix}_{i:08d}'
                Image.fromarray(img).save(os.path.join(root, 'images', split, stem + '.jpg'),
                                          quality=90)
                Image.fromarray(lab).save(os.path.join(root, 'annotations', split, stem + '.png'))
                # detectron2's layout beside it, as Mask2Former's prepare_ade20k_sem_seg.py
                # writes it: labels 0..149, "other" (0) as 255
                Image.fromarray((lab.astype(np.int16) - 1).astype(np.uint8)).save(
                    os.path.join(root, 'annotations_detectron2', split, stem + '.png'))
                if categories:
                    png, record, things = panoptic_record(lab, inst, i, stem + '.png')
                    Image.fromarray(png).save(
                        os.path.join(root, f'ade20k_panoptic_{short}', stem + '.png'))
                    images.append(dict(id=i, file_name=stem + '.jpg', width=lab.shape[1],
                                       height=lab.shape[0]))
                    panoptic.append(record)
                    instances += things
            if categories:
                for k, ann in enumerate(instances, start=1):
                    ann['id'] = k
                with open(os.path.join(root, f'ade20k_panoptic_{short}.json'), 'w') as f:
                    json.dump(dict(images=images, annotations=panoptic,
                                   categories=categories), f)
                with open(os.path.join(root, f'ade20k_instance_{short}.json'), 'w') as f:
                    json.dump(dict(images=images, annotations=instances,
                                   categories=thing_categories), f)
        present = np.flatnonzero(counts)
        return dict(label_ids=[int(c) for c in present],
                    pixel_share={int(c): float(counts[c] / counts.sum()) for c in present})

    layouts = ['mmseg', 'detectron2'] + (['ade20k_panoptic', 'ade20k_instance']
                                         if categories else [])
    settings = dict(source='tools/make_ade20k_toy.py', seed=seed, train=n_train, val=n_val,
                    short_side=size, layouts=layouts)
    return make_dataset_once(out, settings, write, force, 'ADEChallengeData2016/toy.json')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='datasets/ade20k_toy')
    parser.add_argument('--train', type=int, default=160)
    parser.add_argument('--val', type=int, default=40)
    parser.add_argument('--size', type=int, default=128, help='short side of the images')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--force', action='store_true')
    args = parser.parse_args(argv)
    info = make_ade20k_toy(args.out, args.train, args.val, args.size, args.seed, args.force)
    print(f'{args.out}/ADEChallengeData2016: {info["train"]} training / {info["val"]} validation '
          f'images, ADE20K label ids {info["label_ids"]}')


if __name__ == '__main__':
    sys.exit(main())
