"""Any Hugging Face ``transformers`` image classifier as a member (ViT, DeiT, ConvNeXt, Swin,
BEiT, DINOv2, EfficientNet, MobileViT, LeViT, PoolFormer, ... any
``AutoModelForImageClassification``)."""
import copy
from typing import Any, Dict, Optional, Sequence

from torch import Tensor

from bikd.errors import UserError
from bikd.members.hf import (RESAMPLE_NAMES, ImagePreprocessing, TransformersModel,
                     plain_image_processor, resample_number)
from bikd.registry import MEMBERS

from .member import ClassifierMember

#: what to do when the member cannot preprocess as the model's image processor does
OWN_PREPROCESSING = ('give input_size, mean and std (and interpolation) in the member\'s '
                     'config to resize and normalise the shared batch instead')


def with_overrides(processor, owner: str, input_size=None, mean=None, std=None,
                   interpolation=None):
    """A copy of ``processor`` with the member's overrides: ``input_size`` resizes straight to
    it (no crop, no crop_pct, no padding: a ``ViTImageProcessor`` with the processor's other
    steps where its class resizes by rules of its own), ``mean`` and ``std`` its normalisation,
    ``interpolation`` its filter."""
    if all(v is None for v in (input_size, mean, std, interpolation)):
        return processor
    prep = ImagePreprocessing(processor, owner, OWN_PREPROCESSING)
    out = copy.deepcopy(processor)
    if input_size is not None:
        if prep.steps['scale'] == 'backend':
            out = plain_image_processor('', input_size, prep.image_mean or [0.0] * 3,
                                        prep.image_std or [1.0] * 3, prep.interpolation,
                                        prep.rescale_factor or 1 / 255, owner=owner)
            out.do_rescale, out.do_normalize = prep.do_rescale, prep.do_normalize
        else:  # EfficientNet, MobileViT: the backend's resize, steps on values of their own
            out.size = dict(height=int(input_size[0]), width=int(input_size[1]))
            out.do_resize, out.do_center_crop, out.do_pad = True, False, False
    if mean is not None or std is not None:
        if prep.steps['scale'] == 'mobilevit':
            raise UserError(f'member {owner!r}: its image processor '
                            f'{type(processor).__name__} never normalises; mean and std '
                            'cannot apply (give all of input_size, mean and std to replace its '
                            'preprocessing)')
        mean = mean if mean is not None else prep.image_mean
        std = std if std is not None else prep.image_std
        if mean is None or std is None:
            raise UserError(f'member {owner!r}: its image processor does not normalise; give '
                            'both mean and std to normalise')
        out.do_normalize = True
        out.image_mean, out.image_std = tuple(map(float, mean)), tuple(map(float, std))
    if interpolation is not None:
        out.resample = resample_number(interpolation, owner)
    return out


