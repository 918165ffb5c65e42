"""mmseg pipeline steps of the suite: loading that names a file it cannot read
(``bikd.LoadImageFromFile``, ``bikd.LoadAnnotations``) and a check of every segmentation
annotation as it is loaded (its size equals its image's, its labels lie in the class range, or
the error names both files)."""
import numpy as np
from mmcv.transforms import LoadImageFromFile as _LoadImage
from mmseg.datasets.transforms import LoadAnnotations as _LoadAnnotations

from bikd.data import unreadable_file
from bikd.errors import UserError
from bikd.registry import TRANSFORMS


@TRANSFORMS.register_module()
class LoadImageFromFile(_LoadImage):
    """mmcv's ``LoadImageFromFile``, except that an image it cannot read (cut short, empty, a
    dangling link) raises ``OSError`` naming the file: mmcv's own is an ``AssertionError``, an
    OpenCV error or PIL's "cannot identify image file <BytesIO>", which name none. So a run
    stops with the file's name (and ``skip_bad_samples=N`` can skip it). Use as
    ``type: bikd.LoadImageFromFile`` in an mmseg pipeline."""

    def transform(self, results: dict):
        try:
            return super().transform(results)
        except Exception as e:  # noqa: BLE001 - every decoder's failure means "cannot read"
            raise unreadable_file(results['img_path'], e) from e


@TRANSFORMS.register_module()
class LoadAnnotations(_LoadAnnotations):
    """mmseg's ``LoadAnnotations``, except that an annotation it cannot read raises ``OSError``
    naming the file (and its image). Use as ``type: bikd.LoadAnnotations``."""

    def transform(self, results: dict):
        try:
            return super().transform(results)
        except Exception as e:  # noqa: BLE001 - as above
            error = unreadable_file(results.get('seg_map_path', '?'), e, kind='annotation')
            raise type(error)(f'{error} (image {results.get("img_path")})') from e


@TRANSFORMS.register_module()
class CheckSegAnnotation:
    """Place right after ``LoadAnnotations`` (as ``type: bikd.CheckSegAnnotation`` in an mmseg
    pipeline).

    Args:
        num_classes: labels must lie in ``[0, num_classes)`` after ``reduce_zero_label``...
        ignore_index: ... or equal this value (ignored pixels).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)

    def __call__(self, results: dict) -> dict:
        gt = results['gt_seg_map']
        ann, img = results.get('seg_map_path'), results.get('img_path')
        h, w = results.get('ori_shape') or results['img'].shape[:2]
        if tuple(gt.shape[:2]) != (h, w):
            raise UserError(f'annotation {ann} is {gt.shape[1]}x{gt.shape[0]} pixels but its '
                            f'image {img} is {w}x{h}; an annotation must match its image')
        bad = np.unique(gt[(gt >= self.num_classes) & (gt != self.ignore_index)])
        if bad.size:
            reduced = ' after reduce_zero_label' if results.get('reduce_zero_label') else ''
            raise UserError(f'annotation {ann} (image {img}) has labels {bad[:8].tolist()} '
                            f'outside the {self.num_classes} classes (0..{self.num_classes - 1}'
                            f', {self.ignore_index} = ignore){reduced}; is it an annotation of '
                            'another dataset?')
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(num_classes={self.num_classes})'
