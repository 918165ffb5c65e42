"""The common part of video-saliency members: each takes its own view of the shared clip
(length, frame size, normalisation), predicts one map for the clip's target frame, and is
trained on KL - CC; its map, as a distribution over pixels, is what it distils."""
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bikd.members import Member, MemberOutput
from bikd.registry import MEMBERS

from . import tmfinet, vinet_s
from .losses import map_log_probs, saliency_loss
from .tmfinet import TMFINet
from .vinet_a import ViNetA
from .vinet_s import ViNetS
from bikd.errors import UserError


class SaliencyMember(Member):
    """Base of TMFI-Net, ViNet-S and ViNet-A members.

    Subclasses set ``self.net``: a module mapping a normalised clip ``[N, 3, T, H, W]`` to maps
    ``[N, h, w]`` in [0, 1]; a ``checkpoint`` is the release's file of that network (or our
    export, which has the same layout).

    Args:
        name, pretrained, checkpoint, trust_checkpoint: see :class:`bikd.Member`.
        clip_len: frames the network takes; by default the ``clip_len`` frames ending at the
            target frame.
        frame_offsets: the frames it takes instead, as offsets from the target frame (ViNet-A:
            every second frame of a 64-frame window centred on the target,
            ``[-31, -29, ..., -1, 1, ..., 31]``); the dataset must deliver the frames after
            the target (``frames_after``).
        input_size: ``(H, W)`` the network takes; frames are resized to it.
        mean, std: per-channel normalisation of [0, 1] RGB frames.
        kl_weight, cc_weight: the task loss ``kl_weight * KL - cc_weight * CC``.
    """

    def __init__(self, name: str, clip_len: int, input_size: Sequence[int],
                 mean: Sequence[float], std: Sequence[float], kl_weight: float = 1.0,
                 cc_weight: float = 1.0, frame_offsets: Optional[Sequence[int]] = None,
                 pretrained: bool = True, checkpoint: Optional[str] = None,
                 trust_checkpoint: bool = False):
        super().__init__(name, pretrained, checkpoint, trust_checkpoint)
        self.clip_len = int(clip_len)
        offsets = list(frame_offsets) if frame_offsets is not None else \
            list(range(1 - self.clip_len, 1))
        if len(offsets) != self.clip_len:
            raise UserError(f'member {name!r}: {len(offsets)} frame offsets for a clip of '
                            f'{self.clip_len} frames')
        self.frame_offsets = offsets
        self.input_size = tuple(int(s) for s in input_size)
        self.register_buffer('mean', torch.tensor(mean).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std).view(1, 3, 1, 1, 1), persistent=False)
        self.kl_weight, self.cc_weight = float(kl_weight), float(cc_weight)
        self.net: nn.Module = nn.Identity()

    @property
    def num_classes(self) -> int:
        return 1  # one saliency map; members of a run must agree

    @property
    def partition_loss_kind(self) -> str:
        return 'saliency_kl_cc'

    def view(self, clips: Any, target_pos: Optional[int] = None) -> Tensor:
        """Shared ``uint8 [N, T, 3, H, W]`` clips whose frame ``target_pos`` (default: the
        last) is the target -> this network's input ``[N, 3, t, h, w]``. ``clips`` may be a
        dict ``{'HxW': clips}`` of the same frames at several sizes (the dataset's
        ``frame_size`` list): this member takes the one at its input size, resized once from
        the source frames; a single size is resized here when it differs (antialiased
        bilinear, within a grey level of PIL's filter)."""
        if isinstance(clips, dict):
            key = f'{self.input_size[0]}x{self.input_size[1]}'
            if key not in clips:
                raise UserError(f'member {self.name!r} takes {key} frames; the batch has '
                                f'{sorted(clips)} (add {list(self.input_size)} to the dataset\'s '
                                'frame_size)')
            clips = clips[key]
        last = clips.shape[1] - 1
        pos = last if target_pos is None else int(target_pos)
        if pos + min(self.frame_offsets) < 0:
            raise UserError(f'member {self.name!r} needs {-min(self.frame_offsets)} frames '
                            f'before the target, the clips have {pos} (the dataset\'s '
                            'clip_len counts them with the target)')
        if pos + max(self.frame_offsets) > last:
            raise UserError(f'member {self.name!r} needs {max(self.frame_offsets)} frames '
                            f'after the target, the clips have {last - pos} (the dataset\'s '
                            'frames_after)')
        x = clips[:, [pos + o for o in self.frame_offsets]].float().div_(255.0)
        n, t = x.shape[:2]
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x.flatten(0, 1), size=self.input_size, mode='bilinear',
                              align_corners=False, antialias=True).unflatten(0, (n, t))
        x = x.permute(0, 2, 1, 3, 4)  # [N, 3, T, H, W]
        return (x - self.mean) / self.std

    def maps(self, clips: Tensor, size: Sequence[int], target_pos=None) -> Tensor:
        """Predicted maps resized to ``size``: ``[N, *size]``, non-negative."""
        if isinstance(target_pos, Tensor):  # one per sample from the loader, all equal
            target_pos = int(target_pos.flatten()[0])
        out = self.net(self.view(clips, target_pos))
        if tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out[:, None], size=tuple(size), mode='bilinear',
                                align_corners=False)[:, 0]
        return out.clamp(min=0)

    def forward_train(self, inputs: Tensor, data_samples: Dict[str, Any]) -> MemberOutput:
        gt = data_samples['map']
        pred = self.maps(inputs, gt.shape[-2:], data_samples.get('target_pos'))
        loss = saliency_loss(pred, gt, self.kl_weight, self.cc_weight)
        return MemberOutput(loss=loss, logits=map_log_probs(pred))

    def predict(self, inputs: Tensor, data_samples: Dict[str, Any]) -> Tensor:
        return self.maps(inputs, data_samples['map'].shape[-2:],
                         data_samples.get('target_pos')).float()

    @property
    def weights_module(self) -> nn.Module:
        return self.net

    def describe(self, stem: str) -> Dict[str, Any]:
        return dict(clip_len=self.clip_len, input_size=list(self.input_size))


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def kinetics_weights(member: str, weights, alternatives: str) -> Dict[str, Tensor]:
    """A torchvision Kinetics-400 state dict from its cache, or downloaded when reachable."""
    try:
        return weights.get_state_dict(progress=False)
    except Exception as e:  # noqa: BLE001 - network failures come in many types
        raise UserError(f'member {member!r}: torchvision\'s {weights} weights are not cached '
                        f'and cannot be downloaded ({type(e).__name__}: {e}); pass '
                        f'{alternatives}, or pretrained=False') from e