@MEMBERS.register_module()
class TransformersClassifierMember(TransformersModel, ClassifierMember):
    """A ``transformers`` image classifier (``AutoModelForImageClassification``) as a member.

    It takes the shared batch like every classification member (``uint8`` RGB images) and
    feeds its model what the model's image processor (``preprocessor_config.json``) makes of
    those images: every step and option of the processor's class (resize by its size rules
    and filter, ``crop_pct``, centre crop, rescale, EfficientNet's ``rescale_offset`` and
    ``include_top``, normalisation, MobileViT's BGR order and no normalisation, padding), as
    the processor's torchvision backend computes them, so the model's input equals the
    processor's ``pixel_values`` for the same images (see
    :class:`bikd.members.hf.ImagePreprocessing`; a processor it cannot reproduce is refused in
    one line naming the option). It shares a
    batch with timm and torchvision members. Per-sample task loss: the cross-entropy of its
    logits (the model's own single-label loss, per sample).

    Without an image processor in ``model`` (a folder saved without one), ``input_size``,
    ``mean`` and ``std`` (and ``interpolation``) say how to preprocess: a resize straight to
    ``input_size``, then ``(x / 255 - mean) / std``. The export writes the image processor
    that does what the member did, so ``AutoImageProcessor.from_pretrained(export)`` gives
    it back.

    Args:
        model: a hub id (``google/vit-base-patch16-224``) or a folder written by
            ``save_pretrained``: the architecture, and with ``pretrained`` its weights.
        name: member name; defaults to the last part of ``model``.
        num_classes: the classifier's size (the config's ``num_labels``); a release of another
            size gets a new head.
        checkpoint: trained weights: a ``save_pretrained`` folder (what the export writes) or a
            hub id, loaded strictly. Takes precedence over ``pretrained``.
        trust_remote_code: run a model's own code (its config's ``auto_map``), off by default;
            a model that needs it is refused with a line that says so.
        config_overrides: further attributes of its configuration (a smaller test model).
        input_size, mean, std, interpolation: replace the processor's: ``input_size`` a resize
            straight to it (no crop, no ``crop_pct``), ``mean`` and ``std`` its
            normalisation, ``interpolation`` (nearest, bilinear, bicubic, lanczos) its filter.
            All of input_size, mean and std given: the processor is not read (needed when the
            model ships none, or one this member does not reproduce).
        label_smoothing, pretrained, trust_checkpoint: see :class:`ClassifierMember`.
    """
    auto_class = 'AutoModelForImageClassification'

    def __init__(self, model: str, name: Optional[str] = None,
                 num_classes: Optional[int] = None, pretrained: bool = True,
                 checkpoint: Optional[str] = None, trust_remote_code: bool = False,
                 config_overrides: Optional[dict] = None,
                 input_size: Optional[Sequence[int]] = None,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 interpolation: Optional[str] = None, label_smoothing: float = 0.0,
                 trust_checkpoint: bool = False):
        super().__init__(name or str(model).rstrip('/').split('/')[-1], pretrained, checkpoint,
                         trust_checkpoint, label_smoothing)
        overrides = dict(config_overrides or {})
        if num_classes is not None:
            overrides['num_labels'] = int(num_classes)
        self.build_transformers_model(model, overrides, trust_remote_code)
        given = dict(input_size=input_size, mean=mean, std=std)
        if all(v is not None for v in given.values()) or self.image_processor is None:
            missing = [k for k, v in given.items() if v is None]
            if missing:
                raise UserError(
                    f'member {self.name!r}: {model} ships no image processor configuration '
                    f'(preprocessor_config.json); give {", ".join(missing)} in the member\'s '
                    'config (tools/find_partners.py: in a --pool entry), or save its image '
                    'processor into the folder (processor.save_pretrained(folder))')
            resample = interpolation or (RESAMPLE_NAMES.get(getattr(
                self.image_processor, 'resample', None), 'bilinear')
                if self.image_processor is not None else 'bilinear')
            self.image_processor = plain_image_processor(
                getattr(self.hf_config, 'model_type', ''), input_size, mean, std, resample,
                owner=self.name)
        else:
            self.image_processor = with_overrides(self.image_processor, self.name, input_size,
                                                  mean, std, interpolation)
        self.pixels = ImagePreprocessing(self.image_processor, self.name, OWN_PREPROCESSING)
        self.set_preprocessing(self.pixels.input_size, self.pixels.mean, self.pixels.std,
                               self.pixels.interpolation)

    @property
    def num_classes(self) -> int:
        return int(self.hf_config.num_labels)

    def normalize(self, images: Tensor) -> Tensor:
        """Shared batch (``uint8`` RGB, or floats in [0, 1]) -> the model's ``pixel_values``,
        as its image processor makes them (:class:`bikd.members.hf.ImagePreprocessing`)."""
        return self.pixels(images)

    def logits(self, images: Tensor) -> Tensor:
        return self.model(pixel_values=self.normalize(images)).logits

    def preprocessing(self) -> Dict[str, Any]:
        """The preprocessing, for the description of an export: input size, mean, std and
        filter (for a square image), and the image processor's options in effect."""
        return dict(super().preprocessing(), image_processor=self.pixels.describe())

    def describe(self, stem: str) -> Dict[str, Any]:
        return dict(num_classes=self.num_classes, **self.preprocessing())
