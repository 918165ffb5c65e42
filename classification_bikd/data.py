"""ImageNet / ImageFolder data with timm's transforms, one augmented view shared by all members."""
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from torch.utils.data import Dataset

from bikd.registry import DATASETS

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


def scan_image_folder(root: str) -> Tuple[List[str], List[Tuple[str, int]]]:
    """``root/<class>/**/<image>`` -> (sorted class names, [(path, class index)])."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f'dataset folder not found: {root} (expected the ImageFolder '
                                'layout <root>/<split>/<class>/<image>)')
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith('.'))
    if not classes:
        raise FileNotFoundError(f'no class folders in {root} (expected <class>/<image> inside)')
    samples = []
    for idx, cls in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(os.path.join(root, cls), followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.join(dirpath, f), idx))
    if not samples:
        raise FileNotFoundError(f'no images ({", ".join(IMG_EXTENSIONS)}) under {root}')
    return classes, samples


def load_rgb(path: str) -> Image.Image:
    """Open an image as RGB; an unreadable file raises an error naming it."""
    try:
        with Image.open(path) as img:
            return img.convert('RGB')
    except Exception as e:  # noqa: BLE001 - PIL raises many types; all mean "cannot read"
        raise OSError(f'cannot read image file {path}: {type(e).__name__}: {e}') from e


@DATASETS.register_module()
class ImageFolderDataset(Dataset):
    """``<data_root>/<split>/<class>/<image>`` (ImageNet's train/val layout).

    Every sample goes through one timm transform (``timm.data.create_transform`` with
    ``transform`` as its keyword arguments, e.g. ``input_size``, ``is_training``,
    ``crop_pct``, ``interpolation``, ``hflip``, ``auto_augment``), without normalisation: the
    result is a ``uint8`` tensor ``[3, H, W]``, and each member normalises and resizes it for
    itself. So all members see the same augmented view.

    Yields ``dict(inputs=uint8 [3, H, W], data_samples=dict(label=int, index=int))``.

    Args:
        data_root: dataset root.
        split: sub-folder (``train``, ``val``).
        transform: ``create_transform`` keyword arguments; ``is_training`` defaults to
            ``split == 'train'``.
        classes: expected class names in order; a mismatch with the folders is an error.
    """

    def __init__(self, data_root: str, split: str, transform: Optional[Dict] = None,
                 classes: Optional[Sequence[str]] = None):
        self.root = os.path.join(data_root, split)
        self.classes, self.samples = scan_image_folder(self.root)
        if classes is not None and list(classes) != self.classes:
            raise ValueError(f'class folders of {self.root} ({len(self.classes)}) differ from '
                             f'the configured classes ({len(classes)})')
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