@MEMBERS.register_module()
class TMFINetMember(SaliencyMember):
    """TMFI-Net: 32 frames ending at the target frame, 224x384, ImageNet mean and std.

    Weights: ``checkpoint`` (the release's file, e.g. ``best_VSTNet147.pth``, a plain state
    dict in its own layout, or our export of it); else with ``pretrained``, the backbone's
    Kinetics-400 weights from ``backbone_checkpoint`` (torchvision's ``swin3d_s`` state dict)
    or from torchvision's ``KINETICS400_V1`` tag (its cache, or a download when reachable);
    ``pretrained=False``: random. ``arch``: :class:`TMFINet` arguments for a reduced member
    (``embed_dim``, ``depths``, ``num_heads``, ``window_size``, ``decoder_channels``).
    Exports in the release's layout (what its test script loads with
    ``model.load_state_dict(torch.load(path))``).
    """
    export_format = 'TMFI-Net release (wusonghe/TMFI-Net model.VideoSaliencyModel)'
    #: the backbone's own weights file (Kinetics-400) is a source of weights
    weight_arguments = SaliencyMember.weight_arguments + ('backbone_checkpoint', )

    def __init__(self, name: str = 'tmfinet', checkpoint: Optional[str] = None,
                 backbone_checkpoint: Optional[str] = None, pretrained: bool = True,
                 arch: Optional[dict] = None, trust_checkpoint: bool = False, **kwargs):
        kwargs = {**dict(clip_len=32, input_size=(224, 384), mean=IMAGENET_MEAN,
                         std=IMAGENET_STD), **kwargs}
        super().__init__(name, pretrained=pretrained, checkpoint=checkpoint,
                         trust_checkpoint=trust_checkpoint, **kwargs)
        self.backbone_checkpoint = backbone_checkpoint
        self.net = TMFINet(**(arch or {}))

    def from_native(self, state: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return tmfinet.from_release(state)

    def to_native(self, state: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return tmfinet.to_release(state)

    def load_pretrained(self) -> str:
        """The backbone's Kinetics-400 weights (``backbone_checkpoint`` or torchvision's)."""
        path = self.backbone_checkpoint
        if path:
            state = self.read_weights(path)
        else:
            from torchvision.models.video import Swin3D_S_Weights
            state = kinetics_weights(self.name, Swin3D_S_Weights.KINETICS400_V1,
                                     'backbone_checkpoint=PATH, checkpoint=PATH (the release)')
            path = 'torchvision Swin3D_S_Weights.KINETICS400_V1'
        # the classifier and the patch-embedding norm are not part of TMFI-Net
        state = {k: v for k, v in state.items()
                 if not k.startswith(('head.', 'patch_embed.norm.'))}
        self.load_state(state, path, self.net.backbone)
        return path


@MEMBERS.register_module()
class ViNetSMember(SaliencyMember):
    """ViNet-S: 32 frames ending at the target frame, 224x384, ImageNet mean and std.

    Weights: ``checkpoint`` (the release's file, e.g.
    ``DHF1K_vinet_s_rootgrouped_32_bs8_kld_cc.pt``, or our export of it, which has the same layout);
    else with ``pretrained``, torchvision's Kinetics-400 S3D for the backbone (its cache, or a
    download when reachable); ``pretrained=False``: random. ``upsampling``: ``'bilinear'`` as
    the release was trained, ``'trilinear'`` as its test scripts rebuild it.
    """
    export_format = 'ViNet-S release (ViNet-Saliency/vinet_v2 ViNet_S_model.VideoSaliencyModel)'

    def __init__(self, name: str = 'vinet_s', checkpoint: Optional[str] = None,
                 pretrained: bool = True, upsampling: str = 'bilinear',
                 trust_checkpoint: bool = False, **kwargs):
        kwargs = {**dict(clip_len=32, input_size=(224, 384), mean=IMAGENET_MEAN,
                         std=IMAGENET_STD), **kwargs}
        super().__init__(name, pretrained=pretrained, checkpoint=checkpoint,
                         trust_checkpoint=trust_checkpoint, **kwargs)
        self.net = ViNetS(upsampling)

    def from_native(self, state: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return vinet_s.from_release(state)

    def to_native(self, state: Dict[str, Tensor]) -> Dict[str, Tensor]:
        return vinet_s.to_release(state)

    def load_pretrained(self) -> str:
        """torchvision's Kinetics-400 S3D for the backbone."""
        from torchvision.models.video import S3D_Weights
        state = kinetics_weights(self.name, S3D_Weights.KINETICS400_V1, 'checkpoint=PATH')
        state = {k[len('features.'):]: v for k, v in state.items() if k.startswith('features.')}
        source = 'torchvision S3D_Weights.KINETICS400_V1'
        self.load_state(state, source, self.net.backbone)
        return source


#: ViNet-A's frame windows, as offsets from the target frame. ``release``: ViNet-A's release
#: (every second frame of the 64 around the target, the target itself not among them);
#: ``authors_dhf1k`` / ``authors_hollywood2``: the paper authors' Bi-KD loaders, which produced
#: Tables 5-6 (DHF1K: every second frame, -32..+30, the target included; Hollywood-2: the 32
#: consecutive frames -16..+15).
VINET_A_WINDOWS = {'release': tuple(range(-31, 32, 2)),
                   'authors_dhf1k': tuple(range(-32, 31, 2)),
                   'authors_hollywood2': tuple(range(-16, 16))}


def _match_suffixes(state: Dict[str, Tensor], names) -> Dict[str, Tensor]:
    """Keys of ``state`` with leading dotted components dropped until they name a parameter
    in ``names`` (ACAR-Net's ``module.backbone.module.slow_conv1.weight`` ->
    ``slow_conv1.weight``); keys that never do are kept, so a strict load lists them."""
    names, out = set(names), {}
    for key, value in state.items():
        parts = key.split('.')
        match = next(('.'.join(parts[i:]) for i in range(len(parts))
                      if '.'.join(parts[i:]) in names), key)
        out[match] = value
    return out


@MEMBERS.register_module()
class ViNetAMember(SaliencyMember):
    """ViNet-A: 32 frames around the target frame, 256x456, mean 0.45 and std 0.225.

    ``window`` names its frames (:data:`VINET_A_WINDOWS`): ``release`` (default: every second
    frame of the 64 around the target, as ViNet-A's release trains and evaluates), or the paper
    authors' Bi-KD loaders, ``authors_dhf1k`` and ``authors_hollywood2``, which the paper's
    Bi-KD configs use for training and evaluation alike. The dataset must deliver the frames
    after the target the window reaches (``frames_after``: 31, 30 or 15).

    Weights: ``checkpoint`` (the release's file, e.g. ``ViNet_A_DHF1K_...pt``, a plain
    state dict of ``ViNet_A``, or our export of it, which has the same names); else with
    ``pretrained``, the SlowFast-R50 backbone from ``backbone_checkpoint``: ACAR-Net's AVA
    model ``AVA_SLOWFAST_R50_ACAR_HR2O.pth.tar`` (what the release starts from) or the
    Kinetics-400 ``SLOWFAST_R50_K400.pth.tar``; wrapper prefixes are dropped and the
    detection or classification head is left out. These files are not on a hub torchvision
    or timm can reach, so ``pretrained=True`` needs the path. ``pretrained=False``: random.
    ``arch``: :class:`ViNetA` arguments (``width``, ``layers``, ``decoder_groups``) for a
    reduced member.
    """
    export_format = 'ViNet-A release (ViNet-Saliency/vinet_v2 ViNet_A_model.ViNet_A)'
    #: the backbone's own weights file (AVA SlowFast) is a source of weights
    weight_arguments = SaliencyMember.weight_arguments + ('backbone_checkpoint', )

    def __init__(self, name: str = 'vinet_a', checkpoint: Optional[str] = None,
                 backbone_checkpoint: Optional[str] = None, pretrained: bool = True,
                 arch: Optional[dict] = None, trust_checkpoint: bool = False,
                 window: str = 'release', **kwargs):
        if window not in VINET_A_WINDOWS:
            raise UserError(f'window must be one of {sorted(VINET_A_WINDOWS)}, got {window!r}')
        kwargs = {**dict(clip_len=32, input_size=(256, 456), mean=(0.45, ) * 3,
                         std=(0.225, ) * 3, frame_offsets=VINET_A_WINDOWS[window]), **kwargs}
        super().__init__(name, pretrained=pretrained, checkpoint=checkpoint,
                         trust_checkpoint=trust_checkpoint, **kwargs)
        self.window = window
        self.backbone_checkpoint = backbone_checkpoint
        self.net = ViNetA(self.input_size, **(arch or {}))

    def load_pretrained(self) -> str:
        """The SlowFast-R50 backbone from ``backbone_checkpoint`` (an action model's file)."""
        path = self.backbone_checkpoint
        if not path:
            raise UserError(
                f'member {self.name!r}: ViNet-A\'s SlowFast backbone weights are not on a '
                'hub this code can reach; pass backbone_checkpoint=PATH (ACAR-Net\'s '
                'AVA_SLOWFAST_R50_ACAR_HR2O.pth.tar or SLOWFAST_R50_K400.pth.tar), '
                'checkpoint=PATH (the release), or pretrained=False')
        own = self.net.backbone.state_dict()
        state = _match_suffixes(self.read_weights(path), own)
        # heads and other parts of the action models are not ViNet-A's
        state = {k: v for k, v in state.items() if k in own}
        if not state:
            raise UserError(f'member {self.name!r}: {path} has no SlowFast-R50 parameters '
                            '(slow_conv1.weight, ...)')
        self.load_state(state, path, self.net.backbone)
        return path
