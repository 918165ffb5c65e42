"""timm classifiers as Bi-KD members."""
import os
from typing import Any, Dict, Optional, Sequence

import timm
import torch
import torch.nn.functional as F
from torch import Tensor

from bikd.checkpoint import load_into, load_weights_file
from bikd.fileio import save_json, save_torch
from bikd.member import Member, MemberOutput
from bikd.partition import gt_confidence
from bikd.registry import MEMBERS


def _labels(data_samples: Any) -> Tensor:
    if isinstance(data_samples, dict) and 'label' in data_samples:
        return data_samples['label']
    if isinstance(data_samples, Tensor):
        return data_samples
    raise TypeError('classification members expect data_samples to be a dict with "label" '
                    f'(as ImageFolderDataset yields), got {type(data_samples).__name__}')


@MEMBERS.register_module()
class TimmMember(Member):
    """Any timm model as a member.

    Weights, in order of precedence: ``checkpoint`` (a local state-dict file in timm's layout,
    e.g. written by ``tools/export_members.py`` or ``torch.save(model.state_dict())``);
    ``pretrained=True`` with ``pretrained_file`` (a local copy of the release that timm's own
    loader converts, e.g. an AugReg ``.npz``); ``pretrained=True`` alone (timm's pretrained tag,
    downloaded from the hub when it is reachable); ``pretrained=False`` (random init).

    The member takes the shared batch (``uint8`` or ``[0, 1]`` float images ``[N, 3, H, W]``),
    resizes it to its own input size when that differs and normalises it with its own mean
    and std, all from the model's ``pretrained_cfg`` unless overridden here.

    Args:
        model_name: timm name, with or without pretrained tag
            (``vit_base_patch16_224.augreg_in1k``).
        name: member name in logs and tables; defaults to the architecture part of the name.
        num_classes: override the classifier size (e.g. 10 for the digits demo).
        model_kwargs: further ``timm.create_model`` keyword arguments.
        input_size: ``(H, W)`` override; mean, std, interpolation: likewise.
        label_smoothing: of the cross-entropy task loss.
        trust_checkpoint: allow a checkpoint that needs arbitrary Python objects to unpickle.
    """

    def __init__(self, model_name: str, name: Optional[str] = None,
                 num_classes: Optional[int] = None, pretrained: bool = True,
                 checkpoint: Optional[str] = None, pretrained_file: Optional[str] = None,
                 model_kwargs: Optional[dict] = None,
                 input_size: Optional[Sequence[int]] = None,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 interpolation: Optional[str] = None, label_smoothing: float = 0.0,
                 trust_checkpoint: bool = False):
        super().__init__(name or model_name.split('.')[0])
        self.model_name = model_name
        self.model_kwargs = dict(model_kwargs or {})
        if num_classes is not None:
            self.model_kwargs['num_classes'] = int(num_classes)
        if checkpoint:
            # Build first, then load: the file's keys are checked against this architecture.
            self.model = self._create(pretrained=False)
            load_into(self.model, load_weights_file(checkpoint, trust_checkpoint), checkpoint,
                      owner=self.name)
        elif pretrained:
            overlay = dict(file=pretrained_file) if pretrained_file else None
            if pretrained_file and not os.path.isfile(pretrained_file):
                raise FileNotFoundError(f'pretrained_file of member {self.name!r} not found: '
                                        f'{pretrained_file}')
            try:
                self.model = self._create(pretrained=True, pretrained_cfg_overlay=overlay)
            except Exception as e:  # noqa: BLE001 - hub failures come in many types
                raise RuntimeError(
                    f'member {self.name!r}: could not load the pretrained weights of '
                    f'{model_name!r} ({type(e).__name__}: {e}). Without access to the model '
                    'hub, pass checkpoint=PATH (a local state dict) or pretrained_file=PATH '
                    '(a local copy of the release), or pretrained=False for random weights.'
                ) from e
        else:
            self.model = self._create(pretrained=False)
        cfg = self.model.pretrained_cfg
        size = input_size or cfg.get('input_size', (3, 224, 224))[-2:]
        self.input_size = tuple(int(s) for s in size)
        self.interpolation = interpolation or cfg.get('interpolation', 'bilinear')
        mean = tuple(mean or cfg.get('mean', timm.data.IMAGENET_DEFAULT_MEAN))
        std = tuple(std or cfg.get('std', timm.data.IMAGENET_DEFAULT_STD))
        self.register_buffer('mean', torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.label_smoothing = float(label_smoothing)

    def _create(self, pretrained: bool, **kwargs):
        try:
            return timm.create_model(self.model_name, pretrained=pretrained, **self.model_kwargs,
                                     **kwargs)
        except RuntimeError as e:
            if 'Unknown model' in str(e):
                raise RuntimeError(f'member {self.name!r}: timm has no model '
                                   f'{self.model_name!r}') from e
            raise

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    def normalize(self, images: Tensor) -> Tensor:
        """Shared batch -> this model's input: float, own size, own mean and std."""
        x = images.float()
        if images.dtype == torch.uint8:
            x = x.div_(255.0)
        if tuple(x.shape[-2:]) != self.input_size:
            mode = self.interpolation if self.interpolation in ('bilinear', 'bicubic') else 'bilinear'
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
        return MemberOutput(loss=loss, distill=logits, confidence=gt_confidence([logits], labels)[0])

    def predict(self, inputs: Tensor, data_samples: Any = None) -> Tensor:
        return self.logits(inputs).float().softmax(dim=1)

    def export(self, directory: str, stem: str) -> Dict[str, Any]:
        """Write ``<stem>.pth`` (a state dict that ``timm.create_model(model_name,
        checkpoint_path=..., **model_kwargs)`` loads) and ``<stem>.json`` describing it."""
        weights = os.path.join(directory, f'{stem}.pth')
        save_torch({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                   weights)
        cfg = {k: v for k, v in self.model.pretrained_cfg.items()
               if isinstance(v, (str, int, float, bool, list, tuple, type(None)))}
        info = dict(format='timm', member=self.name, model_name=self.model_name,
                    model_kwargs=self.model_kwargs, checkpoint=os.path.basename(weights),
                    input_size=list(self.input_size), mean=self.mean.flatten().tolist(),
                    std=self.std.flatten().tolist(), interpolation=self.interpolation,
                    pretrained_cfg=cfg,
                    load=(f'timm.create_model({self.model_name!r}, checkpoint_path='
                          f'{os.path.basename(weights)!r}'
                          + ''.join(f', {k}={v!r}' for k, v in self.model_kwargs.items()) + ')'))
        save_json(info, os.path.join(directory, f'{stem}.json'))
        return info
