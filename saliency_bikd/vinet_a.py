"""ViNet-A (Girmaji et al., ICASSP 2025): a SlowFast-R50 encoder, a neck that fuses its slow
and fast paths, and a grouped 3D decoder with channel shuffle.

The modules are built in the release's own tree (``ViNet_A_model.ViNet_A``: ``backbone``
= its ``SlowFast`` with ``slow_*``/``fast_*`` stems, ``*_res1..4`` bottleneck stages and the
``Tconv1..4`` lateral convs; ``neck`` with ``conv_slow`` and ``conv_skip1..4``; ``decoder``
with ``convtsp1..6``), so the release's checkpoint, the AVA (ACAR-Net) and Kinetics SlowFast
weights it starts from, and our exports share one set of parameter names.

Full size (``width=64``, input 32 x 256 x 456): slow path every ``alpha``-th frame (8),
fast path all 32 frames with ``beta * width`` channels; skips after the stem and stages 1-3
(80/320/640/1280 channels, the slow features with the laterals concatenated); neck: slow
2048 -> 1024, fast 256 x 32 frames reshaped to 512 x 16 and max-pooled to the slow grid,
concatenated to 1536; decoder groups 32 (halved level by level), output 256 x 456.
``width`` shrinks every channel count in proportion for reduced members (CPU runs, tests);
the upsampling factors follow ``input_size`` (the release's ``(1, 32/16, 57/29)`` at 256x456).
"""
import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from bikd.errors import UserError


