"""Hugging Face image processors reproduced on the shared batch: :class:`ImagePreprocessing`
applies a ``transformers`` image processor's steps (resize, crop, rescale and normalise, pad)
to a batch of tensors as the processor's torchvision backend does, every option of the
processor classes of the listed models honoured, or refused in one line naming it.
"""
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ... import compat
from ...errors import UserError
from .weights import require_transformers


#: PIL's resampling filters (the processors' ``resample``), by number
RESAMPLE_NAMES = {0: 'nearest', 1: 'lanczos', 2: 'bilinear', 3: 'bicubic', 4: 'box', 5: 'hamming'}
RESAMPLE_NUMBERS = {name: number for number, name in RESAMPLE_NAMES.items()}

#: the steps of transformers' own torchvision backend (``TorchvisionBackend._preprocess``):
#: resize by ``size``, centre crop, rescale and normalise (fused), pad bottom/right (do_pad)
BACKEND_STEPS = dict(resize='backend', crop=True, scale='backend', pad='backend')
#: the processor classes of transformers whose steps differ from the backend's, and how
#: (their torchvision classes' ``_preprocess`` and ``resize``, transformers 5.24)
OWN_STEPS = {
    # shortest_edge < 384: resize the short side to shortest_edge / crop_pct, crop a
    # shortest_edge square; else warp to a square; do_pad is not read
    'ConvNextImageProcessor': dict(resize='convnext', pad=None),
    # crop_pct set: resize to size / crop_pct (short side for a square size), then crop_size
    'PoolFormerImageProcessor': dict(resize='poolformer'),
    # shortest_edge: the short side to int(256 / 224 * shortest_edge)
    'LevitImageProcessor': dict(resize='levit'),
    # rescale_offset (x / 127.5 - 1 instead of x / 255), include_top (divided by std again)
    'EfficientNetImageProcessor': dict(scale='efficientnet', pad=None),
    # no normalisation whatever do_normalize says; do_flip_channel_order: RGB -> BGR
    'MobileViTImageProcessor': dict(scale='mobilevit', pad=None),
    'BeitImageProcessor': dict(pad=None),
    'SegformerImageProcessor': dict(crop=False, pad=None),
    # keep_aspect_ratio / ensure_multiple_of in the resize; do_pad: centred, to a multiple of
    # size_divisor
    'DPTImageProcessor': dict(resize='dpt', pad='centre'),
    # size rounded up to a multiple of size_divisor; padded bottom/right to pad_size or the
    # batch's largest image whatever do_pad says
    'Mask2FormerImageProcessor': dict(resize='size_divisor', crop=False, pad='pad_size'),
    'MaskFormerImageProcessor': dict(resize='size_divisor', crop=False, pad='pad_size'),
}
def _torchvision_class(processor):
    """The torchvision-backend class of ``processor``'s kind (``ViTImageProcessor`` for a
    ``ViTImageProcessorPil``): the one whose steps the member reproduces."""
    transformers = require_transformers()
    cls = type(processor)
    if cls.__module__.startswith('transformers.'):
        for suffix in ('Pil', 'Fast'):
            if cls.__name__.endswith(suffix):
                twin = getattr(transformers, cls.__name__[:-len(suffix)], None)
                if isinstance(twin, type):
                    return twin
    return cls


def _size(value) -> Optional[Dict[str, int]]:
    """A processor's ``size`` / ``crop_size`` / ``pad_size`` (a ``SizeDict`` or a dict) as a
    dict of its set keys."""
    if value is None:
        return None
    items = dict(value) if not isinstance(value, dict) else value
    return {k: int(v) for k, v in items.items() if v is not None} or None


