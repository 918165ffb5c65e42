"""torchvision's classifiers as members: the README's example of a new member in one file."""
from typing import Any, Dict, Optional, Sequence

import torchvision
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from bikd.registry import MEMBERS

from .member import ClassifierMember
from bikd.errors import UserError


@MEMBERS.register_module()
class TorchvisionMember(ClassifierMember):
    """A classifier of ``torchvision.models`` by name (``resnet50``, ``efficientnet_b0``,
    ``vit_b_16``, ...; ``torchvision.models.list_models()`` lists them).

    Weights (see :class:`bikd.Member`): ``checkpoint``, the model's state dict (what
    ``torch.save(model.state_dict())`` and the export write); else with ``pretrained``,
    torchvision's weights named ``weights`` (``DEFAULT``, ``IMAGENET1K_V2``, ...) from torch
    hub's cache, or downloaded when reachable; ``pretrained=False``: random.

    Args:
        arch: the model's name in torchvision.
        weights: the released weights' name in the model's weights enum.
        num_classes: the classifier's size (default: torchvision's, 1000).
        input_size, mean, std, interpolation: the preprocessing; the defaults are those of
            torchvision's ImageNet weights.
        name, label_smoothing, pretrained, checkpoint, trust_checkpoint: see
            :class:`ClassifierMember`.
    """
    export_format = 'torchvision'

    def __init__(self, arch: str, name: Optional[str] = None, weights: str = 'DEFAULT',
                 num_classes: Optional[int] = None, input_size: Sequence[int] = (224, 224),
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 std: Sequence[float] = IMAGENET_DEFAULT_STD, interpolation: str = 'bilinear',
                 label_smoothing: float = 0.0, pretrained: bool = True,
                 checkpoint: Optional[str] = None, trust_checkpoint: bool = False):
        super().__init__(name or arch, pretrained, checkpoint, trust_checkpoint, label_smoothing)
        self.arch, self.weights = arch, weights
        self.model_kwargs = {} if num_classes is None else dict(num_classes=int(num_classes))
        self.model = torchvision.models.get_model(arch, weights=None, **self.model_kwargs)
        self._num_classes = int(num_classes or 1000)
        self.set_preprocessing(input_size, mean, std, interpolation)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def load_pretrained(self) -> str:
        released = torchvision.models.get_model_weights(self.arch)[self.weights]
        try:
            state = released.get_state_dict(progress=False)
        except Exception as e:  # noqa: BLE001 - network failures come in many types
            raise UserError(f'member {self.name!r}: {released} is not in torch hub\'s cache '
                            f'and cannot be downloaded ({type(e).__name__}: {e}); pass '
                            'checkpoint=PATH, or pretrained=False') from e
        self.load_state(state, str(released))
        return f'torchvision:{released}'

    def describe(self, stem: str) -> Dict[str, Any]:
        kwargs = ''.join(f', {k}={v!r}' for k, v in self.model_kwargs.items())
        return dict(arch=self.arch, model_kwargs=self.model_kwargs, **self.preprocessing(),
                    load=f'torchvision.models.get_model({self.arch!r}{kwargs})'
                         f'.load_state_dict(torch.load({stem + ".pth"!r}))')