class Bottleneck(nn.Module):
    """ResNet bottleneck in 3D; ``temporal``: a 3x1x1 first conv (SlowFast's ``head_conv=3``)."""

    def __init__(self, cin: int, planes: int, stride: int = 1, dilation: int = 1,
                 temporal: bool = False, downsample: bool = False):
        super().__init__()
        kt = 3 if temporal else 1
        self.conv1 = nn.Conv3d(cin, planes, (kt, 1, 1), padding=(kt // 2, 0, 0), bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, (1, 3, 3), stride=(1, stride, stride),
                               padding=(0, dilation, dilation), dilation=(1, dilation, dilation),
                               bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        if downsample:
            self.downsample = nn.Sequential(
                nn.Conv3d(cin, planes * 4, 1, stride=(1, stride, stride), bias=False))
            self.downsample_bn = nn.BatchNorm3d(planes * 4)
        else:
            self.downsample = None

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = x if self.downsample is None else self.downsample_bn(self.downsample(x))
        return self.relu(out + res)


def _stage(cin: int, planes: int, blocks: int, stride: int = 1, dilation: int = 1,
           temporal: bool = False) -> nn.Sequential:
    layers = [Bottleneck(cin, planes, stride, dilation, temporal,
                         downsample=stride != 1 or cin != planes * 4)]
    layers += [Bottleneck(planes * 4, planes, 1, dilation, temporal) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class SlowFast(nn.Module):
    """SlowFast-R50 as ACAR-Net builds it (alpha 4, beta 1/8, last stage dilated, stride 1).

    Returns the slow path's output, the fast path's output and the four skips (slow
    features with the fast laterals concatenated, after the stem and stages 1-3)."""

    def __init__(self, width: int = 64, layers: Sequence[int] = (3, 4, 6, 3), alpha: int = 4,
                 beta: float = 1 / 8, fuse_kernel: int = 5):
        super().__init__()
        fast = width * beta
        if fast != int(fast) or fast < 1:
            raise UserError(f'width * beta must be a whole number of channels, got '
                            f'{width} * {beta}')
        f, w = int(fast), int(width)
        self.alpha = int(alpha)
        self.fast_conv1 = nn.Conv3d(3, f, (5, 7, 7), stride=(1, 2, 2), padding=(2, 3, 3),
                                    bias=False)
        self.fast_bn1 = nn.BatchNorm3d(f)
        self.fast_relu = nn.ReLU(inplace=True)
        self.fast_maxpool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.fast_res1 = _stage(f, f, layers[0], temporal=True)
        self.fast_res2 = _stage(4 * f, 2 * f, layers[1], stride=2, temporal=True)
        self.fast_res3 = _stage(8 * f, 4 * f, layers[2], stride=2, temporal=True)
        self.fast_res4 = _stage(16 * f, 8 * f, layers[3], dilation=2, temporal=True)

        self.slow_conv1 = nn.Conv3d(3, w, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3),
                                    bias=False)
        self.slow_bn1 = nn.BatchNorm3d(w)
        self.slow_relu = nn.ReLU(inplace=True)
        self.slow_maxpool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        # every slow stage takes its input plus the lateral (2 * beta times its channels)
        self.slow_res1 = _stage(w + 2 * f, w, layers[0])
        self.slow_res2 = _stage(4 * w + 8 * f, 2 * w, layers[1], stride=2)
        self.slow_res3 = _stage(8 * w + 16 * f, 4 * w, layers[2], stride=2, temporal=True)
        self.slow_res4 = _stage(16 * w + 32 * f, 8 * w, layers[3], dilation=2, temporal=True)

        def lateral(cin):
            return nn.Conv3d(cin, 2 * cin, (fuse_kernel, 1, 1), stride=(alpha, 1, 1),
                             padding=(fuse_kernel // 2, 0, 0), bias=False)

        self.Tconv1, self.Tconv2 = lateral(f), lateral(4 * f)
        self.Tconv3, self.Tconv4 = lateral(8 * f), lateral(16 * f)
        self.skip_channels = (w + 2 * f, 4 * w + 8 * f, 8 * w + 16 * f, 16 * w + 32 * f)
        self.out_channels = (32 * w, 32 * f)  # slow, fast

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, List[Tensor]]:
        fast = self.fast_maxpool(self.fast_relu(self.fast_bn1(self.fast_conv1(x))))
        laterals = [self.Tconv1(fast)]
        for stage, lateral in ((self.fast_res1, self.Tconv2), (self.fast_res2, self.Tconv3),
                               (self.fast_res3, self.Tconv4)):
            fast = stage(fast)
            laterals.append(lateral(fast))
        fast = self.fast_res4(fast)

        slow = x[:, :, ::self.alpha]
        slow = self.slow_maxpool(self.slow_relu(self.slow_bn1(self.slow_conv1(slow))))
        skips = []
        for stage, lateral in zip((self.slow_res1, self.slow_res2, self.slow_res3,
                                   self.slow_res4), laterals):
            slow = torch.cat((slow, lateral), dim=1)
            skips.append(slow)
            slow = stage(slow)
        return slow, fast, skips


def _conv_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 1, bias=False), nn.ReLU())


class Neck(nn.Module):
    """Slow features halved (1x1x1 conv), fast features folded from ``T`` frames of ``C``
    channels into ``T/2`` frames of ``2C`` (the release's reshape) and max-pooled onto the
    slow grid; both concatenated. Each skip halved by a 1x1x1 conv."""

    def __init__(self, skip_channels: Sequence[int], slow_channels: int):
        super().__init__()
        self.conv_slow = _conv_relu(slow_channels, slow_channels // 2)
        for i, c in enumerate(skip_channels, start=1):
            setattr(self, f'conv_skip{i}', _conv_relu(c, c // 2))

    def forward(self, slow: Tensor, fast: Tensor, skips: Sequence[Tensor]):
        n, c, t, h, w = fast.shape
        fast = fast.reshape(n, 2 * c, t // 2, h, w)
        slow = self.conv_slow(slow)
        fast = F.adaptive_max_pool3d(fast, slow.shape[2:])
        skips = [getattr(self, f'conv_skip{i}')(s) for i, s in enumerate(skips, start=1)]
        return torch.cat((slow, fast), dim=1), skips


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        return x.reshape(n, self.groups, c // self.groups, *x.shape[2:]).transpose(1, 2) \
            .reshape(x.shape)


class Upsample(nn.Module):
    """Trilinear resize by a fixed factor per axis, as the release's ``nn.Upsample``."""

    def __init__(self, scale: Sequence[float]):
        super().__init__()
        self.scale = tuple(float(s) for s in scale)

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode='trilinear')


class Decoder(nn.Module):
    """Grouped 3D convs from the fused features up to the input's size, each level's output
    concatenated with the next (halved) skip along channels and channel-shuffled when its
    group count is at least 8, as the release's ``decoder`` with ``use_channel_shuffle``."""

    def __init__(self, fused: int, skips: Sequence[int], width: int, groups: int,
                 scales: Sequence[Sequence[float]]):
        super().__init__()
        s1, s2, s3, s4 = (c // 2 for c in skips)
        g = [max(1, groups // d) for d in (1, 2, 4, 4, 8, 16, 32)]

        def conv(cin, cout, k, groups, temporal_stride=1):
            kt = k[0]
            return nn.Conv3d(cin, cout, k, stride=(temporal_stride, 1, 1),
                             padding=(kt // 2 if kt == 3 else 0, 1, 1), bias=False,
                             groups=groups)

        self.convtsp1 = nn.Sequential(conv(fused, s4, (3, 3, 3), g[0]), nn.ReLU())
        self.convtsp2 = nn.Sequential(conv(2 * s4, s3, (3, 3, 3), g[1]), nn.ReLU(),
                                      Upsample(scales[0]))
        self.convtsp3 = nn.Sequential(conv(2 * s3, s2, (3, 3, 3), g[2]), nn.ReLU(),
                                      Upsample(scales[1]))
        self.convtsp4 = nn.Sequential(conv(2 * s2, s1, (3, 3, 3), g[3]), nn.ReLU())
        self.convtsp5 = nn.Sequential(conv(2 * s1, width, (2, 3, 3), g[4], 2), nn.ReLU(),
                                      Upsample(scales[2]))
        self.convtsp6 = nn.Sequential(
            conv(width, width // 2, (2, 3, 3), g[5], 2), nn.ReLU(), Upsample(scales[3]),
            conv(width // 2, width // 4, (2, 3, 3), g[6]), nn.ReLU(),
            nn.Conv3d(width // 4, width // 4, 1, bias=False), nn.ReLU(),
            nn.Conv3d(width // 4, 1, 1, bias=True), nn.Sigmoid())
        self.shuffles = [ChannelShuffle(k) if k >= 8 else None for k in g[:3] + g[4:5]]

    def forward(self, z: Tensor, skips: Sequence[Tensor]) -> Tensor:
        skip1, skip2, skip3, skip4 = skips
        z = self.convtsp1(z)
        for conv, skip, shuffle in zip((self.convtsp2, self.convtsp3, self.convtsp4,
                                        self.convtsp5), (skip4, skip3, skip2, skip1),
                                       self.shuffles):
            z = torch.cat((z, skip), dim=1)
            z = conv(z if shuffle is None else shuffle(z))
        z = self.convtsp6(z)  # [N, 1, 1, H, W]
        return z[:, 0, 0]


def _feature_sizes(size: int) -> List[int]:
    """Sizes after the stem's conv and pool and stages 2 and 3 (each halves, rounding up)."""
    sizes = [size]
    for _ in range(4):
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes[1:]  # 1/2, 1/4, 1/8, 1/16


class ViNetA(nn.Module):
    """Clip ``[N, 3, 32, H, W]`` (mean 0.45, std 0.225) -> map ``[N, H, W]`` in [0, 1].

    Args:
        input_size: ``(H, W)``, each a multiple of 16 or the release's 256 x 456.
        width: slow-path stem channels (64: the release; smaller for reduced members).
        layers: bottlenecks per stage (R50: 3, 4, 6, 3).
        decoder_groups: the release trains with 32.
    """

    def __init__(self, input_size: Sequence[int] = (256, 456), width: int = 64,
                 layers: Sequence[int] = (3, 4, 6, 3), decoder_groups: int = 32):
        super().__init__()
        self.backbone = SlowFast(width, layers)
        slow_ch, fast_ch = self.backbone.out_channels
        skips = self.backbone.skip_channels
        self.neck = Neck(skips, slow_ch)
        hs, ws = _feature_sizes(int(input_size[0])), _feature_sizes(int(input_size[1]))
        # decoder levels: 1/16 -> 1/8 -> 1/4, then 1/4 -> 1/2 -> 1/1
        scales = [(1, hs[2] / hs[3], ws[2] / ws[3]), (1, hs[1] / hs[2], ws[1] / ws[2]),
                  (1, 2, 2), (1, 2, 2)]
        for axis, (full, sz) in enumerate(((int(input_size[0]), hs), (int(input_size[1]), ws))):
            out = sz[3]
            for i, s in enumerate(scales):
                out = math.floor(out * s[axis + 1])
                if i < 2 and out != sz[2 - i]:
                    raise UserError(f'ViNet-A cannot take input size {tuple(input_size)}: '
                                    'use multiples of 16 (or 256 x 456)')
            if out != full:
                raise UserError(f'ViNet-A cannot take input size {tuple(input_size)}: '
                                'use multiples of 16 (or 256 x 456)')
        fused = slow_ch // 2 + 2 * fast_ch
        self.decoder = Decoder(fused, skips, width, decoder_groups, scales)
        self.input_size = tuple(int(s) for s in input_size)

    def forward(self, x: Tensor) -> Tensor:
        slow, fast, skips = self.backbone(x)
        fused, skips = self.neck(slow, fast, skips)
        return self.decoder(fused, skips)