def _shortest_edge(hw: Sequence[int], edge: int) -> Tuple[int, int]:
    """The size whose short side is ``edge``, the long side truncated (transformers'
    ``get_resize_output_image_size`` with ``default_to_square=False``)."""
    h, w = hw
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = edge, int(edge * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def _dpt_size(hw: Sequence[int], size: Dict[str, int], keep_aspect_ratio: bool,
              multiple: int) -> Tuple[int, int]:
    """DPT's resize: to ``size``, or with ``keep_aspect_ratio`` by the scale nearer to 1 of
    the two, each side rounded to a multiple of ``ensure_multiple_of`` (its
    ``get_resize_output_image_size``)."""
    def constrain(value):
        x = round(value / multiple) * multiple
        return x if x >= 0 else math.ceil(value / multiple) * multiple

    (h, w), (oh, ow) = hw, (size['height'], size['width'])
    scale_h, scale_w = oh / h, ow / w
    if keep_aspect_ratio:
        if abs(1 - scale_w) < abs(1 - scale_h):
            scale_h = scale_w
        else:
            scale_w = scale_h
    return constrain(scale_h * h), constrain(scale_w * w)


class ImagePreprocessing:
    """A ``transformers`` image processor's preprocessing, applied by the member to the shared
    batch: ``uint8`` RGB images ``[N, 3, H, W]`` in, the model's ``pixel_values`` out, equal
    (to float rounding) to what the processor's torchvision backend (``use_fast=True``, the
    class ``AutoImageProcessor`` loads) gives for the same images. So a member sees its images
    as its model was trained to, whatever the processor's class does on top of the backend.

    The steps, in the processor's order and with its own operations (``torchvision``'s
    antialiased resize of ``uint8`` images, which rounds back to ``uint8``; sizes truncated as
    transformers truncates them):

    - resize (``do_resize``, ``size`` as ``height``/``width``, ``shortest_edge`` with or
      without ``longest_edge``, ``max_height``/``max_width``; ``resample`` nearest, bilinear,
      bicubic, lanczos as the backend takes it) and the class's own rules: ``crop_pct``
      (ConvNeXt, PoolFormer), LeViT's 256/224, DPT's ``keep_aspect_ratio`` and
      ``ensure_multiple_of``, (Mask)Former's ``size_divisor``;
    - centre crop (``do_center_crop``, ``crop_size``; padded where the image is smaller);
    - rescale (``do_rescale``, ``rescale_factor``, EfficientNet's ``rescale_offset``) and
      normalise (``do_normalize``, ``image_mean``, ``image_std``; EfficientNet's
      ``include_top``; MobileViT normalises never), MobileViT's ``do_flip_channel_order``;
    - pad: ``do_pad`` to ``pad_size`` (bottom/right), DPT's centred padding to a multiple of
      ``size_divisor``, (Mask)Former's ``pad_size``; padding to the batch's largest image is
      the member's batching.

    An option the class does not read (``do_pad`` of ConvNeXt, ``do_center_crop`` of
    SegFormer, ...) is left unread here too; ``do_convert_rgb``, ``default_to_square`` (already
    in ``size``), ``data_format``, ``device`` and the like change nothing in the values of the
    suite's 3-channel images; ``do_reduce_labels``, ``ignore_index`` and ``num_labels`` concern
    annotation maps (the segmentation member's labels). A processor class whose steps are not
    these (its own ``resize`` or ``_preprocess`` beyond the classes above, a remote-code
    processor), or an option value these steps cannot reproduce, is refused in one line naming
    it (``hint`` says what to do instead). Images given as floats are taken as [0, 1] (scaled
    to 0..255, not rounded after resizing).

    Attributes:
        processor: the image processor.
        input_size: ``(H, W)`` of the model's input for a square image (the crop's, else the
            resize's; 224 x 224 for a processor that neither resizes nor crops).
        mean, std: the normalisation of [0, 1] images that rescale, normalise (and
            EfficientNet's offset and include_top) amount to, per channel.
        interpolation: the resize filter's name.
        reduces_labels: the processor's ``do_reduce_labels`` (annotation maps only).
    """

    def __init__(self, processor, owner: str, hint: str = ''):
        self.processor, self.owner, self.hint = processor, owner, hint
        cls = _torchvision_class(processor)
        self.kind = cls.__name__
        if self.kind in OWN_STEPS and cls.__module__.startswith('transformers.'):
            self.steps = {**BACKEND_STEPS, **OWN_STEPS[self.kind]}
        else:
            own = compat.processor_own_methods(cls)
            if own:
                self.refuse(f'prepares images in its own way (its own {", ".join(own)}), '
                            'which the member does not reproduce')
            self.steps = dict(BACKEND_STEPS)
        get = lambda key, default=None: getattr(processor, key, default)  # noqa: E731
        self.do_resize = bool(get('do_resize'))
        self.size = _size(get('size'))
        self.resample = self._resample(get('resample'))
        self.crop_pct = get('crop_pct')
        self.keep_aspect_ratio = bool(get('keep_aspect_ratio'))
        self.ensure_multiple_of = int(get('ensure_multiple_of') or 1)
        self.size_divisor = get('size_divisor')
        self.do_center_crop = bool(get('do_center_crop')) and self.steps['crop']
        self.crop_size = _size(get('crop_size'))
        self.do_rescale = bool(get('do_rescale'))
        self.rescale_factor = get('rescale_factor')
        self.rescale_offset = bool(get('rescale_offset')) and self.steps['scale'] == 'efficientnet'
        self.include_top = bool(get('include_top')) and self.steps['scale'] == 'efficientnet'
        self.do_normalize = bool(get('do_normalize')) and self.steps['scale'] != 'mobilevit'
        self.image_mean, self.image_std = (self._channels('image_mean', get('image_mean')),
                                           self._channels('image_std', get('image_std')))
        self.flip_channel_order = bool(get('do_flip_channel_order')) and \
            self.steps['scale'] == 'mobilevit'
        self.do_pad = bool(get('do_pad')) if self.steps['pad'] in ('backend', 'centre') else \
            self.steps['pad'] == 'pad_size'
        self.pad_size = _size(get('pad_size')) if self.steps['pad'] in ('backend', 'pad_size') \
            else None
        self.reduces_labels = bool(get('do_reduce_labels'))
        self._check()
        self.input_size = self.output_size((224, 224))
        self.interpolation = RESAMPLE_NAMES[self.resample]
        # the steps on values are per channel x -> a x + b of [0, 1] images: as mean and std
        a, b = [255.0] * 3, [0.0] * 3
        if self.do_rescale:
            a = [v * float(self.rescale_factor) for v in a]
            b = [-1.0 if self.rescale_offset else 0.0] * 3
        for divides, mean, std in ((self.do_normalize, self.image_mean, self.image_std),
                                   (self.include_top, [0.0] * 3, self.image_std)):
            if divides:
                a = [v / s for v, s in zip(a, std)]
                b = [(v - m) / s for v, m, s in zip(b, mean, std)]
        self.mean, self.std = [-v / u for u, v in zip(a, b)], [1 / u for u in a]

    # ------------------------------------------------------------------ reading the options
    def refuse(self, what: str):
        raise UserError(f'member {self.owner!r}: its image processor '
                        f'{type(self.processor).__name__} {what}'
                        + (f'; {self.hint}' if self.hint else ''))

    def _resample(self, value) -> int:
        if value is None:
            return 2  # the backend's default
        name = getattr(value, 'value', value)
        number = RESAMPLE_NUMBERS.get(name, name) if isinstance(name, str) else name
        if number not in (0, 1, 2, 3):
            self.refuse(f'resizes with resample={value!r} '
                        f'({RESAMPLE_NAMES.get(number, "unknown")}), which torchvision does '
                        'not apply to tensors; the member resizes with nearest (0), lanczos '
                        '(1), bilinear (2) or bicubic (3)')
        return int(number)

    def _channels(self, key: str, value) -> Optional[List[float]]:
        if value is None:
            return None
        values = [float(value)] * 3 if isinstance(value, (int, float)) else \
            [float(v) for v in value]
        if len(values) != 3:
            self.refuse(f'has {key}={list(values)}, not one value per RGB channel')
        return values

    def _check(self) -> None:
        """Refuse option values the steps cannot reproduce, in one line naming the option."""
        size, rule = self.size or {}, self.steps['resize']
        if self.do_resize:
            keys = set(size)
            needs = {'convnext': [{'shortest_edge'}],
                     'dpt': [{'height', 'width'}],
                     'levit': [{'shortest_edge'}, {'height', 'width'}],
                     'size_divisor': [{'shortest_edge', 'longest_edge'},
                                      {'max_height', 'max_width'}, {'height', 'width'}]}.get(
                rule, [{'shortest_edge'}, {'max_height', 'max_width'}, {'height', 'width'}])
            if not any(n <= keys for n in needs):
                self.refuse(f'has size={size}, which its resize does not take (it takes '
                            + ' or '.join('/'.join(sorted(n)) for n in needs) + ')')
            if rule == 'convnext' and size['shortest_edge'] < 384 and not self.crop_pct:
                self.refuse(f'has crop_pct={self.crop_pct!r}, which its resize divides by')
        if self.do_center_crop and not {'height', 'width'} <= set(self.crop_size or {}):
            self.refuse(f'crops (do_center_crop) to crop_size={self.crop_size}, not a '
                        'height and width')
        if self.do_rescale and not self.rescale_factor:
            self.refuse(f'rescales (do_rescale) by rescale_factor={self.rescale_factor!r}')
        if self.do_normalize and (self.image_mean is None or self.image_std is None):
            self.refuse('normalises (do_normalize) without image_mean and image_std')
        if self.include_top and self.image_std is None:
            self.refuse('divides by image_std (include_top) without image_std')
        if self.steps['pad'] == 'centre' and self.do_pad and not self.size_divisor:
            self.refuse(f'pads (do_pad) to a multiple of size_divisor={self.size_divisor!r}')
        if self.pad_size and self.do_pad and not {'height', 'width'} <= set(self.pad_size):
            self.refuse(f'pads to pad_size={self.pad_size}, not a height and width')

    # ------------------------------------------------------------------ sizes
    def resized_size(self, hw: Sequence[int]) -> Tuple[int, int]:
        """The size the resize gives an image of ``hw`` (before any crop)."""
        from transformers.image_transforms import get_size_with_aspect_ratio
        from transformers.image_utils import get_image_size_for_max_height_width
        size, rule, hw = self.size, self.steps['resize'], tuple(int(v) for v in hw)
        if rule == 'convnext':
            edge = size['shortest_edge']
            return _shortest_edge(hw, int(edge / self.crop_pct)) if edge < 384 else (edge, edge)
        if rule == 'poolformer' and self.crop_pct is not None:
            if size.get('shortest_edge'):
                return _shortest_edge(hw, int(size['shortest_edge'] / self.crop_pct))
            if size['height'] == size['width']:
                return _shortest_edge(hw, int(size['height'] / self.crop_pct))
            return int(size['height'] / self.crop_pct), int(size['width'] / self.crop_pct)
        if rule == 'levit' and size.get('shortest_edge'):
            return _shortest_edge(hw, int((256 / 224) * size['shortest_edge']))
        if rule == 'dpt':
            return _dpt_size(hw, size, self.keep_aspect_ratio, self.ensure_multiple_of)
        if size.get('shortest_edge') and size.get('longest_edge'):
            out = get_size_with_aspect_ratio(hw, size['shortest_edge'], size['longest_edge'])
        elif size.get('shortest_edge') and rule != 'size_divisor':
            out = _shortest_edge(hw, size['shortest_edge'])
        elif size.get('max_height') and size.get('max_width'):
            out = get_image_size_for_max_height_width(hw, size['max_height'], size['max_width'])
        else:
            out = (size['height'], size['width'])
        if rule == 'size_divisor' and self.size_divisor:
            d = int(self.size_divisor)
            out = (int(math.ceil(out[0] / d) * d), int(math.ceil(out[1] / d) * d))
        return int(out[0]), int(out[1])

    def output_size(self, hw: Sequence[int]) -> Tuple[int, int]:
        """The size of the model's input for an image of ``hw``."""
        out = tuple(int(v) for v in hw)
        if self.do_resize:
            out = self.resized_size(out)
            if self.steps['resize'] == 'convnext' and self.size['shortest_edge'] < 384:
                out = (self.size['shortest_edge'], ) * 2
        if self.do_center_crop:
            out = (self.crop_size['height'], self.crop_size['width'])
        if self.do_pad and self.steps['pad'] == 'centre':
            d = int(self.size_divisor)
            out = tuple(int(math.ceil(v / d) * d) for v in out)
        elif self.do_pad and self.pad_size:
            out = (self.pad_size['height'], self.pad_size['width'])
        return out

    # ------------------------------------------------------------------ the steps
    def __call__(self, images: Tensor, geometry: bool = True) -> Tensor:
        """``[N, 3, H, W]`` RGB images (``uint8``, or floats in [0, 1]) -> ``pixel_values``
        ``[N, 3, h, w]`` (float32). ``geometry=False``: only the steps on values (rescale,
        normalise, channel order), for images already at the model's size and crop (the
        suite's training crops of segmentation)."""
        x = images if images.dtype == torch.uint8 else images.float() * 255.0
        if geometry:
            if self.do_resize:
                x = self._resize(x)
            if self.do_center_crop:
                x = centre_crop(x, self.crop_size['height'], self.crop_size['width'])
        x = self._scale(x)
        if geometry and self.do_pad:
            x = self._pad(x)
        return x if x.is_floating_point() else x.float()

    def _resize(self, x: Tensor) -> Tensor:
        out = self.resized_size(x.shape[-2:])
        x = self.resize_to(x, out)
        if self.steps['resize'] == 'convnext' and self.size['shortest_edge'] < 384:
            x = centre_crop(x, self.size['shortest_edge'], self.size['shortest_edge'])
        return x

    def resize_to(self, x: Tensor, size: Sequence[int]) -> Tensor:
        """``x`` resized to ``size`` with the processor's filter, as the torchvision backend
        resizes (antialiased; lanczos as bicubic where torchvision cannot apply it)."""
        from torchvision.transforms.v2 import functional as tvF
        from transformers.utils.import_utils import is_torchvision_greater_or_equal
        mode = {0: tvF.InterpolationMode.NEAREST_EXACT, 2: tvF.InterpolationMode.BILINEAR,
                3: tvF.InterpolationMode.BICUBIC}.get(self.resample)
        if mode is None:  # lanczos
            lanczos = is_torchvision_greater_or_equal('0.27') and x.device.type == 'cpu'
            mode = tvF.InterpolationMode.LANCZOS if lanczos else tvF.InterpolationMode.BICUBIC
        return tvF.resize(x, [int(size[0]), int(size[1])], interpolation=mode, antialias=True)

    def _scale(self, x: Tensor) -> Tensor:
        from torchvision.transforms.v2 import functional as tvF
        rule, factor = self.steps['scale'], self.rescale_factor
        if rule == 'mobilevit':
            if self.do_rescale:
                x = x * factor
            if self.flip_channel_order:
                x = x[:, [2, 1, 0]]
            return x
        mean, std, rescale = self.image_mean, self.image_std, self.do_rescale
        if rescale and self.do_normalize and not self.rescale_offset:  # fused, as the backend
            mean = torch.tensor(mean, device=x.device) * (1.0 / factor)
            std = torch.tensor(std, device=x.device) * (1.0 / factor)
            rescale = False
        if rescale:
            x = x * factor
            if self.rescale_offset:
                x -= 1
        if self.do_normalize:
            x = tvF.normalize(x.to(torch.float32), mean, std)
        if self.include_top:
            x = tvF.normalize(x.to(torch.float32), 0, self.image_std)
        return x

    def _pad(self, x: Tensor) -> Tensor:
        from torchvision.transforms.v2 import functional as tvF
        h, w = x.shape[-2:]
        if self.steps['pad'] == 'centre':
            d = int(self.size_divisor)
            ph, pw = math.ceil(h / d) * d - h, math.ceil(w / d) * d - w
            return tvF.pad(x, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2])
        if not self.pad_size:
            return x  # to the batch's largest image: the member's batching
        ph, pw = self.pad_size['height'] - h, self.pad_size['width'] - w
        if ph < 0 or pw < 0:
            raise UserError(f'member {self.owner!r}: an image of {h}x{w} pixels (after its '
                            f'resize) is larger than the pad_size {self.pad_size} its image '
                            'processor pads to')
        return tvF.pad(x, [0, 0, pw, ph]) if ph or pw else x

    # ------------------------------------------------------------------ description
    def describe(self) -> Dict[str, Any]:
        """The options in effect, for the description of an export."""
        out = dict(image_processor_type=type(self.processor).__name__,
                   do_resize=self.do_resize, size=self.size, resample=self.resample,
                   do_center_crop=self.do_center_crop, crop_size=self.crop_size,
                   do_rescale=self.do_rescale, rescale_factor=self.rescale_factor,
                   do_normalize=self.do_normalize, image_mean=self.image_mean,
                   image_std=self.image_std, do_pad=self.do_pad)
        for key, on in (('crop_pct', self.steps['resize'] in ('convnext', 'poolformer')),
                        ('keep_aspect_ratio', self.steps['resize'] == 'dpt'),
                        ('ensure_multiple_of', self.steps['resize'] == 'dpt'),
                        ('size_divisor', self.steps['resize'] == 'size_divisor'
                         or self.steps['pad'] == 'centre'),
                        ('pad_size', bool(self.pad_size)),
                        ('rescale_offset', self.steps['scale'] == 'efficientnet'),
                        ('include_top', self.steps['scale'] == 'efficientnet'),
                        ('do_flip_channel_order', self.steps['scale'] == 'mobilevit')):
            if on:
                out[key] = getattr(self, {'do_flip_channel_order': 'flip_channel_order'}.get(
                    key, key))
        return out


