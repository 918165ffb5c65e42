"""ImageNet / ImageFolder data with timm's transforms, one augmented view shared by all members."""
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from torch.utils.data import Dataset

from bikd.data import unreadable_file
from bikd.errors import UserError
from bikd.registry import DATASETS

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


def class_folders(root: str) -> List[str]:
    """The class folders of an ImageFolder split, sorted by name."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f'dataset folder not found: {root} (expected the ImageFolder '
                                'layout <root>/<split>/<class>/<image>)')
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith('.'))
    if not classes:
        raise FileNotFoundError(f'no class folders in {root} (expected <class>/<image> inside)')
    return classes


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _image_files(folder: str, other_classes: Sequence[str], taken: set) -> List[str]:
    """The images under ``folder``, sorted, following links: but not into a folder that
    holds the one being walked (a loop), nor into another class's folder (its images are
    that class's), and each real file once (``taken``, shared by a split's classes)."""
    out = []
    for dirpath, dirnames, files in os.walk(folder, followlinks=True):
        here = os.path.realpath(dirpath)
        kept = []
        for d in sorted(dirnames):
            target = os.path.realpath(os.path.join(dirpath, d))
            if _within(here, target) or any(_within(target, o) for o in other_classes):
                continue
            kept.append(d)
        dirnames[:] = kept
        for f in sorted(files):
            path = os.path.join(dirpath, f)
            real = os.path.realpath(path)
            if f.lower().endswith(IMG_EXTENSIONS) and real not in taken:
                taken.add(real)
                out.append(path)
    return sorted(out)


def scan_image_folder(root: str, classes: Optional[Sequence[str]] = None,
                      classes_from: str = 'the configured classes',
                      require_every_class: bool = False
                      ) -> Tuple[List[str], List[Tuple[str, int]]]:
    """``root/<class>/**/<image>`` -> (class names, [(path, class index)]).

    Labels are the index of the folder's name in ``classes`` (default: the folders' own
    sorted names): a split missing a class keeps every other class's label, and a folder that
    is not among ``classes`` (named by ``classes_from`` in the error) is refused. With
    ``require_every_class`` (the training split) a class folder without images is refused
    too: it would be a class that is never trained."""
    found = class_folders(root)
    classes = list(classes) if classes is not None else found
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise UserError(f'{root}: class folder(s) {unknown} are not among the {len(classes)} '
                        f'classes of {classes_from}; labels are given by class name, so every '
                        'split must use those names (remove or rename the folders)')
    samples, taken, empty = [], set(), []
    real = {c: os.path.realpath(os.path.join(root, c)) for c in found}
    for cls in found:
        others = [r for c, r in real.items() if c != cls]
        mine = _image_files(os.path.join(root, cls), others, taken)
        samples += [(path, classes.index(cls)) for path in mine]
        if not mine:
            empty.append(cls)
    if not samples:
        raise FileNotFoundError(f'no images ({", ".join(IMG_EXTENSIONS)}) under {root}')
    if empty and require_every_class:
        raise UserError(f'{root}: class folder(s) {empty} hold no images '
                        f'({", ".join(IMG_EXTENSIONS)}); each would be a class that is never '
                        'trained. Add its images, or remove the folder (and give `classes` if '
                        'the label space must keep it)')
    return classes, samples


def _wide_to_8bit(img: Image.Image, path: str) -> Image.Image:
    """A greyscale image of more than 8 bits per pixel as 8 bits, by the range its type
    means: 16-bit (``I;16``, and PNG's 16-bit greyscale, which Pillow opens as ``I``) scaled
    from 0..65535; floating point (``F``) from 0..1. Anything else has no range to read it
    in, and is refused naming the file."""
    try:
        wide = np.asarray(img, dtype=np.float64)
    except Exception as e:  # noqa: BLE001 - a file cut short fails only when decoded
        raise unreadable_file(path, e) from e
    low, high = (float(wide.min()), float(wide.max())) if wide.size else (0.0, 0.0)
    if img.mode.startswith('I;16') or (img.mode == 'I' and img.format == 'PNG'
                                       and low >= 0 and high <= 65535):
        scale = 255 / 65535
    elif img.mode == 'F' and np.isfinite(wide).all() and low >= 0 and high <= 1:
        scale = 255.0
    else:
        kind = 'floating-point' if img.mode == 'F' else '32-bit integer'
        expected = 'in 0..1' if img.mode == 'F' else 'of 8 or 16 bits'
        # a data file the suite cannot read, as one it cannot decode (skip_bad_samples skips it)
        raise OSError(f'cannot read image file {path}: a {kind} image with values '
                      f'{low:g}..{high:g}, which has no range to read as 8 bits per channel '
                      f'(save it {expected}, e.g. as an 8-bit PNG)')
    return Image.fromarray(np.round(wide * scale).astype(np.uint8), 'L')


def load_rgb(path: str) -> Image.Image:
    """Open an image as 8-bit RGB; an unreadable file raises an error naming it. Greyscale
    of more than 8 bits is scaled by its type's range (16-bit from 0..65535, floating point
    from 0..1), not clipped at 255; one with no such range is refused naming the file."""
    try:
        img = Image.open(path)
    except Exception as e:  # noqa: BLE001 - PIL raises many types; all mean "cannot read"
        raise unreadable_file(path, e) from e
    with img:
        if img.mode.startswith('I') or img.mode == 'F':
            img = _wide_to_8bit(img, path)  # (its refusal names the file and why)
        try:
            return img.convert('RGB')
        except Exception as e:  # noqa: BLE001 - a file cut short fails only when decoded
            raise unreadable_file(path, e) from e


@DATASETS.register_module()
class ImageFolderDataset(Dataset):
    """``<data_root>/<split>/<class>/<image>`` (ImageNet's train/val layout).

    Every sample goes through one timm transform (``timm.data.create_transform`` with
    ``transform`` as its keyword arguments, e.g. ``input_size``, ``is_training``,
    ``crop_pct``, ``interpolation``, ``hflip``, ``auto_augment``), without normalisation: the
    result is a ``uint8`` tensor ``[3, H, W]``, and each member normalises and resizes it for
    itself. So all members see the same augmented view.

    Yields ``dict(inputs=uint8 [3, H, W], data_samples=dict(label=int, index=int))``.

    Labels are given by class name, one list for every split: ``classes`` if the config gives
    it, else the class folders of ``<data_root>/<class_split>`` (the training split), else the
    split's own folders. So a validation split that lacks a class keeps the other classes'
    labels, and a folder whose name is not a class is an error that names it. The number of
    classes is checked against the members' before anything runs
    (:class:`bikd.engine.hooks.BiKDSummaryHook`).

    Args:
        data_root: dataset root.
        split: sub-folder (``train``, ``val``).
        transform: ``create_transform`` keyword arguments; ``is_training`` defaults to
            ``split == 'train'``.
        classes: the class names in label order.
        class_split: the split whose class folders are the label space when ``classes`` is
            not given.
    """

    #: where its data is, for the run's fingerprint (:func:`bikd.data.dataset_fingerprint`)
    source_arguments = ('data_root', 'split')

    def __init__(self, data_root: str, split: str, transform: Optional[Dict] = None,
                 classes: Optional[Sequence[str]] = None, class_split: str = 'train'):
        self.root = os.path.join(data_root, split)
        source = 'the config (classes)'
        if classes is None and split != class_split and \
                os.path.isdir(os.path.join(data_root, class_split)):
            classes = class_folders(os.path.join(data_root, class_split))
            source = f'the {class_split} split ({os.path.join(data_root, class_split)})'
        self.classes, self.samples = scan_image_folder(
            self.root, classes, source, require_every_class=split == class_split)
        kwargs = dict(input_size=224, is_training=split == 'train')
        kwargs.update(transform or {})
        # use_prefetcher=True makes timm end the pipeline with a uint8 array, unnormalised.
        kwargs.update(use_prefetcher=True)
        self.transform = create_transform(**kwargs)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        path, label = self.samples[index]
        img = self.transform(load_rgb(path))
        if isinstance(img, np.ndarray):
            img = torch.from_numpy(img)
        return dict(inputs=img, data_samples=dict(label=label, index=index))

    @property
    def metainfo(self) -> dict:
        return dict(classes=tuple(self.classes))
