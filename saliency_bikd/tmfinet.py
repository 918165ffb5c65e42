"""TMFI-Net (Zhou et al., TCSVT 2023) on torchvision's Video Swin-S, and its release's layout.

Backbone: torchvision ``swin3d_s`` without the patch-embedding LayerNorm (as the release's
``patch_norm=False``), drop path 0.2; taps after stages 1-3 (before patch merging) and the
layer-normed output of stage 4. Decoder: the release's ``DecoderConvUp``, with its module
names, so that the decoder's parameters keep the release's names and the backbone's map
one to one (:func:`to_release` / :func:`from_release`).
"""
import re
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn
from torchvision.models.video.swin_transformer import SwinTransformer3d


class Gate(nn.Module):
    """``x * sigmoid(conv(x)) + x``."""

    def __init__(self, channels: int):
        super().__init__()
        self.gate = nn.Conv3d(channels, channels, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.gate(x)) + x


def _up(factor: int) -> nn.Upsample:
    return nn.Upsample(scale_factor=(1, factor, factor), mode='trilinear')


class TMFIDecoder(nn.Module):
    """Per level: a temporal Conv3d (k 2, s 2) to 192 channels; top-down sums refined by 1x3x3
    convs; a gate per level; four heads of Conv3d (2,3,3) / ReLU / x2 upsampling to the input
    size, each ending in a sigmoid map; the four maps fused by a 4 -> 1 conv and a sigmoid."""

    def __init__(self, in_channels=(96, 192, 384, 768), channels: int = 192):
        super().__init__()
        c = channels
        self.upsampling2, self.upsampling4, self.upsampling8 = _up(2), _up(4), _up(8)
        for i, cin in enumerate(in_channels, start=1):
            setattr(self, f'conv{i}', nn.Conv3d(cin, c, (2, 1, 1), stride=(2, 1, 1)))
        for i in (1, 2, 3):
            setattr(self, f'convs{i}', nn.Conv3d(c, c, (1, 3, 3), padding=(0, 1, 1), bias=False))
        for i in (1, 2, 3, 4):
            setattr(self, f'gate{i}', Gate(c))

        def conv(cin, cout, k=(2, 3, 3), s=(2, 1, 1)):
            return nn.Conv3d(cin, cout, k, stride=s, padding=(0, 1, 1), bias=False)

        def head(ups: List[Optional[int]]) -> nn.Sequential:
            # three temporal-halving convs, each with ReLU and an optional x2 upsampling,
            # then a 1x3x3 conv to one channel, an optional final upsampling, a sigmoid
            layers: List[nn.Module] = []
            for cin, cout, up in zip((c, c // 2, c // 4), (c // 2, c // 4, c // 8), ups[:3]):
                layers += [conv(cin, cout), nn.ReLU()]
                if up:
                    layers.append(self.upsampling2)
            layers.append(conv(c // 8, 1, (1, 3, 3), (1, 1, 1)))
            if ups[3]:
                layers.append(_up(ups[3]) if ups[3] != 2 else self.upsampling2)
            return nn.Sequential(*layers, nn.Sigmoid())

        self.convtsp1 = head([2, 2, None, None])
        self.convtsp2 = head([2, 2, 2, None])
        self.convtsp3 = head([2, 2, 2, 2])
        self.convtsp4 = head([2, 2, 2, 4])
        self.convout = nn.Sequential(nn.Conv3d(4, 1, (1, 3, 3), padding=(0, 1, 1)), nn.Sigmoid())

    def forward(self, y4: Tensor, y3: Tensor, y2: Tensor, y1: Tensor) -> Tensor:
        y1, y2, y3, y4 = self.conv1(y1), self.conv2(y2), self.conv3(y3), self.conv4(y4)
        t3 = self.upsampling2(y4) + y3
        y3 = self.convs3(t3)
        t2 = self.upsampling2(t3) + y2 + self.upsampling4(y4)
        y2 = self.convs2(t2)
        t1 = self.upsampling2(t2) + y1 + self.upsampling8(y4)
        y1 = self.convs1(t1)
        z = [self.convtsp1(self.gate1(y1)), self.convtsp2(self.gate2(y2)),
             self.convtsp3(self.gate3(y3)), self.convtsp4(self.gate4(y4))]
        out = self.convout(torch.cat(z, dim=1))  # [N, 1, 1, H, W]
        return out[:, 0, 0]


class TMFINet(nn.Module):
    """Clip ``[N, 3, 32, 224, 384]`` (ImageNet-normalised) -> map ``[N, 224, 384]`` in [0, 1].

    The defaults are the release's (Video Swin-S: swin3d_s's architecture with drop path 0.2,
    where torchvision fixes 0.1). Smaller widths and depths give reduced members for CPU runs;
    the clip must have 32 frames (the decoder halves time five times), and the frame size
    must be a multiple of 32.
    """

    def __init__(self, drop_path: float = 0.2, embed_dim: int = 96,
                 depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=(8, 7, 7),
                 decoder_channels: int = 192):
        super().__init__()
        swin = SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=embed_dim, depths=list(depths),
                                 num_heads=list(num_heads), window_size=list(window_size),
                                 stochastic_depth_prob=drop_path)
        swin.patch_embed.norm = nn.Identity()  # the release has no patch-embedding norm
        swin.head = nn.Identity()
        self.backbone = swin
        self.decoder = TMFIDecoder([embed_dim * 2**i for i in range(4)], decoder_channels)

    def features(self, x: Tensor) -> List[Tensor]:
        """Stage 1-3 outputs before merging and the normed stage-4 output, ``[N, C, T, H, W]``."""
        b = self.backbone
        x = b.pos_drop(b.patch_embed(x))  # [N, T, H, W, C]
        taps = []
        for i, layer in enumerate(b.features):
            x = layer(x)
            if i in (0, 2, 4):
                taps.append(x)
        taps.append(b.norm(x))
        return [t.permute(0, 4, 1, 2, 3).contiguous() for t in taps]

    def forward(self, x: Tensor) -> Tensor:
        y1, y2, y3, y4 = self.features(x)
        return self.decoder(y4, y3, y2, y1)


# ours (torchvision) <-> the release (Video Swin's module names), for backbone keys; the
# decoder, the patch embedding and the final norm have the same names in both.
def _to_release_key(key: str) -> str:
    m = re.match(r'^backbone\.features\.(\d+)\.(.*)$', key)
    if m is None:
        return key  # decoder.*, backbone.patch_embed.proj.*, backbone.norm.*: same names
    idx, rest = int(m.group(1)), m.group(2)
    if idx % 2 == 1:  # patch merging after stage idx // 2
        return f'backbone.layers.{idx // 2}.downsample.{rest}'
    rest = re.sub(r'\.mlp\.0\.', '.mlp.fc1.', '.' + rest)[1:]
    rest = re.sub(r'\.mlp\.3\.', '.mlp.fc2.', '.' + rest)[1:]
    block, _, tail = rest.partition('.')
    return f'backbone.layers.{idx // 2}.blocks.{block}.{tail}'


def _from_release_key(key: str) -> str:
    m = re.match(r'^backbone\.layers\.(\d+)\.(downsample|blocks)\.(.*)$', key)
    if m is None:
        return key
    stage, kind, rest = int(m.group(1)), m.group(2), m.group(3)
    if kind == 'downsample':
        return f'backbone.features.{2 * stage + 1}.{rest}'
    rest = rest.replace('.mlp.fc1.', '.mlp.0.').replace('.mlp.fc2.', '.mlp.3.')
    return f'backbone.features.{2 * stage}.{rest}'


def to_release(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Our state dict -> the release's parameter names (``backbone.layers.i.blocks.j...``)."""
    return {_to_release_key(k): v for k, v in state.items()}


def from_release(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The release's state dict -> ours. Keys the release has beyond ours (none expected) are
    kept under their own names, so a strict load reports them."""
    return {_from_release_key(k): v for k, v in state.items()}
