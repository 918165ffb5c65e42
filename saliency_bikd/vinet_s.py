"""ViNet-S (Girmaji et al., ICASSP 2025) on torchvision's S3D.

Backbone: torchvision ``s3d`` (Kinetics-400), tapped where the release's ``BackBoneS3D``
is: ``features[:4]`` (192 channels), ``[4:7]`` (480), ``[7:13]`` (832), ``[13:16]`` (1024).
Decoder: the release's ``DecoderConvUpGrouped`` (root grouping), with its module names;
skips are concatenated along time. :func:`to_release` / :func:`from_release` map the backbone's
parameters to the release's ``BackBoneS3D`` names (``base1``..``base4``, ``SepConv3d``'s
``conv_s/bn_s/conv_t/bn_t``, ``BasicConv3d``'s ``conv/bn``). The release trains with bilinear upsampling
(``align_corners=True``) while its test scripts rebuild the model with trilinear upsampling;
``upsampling`` chooses (default: as trained).
"""
import re
from functools import lru_cache
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.video import s3d
from bikd.errors import UserError


class Upsample2x(nn.Module):
    """x2 in height and width, per frame bilinear (``align_corners=True``) or trilinear."""

    def __init__(self, mode: str = 'bilinear'):
        super().__init__()
        if mode not in ('bilinear', 'trilinear'):
            raise UserError(f"upsampling must be 'bilinear' or 'trilinear', got {mode!r}")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == 'trilinear':
            return F.interpolate(x, scale_factor=(1, 2, 2), mode='trilinear')
        n, c, t, h, w = x.shape
        y = F.interpolate(x.transpose(1, 2).reshape(n * t, c, h, w), size=(2 * h, 2 * w),
                          mode='bilinear', align_corners=True)
        return y.reshape(n, t, c, 2 * h, 2 * w).transpose(1, 2)


class ViNetSDecoder(nn.Module):
    """Grouped 3D convs; each level's output is concatenated with the next skip along time."""

    def __init__(self, upsampling: str = 'bilinear'):
        super().__init__()
        self.upsampling = Upsample2x(upsampling)
        up = self.upsampling

        def conv(cin, cout, kt, groups, stride_t=None):
            return nn.Conv3d(cin, cout, (kt, 3, 3), stride=(stride_t or kt, 1, 1) if kt > 1
                             else 1, padding=(0, 1, 1), groups=groups, bias=False)

        self.convtsp1 = nn.Sequential(conv(1024, 832, 1, 32), nn.ReLU(), up)
        self.convtsp2 = nn.Sequential(conv(832, 480, 3, 16), nn.ReLU(), up)
        self.convtsp3 = nn.Sequential(conv(480, 192, 5, 8), nn.ReLU(), up)
        self.convtsp4 = nn.Sequential(
            conv(192, 64, 5, 4), nn.ReLU(), up,
            conv(64, 32, 2, 2), nn.ReLU(), up,
            nn.Conv3d(32, 32, (2, 1, 1), stride=(2, 1, 1), bias=False), nn.ReLU(),
            nn.Conv3d(32, 1, 1, bias=True), nn.Sigmoid())

    def forward(self, y0: Tensor, y1: Tensor, y2: Tensor, y3: Tensor) -> Tensor:
        z = self.convtsp1(y0)
        z = self.convtsp2(torch.cat((z, y1), dim=2))
        z = self.convtsp3(torch.cat((z, y2), dim=2))
        z = self.convtsp4(torch.cat((z, y3), dim=2))  # [N, 1, 1, H, W]
        return z[:, 0, 0]


class ViNetS(nn.Module):
    """Clip ``[N, 3, 32, 224, 384]`` (ImageNet-normalised) -> map ``[N, 224, 384]`` in [0, 1]."""

    TAPS = (4, 7, 13, 16)  # ends of the slices of s3d.features the release taps

    def __init__(self, upsampling: str = 'bilinear'):
        super().__init__()
        self.backbone = s3d().features
        self.decoder = ViNetSDecoder(upsampling)

    def features(self, x: Tensor) -> List[Tensor]:
        """192-, 480-, 832- and 1024-channel features (the release's y3, y2, y1, y0)."""
        taps = []
        for i, layer in enumerate(self.backbone, start=1):
            x = layer(x)
            if i in self.TAPS:
                taps.append(x)
        return taps

    def forward(self, x: Tensor) -> Tensor:
        y3, y2, y1, y0 = self.features(x)
        return self.decoder(y0, y1, y2, y3)

    @staticmethod
    @lru_cache(maxsize=1)
    def key_names() -> Tuple[str, ...]:
        """The state-dict keys of the architecture (built once, on the meta device)."""
        with torch.device('meta'):
            return tuple(ViNetS().state_dict())


# torchvision's s3d.features index -> the release's BackBoneS3D module (pools have no weights)
_RELEASE_MODULES = {0: 'base1.0', 2: 'base1.2', 3: 'base1.3', 5: 'base2.0', 6: 'base2.1',
                    8: 'base3.0', 9: 'base3.1', 10: 'base3.2', 11: 'base3.3', 12: 'base3.4',
                    14: 'base4.0', 15: 'base4.1'}
# inside a module: torchvision's Sequential indices -> the release's SepConv3d / BasicConv3d
_SEP = [('0.0.', 'conv_s.'), ('0.1.', 'bn_s.'), ('1.0.', 'conv_t.'), ('1.1.', 'bn_t.')]
_BASIC = [('0.', 'conv.'), ('1.', 'bn.')]
_MIXED = ([('branch0.' + a, 'branch0.0.' + b) for a, b in _BASIC]
          + [(f'branch{k}.0.' + a, f'branch{k}.0.' + b) for k in (1, 2) for a, b in _BASIC]
          + [(f'branch{k}.1.' + a, f'branch{k}.1.' + b) for k in (1, 2) for a, b in _SEP]
          + [('branch3.1.' + a, 'branch3.1.' + b) for a, b in _BASIC])


def _to_release_key(key: str) -> str:
    m = re.match(r'^backbone\.(\d+)\.(.*)$', key)
    if m is None:
        return key  # decoder.*: the release's names already
    idx, rest = int(m.group(1)), m.group(2)
    rules = _SEP if idx in (0, 3) else _BASIC if idx == 2 else _MIXED
    for ours, theirs in rules:
        if rest.startswith(ours):
            return f'backbone.{_RELEASE_MODULES[idx]}.{theirs}{rest[len(ours):]}'
    raise KeyError(f'no release name for {key}')


def to_release(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Our state dict -> the release's names (``backbone.base2.0.branch1.1.conv_s.weight``)."""
    return {_to_release_key(k): v for k, v in state.items()}


def from_release(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The release's state dict -> ours; names we do not know stay, so a strict load reports
    them."""
    inverse = {_to_release_key(k): k for k in ViNetS.key_names()}
    return {inverse.get(k, k): v for k, v in state.items()}
