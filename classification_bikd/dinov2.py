"""DINOv2 with its released ImageNet linear classifier (``torch.hub`` ``dinov2_vit*14_lc``) as a
member: timm's DINOv2 backbone plus the linear head of the DINOv2 release."""
import json
import os
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from bikd.fileio import save_torch
from bikd.registry import MEMBERS
from bikd.checkpoint import download_weights

from .member import TimmMember
from bikd.errors import UserError


@MEMBERS.register_module()
class DinoV2LinearMember(TimmMember):
    """DINOv2 backbone (timm, e.g. ``vit_small_patch14_dinov2.lvd142m``) with the release's
    linear classifier: ``Linear((1 + layers) * D, num_classes)`` on the class tokens of the last
    ``layers`` blocks (layer-normed) and the mean of the last block's patch tokens, as the hub's
    ``dinov2_vits14_lc`` (``layers=4``, its default) or the ``layers=1`` variant.

    Backbone weights as for :class:`TimmMember` (``pretrained_file`` takes the original
    ``dinov2_vits14_pretrain.pth``, which timm converts; ``checkpoint`` a backbone state dict in
    timm's layout, as exported). ``head_file``: the head as released
    (``dinov2_vits14_linear4_head.pth``, or ``dinov2_vits14_linear_head.pth`` for ``layers=1``),
    a state dict with ``weight`` and ``bias``; the export writes the same layout.
    """
    export_format = 'timm+dinov2_linear_head'
    #: the released linear head is a weights file of its own
    weight_arguments = TimmMember.weight_arguments + ('head_file', )

    def __init__(self, model_name: str = 'vit_small_patch14_dinov2.lvd142m', layers: int = 4,
                 num_classes: int = 1000, head_file: Optional[str] = None,
                 pretrained: bool = True, checkpoint: Optional[str] = None,
                 input_size=(224, 224), trust_checkpoint: bool = False, **kwargs):
        if layers not in (1, 4):
            raise UserError(f'DINOv2 linear heads exist for layers 1 and 4, got {layers}')
        kwargs.setdefault('name', 'dinov2')
        model_kwargs = dict(kwargs.pop('model_kwargs', None) or {})
        model_kwargs.update(num_classes=0, img_size=list(input_size))
        super().__init__(model_name, pretrained=pretrained, checkpoint=checkpoint,
                         model_kwargs=model_kwargs, input_size=input_size,
                         trust_checkpoint=trust_checkpoint, **kwargs)
        self.layers = layers
        self.head_file = head_file
        self.head = nn.Linear((1 + layers) * self.model.embed_dim, num_classes)

    def load_checkpoint(self, source: str) -> None:
        """The backbone from ``checkpoint`` (timm's layout), the head from ``head_file``."""
        if not self.head_file:
            raise UserError(f'member {self.name!r}: the backbone comes from {source} but '
                            'the linear head has no weights; pass head_file=PATH')
        super().load_checkpoint(source)
        self.load_head(self.head_file)

    def load_export(self, directory: str, stem: str) -> None:
        """The export's backbone (``<stem>.pth``) and its head (``<stem>_linear_head.pth``),
        as its JSON names them."""
        with open(os.path.join(directory, f'{stem}.json')) as f:
            info = json.load(f)
        TimmMember.load_checkpoint(self, os.path.join(directory, info['checkpoint']))
        self.load_head(os.path.join(directory, info['head']))

    def load_pretrained(self) -> str:
        """The released backbone, and the head from ``head_file`` or the release's URL."""
        source = super().load_pretrained()
        self.load_head(self.head_file or self.head_url())
        return source

    def load_head(self, source: str) -> None:
        """The linear head, as released (a local file or its URL)."""
        if source.startswith(('http://', 'https://')):
            state = download_weights(source, self.name, 'head_file=PATH (a local copy of the '
                                     'linear head), or pretrained=False', self.trust_checkpoint)
        else:
            state = self.read_weights(source)
        self.load_state(state, source, self.head)

    def head_url(self) -> str:
        """The release's URL of this head, e.g. ``.../dinov2_vits14/dinov2_vits14_linear4_head.pth``."""
        arch = self.model_name.split('.')[0]  # vit_small_patch14[_reg4]_dinov2
        size = arch.split('_')[1][0]  # s, b, l, g
        reg = '_reg4' if '_reg4_' in arch else ''
        base = f'dinov2_vit{size}14'
        return (f'https://dl.fbaipublicfiles.com/dinov2/{base}/{base}{reg}_linear'
                f'{"4" if self.layers == 4 else ""}_head.pth')

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def logits(self, images: Tensor) -> Tensor:
        outs = self.model.get_intermediate_layers(self.normalize(images), n=self.layers,
                                                  return_prefix_tokens=True, norm=True)
        cls_tokens = [prefix[:, 0] for _, prefix in outs]
        features = torch.cat(cls_tokens + [outs[-1][0].mean(dim=1)], dim=1)
        return self.head(features)

    def export_files(self, directory: str, stem: str) -> Dict[str, Any]:
        """``<stem>_linear_head.pth``: the head in the release's layout."""
        head = os.path.join(directory, f'{stem}_linear_head.pth')
        save_torch({k: v.detach().cpu() for k, v in self.head.state_dict().items()}, head)
        return dict(head=os.path.basename(head))

    def describe(self, stem: str) -> Dict[str, Any]:
        return dict(super().describe(stem), layers=self.layers, num_classes=self.num_classes)
