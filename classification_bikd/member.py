"""Classifiers as Bi-KD members: the common part of every classification member, and timm's
models."""
import os
from typing import Any, Dict, Optional, Sequence

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bikd.errors import UserError
from bikd.members import Member, MemberOutput
from bikd.partition import gt_confidence
from bikd.registry import MEMBERS


def _labels(data_samples: Any) -> Tensor:
    if isinstance(data_samples, dict) and 'label' in data_samples:
        return data_samples['label']
    if isinstance(data_samples, Tensor):
        return data_samples
    raise TypeError('classification members expect data_samples to be a dict with "label" '
                    f'(as ImageFolderDataset yields), got {type(data_samples).__name__}')


class ClassifierMember(Member):
    """Base of classification members: a network ``self.model`` mapping normalised images
    ``[N, 3, H, W]`` to class logits ``[N, C]``; the task loss is the cross-entropy, the
    partition score the softmax probability of the true class, the prediction the class
    probabilities.

    The member takes the shared batch (``uint8`` or ``[0, 1]`` float images), resizes it to
    its own input size when that differs and normalises it with its own mean and std. A
    subclass builds ``self.model``, then calls :meth:`set_preprocessing`.

    Args:
        name, pretrained, checkpoint, trust_checkpoint: see :class:`bikd.Member`.
        label_smoothing: of the cross-entropy task loss.
    """
    timm_member = 'TimmMember'
    transformers_member = 'TransformersClassifierMember'
    model: nn.Module

    def __init__(self, name: str, pretrained: bool = True, checkpoint: Optional[str] = None,
                 trust_checkpoint: bool = False, label_smoothing: float = 0.0):
        super().__init__(name, pretrained, checkpoint, trust_checkpoint)
        self.label_smoothing = float(label_smoothing)

    def set_preprocessing(self, input_size: Sequence[int], mean: Sequence[float],
                          std: Sequence[float], interpolation: str = 'bilinear') -> None:
        """The network's input: ``(H, W)``, per-channel mean and std of [0, 1] images, and
        the filter that resizes the shared batch to it."""
        self.input_size = tuple(int(s) for s in input_size)
        self.interpolation = interpolation
        self.register_buffer('mean', torch.tensor(tuple(mean)).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer('std', torch.tensor(tuple(std)).view(1, -1, 1, 1),
                             persistent=False)

    @property
    def weights_module(self) -> nn.Module:
        return self.model

    def preprocessing(self) -> Dict[str, Any]:
        """The preprocessing, for the description of an export."""
        return dict(input_size=list(self.input_size), mean=self.mean.flatten().tolist(),
                    std=self.std.flatten().tolist(), interpolation=self.interpolation)

    def normalize(self, images: Tensor) -> Tensor:
        """Shared batch -> this model's input: float, own size, own mean and std."""
        x = images.float()
        if images.dtype == torch.uint8:
            x = x.div_(255.0)
        if tuple(x.shape[-2:]) != self.input_size:
            mode = self.interpolation if self.interpolation in ('bilinear', 'bicubic') \
                else 'bilinear'
            x = F.interpolate(x, size=self.input_size, mode=mode, align_corners=False,
                              antialias=True)
        return (x - self.mean) / self.std

    def logits(self, images: Tensor) -> Tensor:
        return self.model(self.normalize(images))

    def forward_train(self, inputs: Tensor, data_samples: Any) -> MemberOutput:
        labels = _labels(data_samples)
        logits = self.logits(inputs)
        loss = F.cross_entropy(logits.float(), labels, reduction='none',
                               label_smoothing=self.label_smoothing)
        return MemberOutput(loss=loss, logits=logits,
                            confidence=gt_confidence([logits], labels)[0])

    def predict(self, inputs: Tensor, data_samples: Any = None) -> Tensor:
        return self.logits(inputs).float().softmax(dim=1)


@MEMBERS.register_module()
class TimmMember(ClassifierMember):
    """Any timm model as a member.

    Weights (see :class:`bikd.Member`): ``checkpoint`` (a local state-dict file in timm's
    layout, e.g. written by ``tools/export_members.py`` or ``torch.save(model.state_dict())``);
    else with ``pretrained``: ``pretrained_file`` (a local copy of the release that timm's own
    loader converts, e.g. an AugReg ``.npz``) or timm's pretrained tag (downloaded from the hub
    when it is reachable); ``pretrained=False``: random init.

    Its input size, mean, std and interpolation come from the model's ``pretrained_cfg``
    unless overridden here.

    Args:
        model_name: timm name, with or without pretrained tag
            (``vit_base_patch16_224.augreg_in1k``).
        name: member name in logs and tables; defaults to the architecture part of the name.
        num_classes: override the classifier size (e.g. 10 for the digits demo).
        model_kwargs: further ``timm.create_model`` keyword arguments.
        input_size: ``(H, W)`` override; mean, std, interpolation: likewise.
        label_smoothing, pretrained, checkpoint, trust_checkpoint: see
            :class:`ClassifierMember`.
    """
    export_format = 'timm'
    #: ``pretrained_file``: a local copy of the release, a source of weights
    weight_arguments = ClassifierMember.weight_arguments + ('pretrained_file', )

    def __init__(self, model_name: str, name: Optional[str] = None,
                 num_classes: Optional[int] = None, pretrained: bool = True,
                 checkpoint: Optional[str] = None, pretrained_file: Optional[str] = None,
                 model_kwargs: Optional[dict] = None,
                 input_size: Optional[Sequence[int]] = None,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 interpolation: Optional[str] = None, label_smoothing: float = 0.0,
                 trust_checkpoint: bool = False):
        super().__init__(name or model_name.split('.')[0], pretrained, checkpoint,
                         trust_checkpoint, label_smoothing)
        self.model_name = model_name
        self.model_kwargs = dict(model_kwargs or {})
        if num_classes is not None:
            self.model_kwargs['num_classes'] = int(num_classes)
        self.pretrained_file = pretrained_file
        self.model = self._create(pretrained=False)
        cfg = self.model.pretrained_cfg
        self.set_preprocessing(input_size or cfg.get('input_size', (3, 224, 224))[-2:],
                               mean or cfg.get('mean', timm.data.IMAGENET_DEFAULT_MEAN),
                               std or cfg.get('std', timm.data.IMAGENET_DEFAULT_STD),
                               interpolation or cfg.get('interpolation', 'bilinear'))

    def _create(self, pretrained: bool, **kwargs):
        try:
            return timm.create_model(self.model_name, pretrained=pretrained, **self.model_kwargs,
                                     **kwargs)
        except RuntimeError as e:
            if 'Unknown model' in str(e):
                raise UserError(f'member {self.name!r}: timm has no model '
                                f'{self.model_name!r}') from e
            raise

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    def load_pretrained(self) -> str:
        """The release, through timm's own loader (which converts the release's format):
        from ``pretrained_file`` or from the hub by the pretrained tag."""
        file = self.pretrained_file
        if file and not os.path.isfile(file):
            raise FileNotFoundError(f'pretrained_file of member {self.name!r} not found: {file}')
        try:
            released = self._create(pretrained=True,
                                    pretrained_cfg_overlay=dict(file=file) if file else None)
        except Exception as e:  # noqa: BLE001 - hub failures come in many types
            raise UserError(
                f'member {self.name!r}: could not load the pretrained weights of '
                f'{self.model_name!r} ({type(e).__name__}: {e}). Without access to the model '
                'hub, pass checkpoint=PATH (a local state dict) or pretrained_file=PATH '
                '(a local copy of the release), or pretrained=False for random weights.'
            ) from e
        self.model.load_state_dict(released.state_dict())
        return file or f'timm:{self.model_name}'

    #: what timm's ``pretrained_cfg`` says of the release, not of these weights
    RELEASE_KEYS = ('url', 'hf_hub_id', 'hf_hub_filename', 'file', 'tag', 'source',
                    'test_input_size', 'test_crop_pct', 'origin_url', 'paper_ids', 'paper_name',
                    'notes')

    def describe(self, stem: str) -> Dict[str, Any]:
        """What ``timm.create_model`` needs to load the export, and the preprocessing the
        member ran: its ``pretrained_cfg`` (what ``timm.data.resolve_data_config`` reads) says
        the member's own input size, interpolation, mean and std, and that it resizes the whole
        image it is given (``crop_pct`` 1), not the release's ImageNet recipe; nor does it name
        the release's download."""
        cfg = {k: v for k, v in self.model.pretrained_cfg.items()
               if isinstance(v, (str, int, float, bool, list, tuple, type(None)))
               and k not in self.RELEASE_KEYS}
        cfg.update(input_size=[3, *self.input_size], interpolation=self.interpolation,
                   mean=self.mean.flatten().tolist(), std=self.std.flatten().tolist(),
                   crop_pct=1.0, crop_mode='center', num_classes=self.num_classes)
        transform = (self.evaluated_with or {}).get('transform') or {}
        size = transform.get('input_size')
        size = [size, size] if isinstance(size, int) else list(size or [])[-2:]
        if size and [int(s) for s in size] == list(self.input_size):
            # the dataset's transform gave the member its input size, so it made the pipeline
            # the member's numbers came from (the member resized nothing)
            cfg.update(interpolation=transform.get('interpolation', 'bilinear'),
                       crop_pct=float(transform.get('crop_pct', 0.875)),
                       crop_mode=transform.get('crop_mode', 'center'))
        return dict(model_name=self.model_name, model_kwargs=self.model_kwargs,
                    **self.preprocessing(), pretrained_cfg=cfg,
                    load=(f'timm.create_model({self.model_name!r}, checkpoint_path='
                          f'{stem + ".pth"!r}'
                          + ''.join(f', {k}={v!r}' for k, v in self.model_kwargs.items()) + ')'))
