"""Any Hugging Face ``transformers`` image classifier as a member (ViT, DeiT, ConvNeXt, Swin,
BEiT, DINOv2, ... any ``AutoModelForImageClassification``)."""
from typing import Any, Dict, Optional, Sequence

from torch import Tensor

from bikd.hf import TransformersModel
from bikd.registry import MEMBERS

from .member import ClassifierMember
from bikd.errors import UserError

#: PIL's resampling filters (the processors' ``resample``) -> the member's interpolation
RESAMPLE = {0: 'nearest', 2: 'bilinear', 3: 'bicubic'}


def processor_preprocessing(processor) -> Dict[str, Any]:
    """``input_size`` (H, W), ``mean``, ``std`` and ``interpolation`` from an image processor:
    the size the model takes (its centre crop's, else its resize's) and its normalisation."""
    def size_of(size) -> Optional[tuple]:
        get = (lambda k: size.get(k)) if isinstance(size, dict) else \
            (lambda k: getattr(size, k, None))
        if size is None:
            return None
        if get('height') and get('width'):
            return int(get('height')), int(get('width'))
        if get('shortest_edge'):
            return int(get('shortest_edge')), int(get('shortest_edge'))
        return None

    crop = size_of(getattr(processor, 'crop_size', None)) \
        if getattr(processor, 'do_center_crop', False) else None
    resample = getattr(processor, 'resample', 2)
    return dict(input_size=crop or size_of(getattr(processor, 'size', None)),
                mean=getattr(processor, 'image_mean', None),
                std=getattr(processor, 'image_std', None),
                interpolation=RESAMPLE.get(int(getattr(resample, 'value', resample)),
                                           'bilinear'))


@MEMBERS.register_module()
class TransformersClassifierMember(TransformersModel, ClassifierMember):
    """A ``transformers`` image classifier (``AutoModelForImageClassification``) as a member.

    It takes the shared batch like every classification member: resized to its input size
    and normalised with its own mean and std, all read from the model's image processor
    configuration (``preprocessor_config.json``; the centre crop's size when the processor
    crops), as timm's ``pretrained_cfg`` is for :class:`~classification_bikd.TimmMember`, so
    it shares a batch with timm and torchvision members. Per-sample task loss: the
    cross-entropy of its logits (the model's own single-label loss, per sample).

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
        input_size, mean, std, interpolation: override the processor's (needed when the model
            ships no image processor).
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
        given = dict(input_size=input_size, mean=mean, std=std, interpolation=interpolation)
        found = processor_preprocessing(self.image_processor) if self.image_processor else {}
        chosen = {k: given[k] if given[k] is not None else found.get(k) for k in given}
        missing = [k for k in ('input_size', 'mean', 'std') if chosen[k] is None]
        if missing:
            raise UserError(f'member {self.name!r}: {model} ships no image processor '
                            f'configuration; give {", ".join(missing)} in the member config')
        self.set_preprocessing(chosen['input_size'], chosen['mean'], chosen['std'],
                               chosen['interpolation'] or 'bilinear')

    @property
    def num_classes(self) -> int:
        return int(self.hf_config.num_labels)

    def logits(self, images: Tensor) -> Tensor:
        return self.model(pixel_values=self.normalize(images)).logits

    def describe(self, stem: str) -> Dict[str, Any]:
        return dict(num_classes=self.num_classes, **self.preprocessing())