def centre_crop(x: Tensor, height: int, width: int) -> Tensor:
    """The torchvision backend's centre crop: zero-padded (centred) where the image is smaller
    than the crop, then cropped from the top-left ``int((H - height) / 2)``."""
    from torchvision.transforms.v2 import functional as tvF
    h, w = x.shape[-2:]
    if width > w or height > h:
        x = tvF.pad(x, [(width - w) // 2 if width > w else 0,
                        (height - h) // 2 if height > h else 0,
                        (width - w + 1) // 2 if width > w else 0,
                        (height - h + 1) // 2 if height > h else 0], fill=0)
        h, w = x.shape[-2:]
        if (h, w) == (height, width):
            return x
    return tvF.crop(x, int((h - height) / 2.0), int((w - width) / 2.0), height, width)


def resample_number(interpolation: str, owner: str = '') -> int:
    """PIL's number of the filter named ``interpolation`` (what a processor's ``resample``
    holds); a name it does not know is refused naming the member ``owner``."""
    if interpolation not in RESAMPLE_NUMBERS:
        raise UserError((f'member {owner!r}: ' if owner else '') +
                        f'interpolation {interpolation!r}: one of '
                        f'{", ".join(sorted(RESAMPLE_NUMBERS))}')
    return RESAMPLE_NUMBERS[interpolation]


def plain_image_processor(model_type: str, input_size: Sequence[int], mean: Sequence[float],
                          std: Sequence[float], interpolation: str = 'bilinear',
                          rescale_factor: float = 1 / 255, owner: str = ''):
    """An image processor that resizes to ``input_size`` with ``interpolation``, rescales by
    ``rescale_factor`` and normalises with ``mean`` and ``std``: of the class transformers
    gives the model type when that class adds no steps of its own (``BitImageProcessor`` for
    DINOv2), else ``ViTImageProcessor``. What a member without an image processor of its own
    preprocesses with, and exports (``owner``: the member, named in its errors)."""
    transformers = require_transformers()
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {}
    name = names.get('torchvision') if isinstance(names, dict) else None
    cls = getattr(transformers, name, None) if name else None
    if not isinstance(cls, type) or name in OWN_STEPS or compat.processor_own_methods(cls):
        cls = transformers.ViTImageProcessor
    return cls(do_resize=True, size=dict(height=int(input_size[0]), width=int(input_size[1])),
               resample=resample_number(interpolation, owner), do_center_crop=False,
               do_rescale=True,
               rescale_factor=rescale_factor, do_normalize=True, image_mean=list(mean),
               image_std=list(std), do_pad=False)
