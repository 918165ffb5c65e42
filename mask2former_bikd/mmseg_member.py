"""The common part of mmseg segmentors as members: the model config, the build, the
preprocessing and the export as an mmseg checkpoint. One subclass per kind of segmentor gives
the per-image task loss, the distilled distribution and the prediction:
:class:`MMSegMask2FormerMember` (Mask2Former) and :class:`MMSegDecodeHeadMember` (UPerNet,
FCN, ... any decode-head model).

``type: MMSegMember`` in a config is :func:`build_mmseg_member`: it builds the kind its model
config names.
"""
import copy
import math
import os
from typing import Any, Dict, Optional, Tuple

from mmengine.config import Config
from mmengine.registry import DefaultScope
import torch
from torch import Tensor, nn

from bikd.fileio import save_text
from bikd.members import MemberOutput
from bikd.registry import MEMBERS

from .segmentation_member import SegmentationMember
from bikd.errors import UserError


def load_mmseg_config(config: Any) -> Config:
    """An mmseg model config from a path, an ``mmseg::...`` name of a config shipped in the
    package, or a dict."""
    if isinstance(config, dict):
        return Config(config)
    if '::' in config:
        from mmengine.hub import get_config
        return get_config(config)
    if not os.path.isfile(config):
        raise FileNotFoundError(f'mmseg config not found: {config}')
    return Config.fromfile(config)


def zoo_checkpoint_url(config: str) -> str:
    """The model-zoo weights of a config shipped in mmseg, from the ``metafile.yaml`` beside it
    (``mmseg::mask2former/mask2former_swin-t_8xb2-160k_ade20k-512x512.py`` -> its URL)."""
    from mmengine.hub import get_config

    if not isinstance(config, str) or '::' not in config:
        raise UserError(f'checkpoint="zoo" needs a config shipped in mmseg (mmseg::...), got '
                        f'{config}')
    try:
        url = get_config(config, pretrained=True).get('model_path')
    except AssertionError:  # mmengine asserts that the metafile entry has weights
        url = None
    if not url:
        raise UserError(f'{config} has no weights in mmseg\'s metafile.yaml')
    return url


def member_kind(config: Any, cfg_options: Optional[dict] = None) -> type:
    """The member class for a segmentor config: the subclass of :class:`MMSegMemberBase` that
    handles the class of its decode head."""
    import mmseg.models  # noqa: F401  (registers mmseg's modules)
    from mmseg.registry import MODELS as MMSEG_MODELS

    cfg = load_mmseg_config(config)
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    head = cfg.model.get('decode_head', {}).get('type')
    with DefaultScope.overwrite_default_scope('mmseg'):
        head_cls = MMSEG_MODELS.get(head) if isinstance(head, str) else None
    kinds = [k for k in MMSegMemberBase.__subclasses__() if head_cls and k.handles(head_cls)]
    if not kinds:
        raise UserError(f'no segmentation member handles the decode head {head!r} of {config}')
    return kinds[0]


class MMSegMemberBase(SegmentationMember):
    """An mmseg segmentor (built by mmseg's registry from a standard model config) as a
    member: the common part of its kinds (:func:`build_mmseg_member` chooses one).

    Args:
        config: the segmentor's mmseg config: a file, or the name of one shipped in mmseg
            (``mmseg::mask2former/mask2former_swin-t_8xb2-160k_ade20k-512x512.py``).
        name: member name; defaults to the config file's stem.
        cfg_options: dotted overrides of the config (``model.decode_head.num_queries=20``).
        checkpoint: the trained segmentor's weights: a local mmseg checkpoint, a URL, or
            ``'zoo'``: the weights mmseg's model zoo lists for ``config`` in its metafile
            (downloaded when reachable). Without it, ``pretrained=True`` applies the
            config's initialisation (``init_cfg``: e.g. the backbone's ImageNet weights) and
            ``pretrained=False`` keeps the random one.
        distribution, distill_stride, partition_loss: see :class:`SegmentationMember`.
        trust_checkpoint: see :class:`bikd.Member`.

    The per-sample task loss is the segmentor's own loss evaluated image by image, so the
    loss partition (Eq. 6) compares members per image.
    """
    export_format = 'mmseg'

    def __init__(self, config: Any, name: Optional[str] = None,
                 cfg_options: Optional[dict] = None, checkpoint: Optional[str] = None,
                 pretrained: bool = True, distribution: str = 'normalized',
                 distill_stride: int = 4, partition_loss: str = 'task',
                 trust_checkpoint: bool = False):
        if name is None:
            name = os.path.splitext(os.path.basename(config))[0] if isinstance(config, str) \
                else 'segmentor'
        if checkpoint == 'zoo':
            checkpoint = zoo_checkpoint_url(config)
        super().__init__(name, pretrained, checkpoint, trust_checkpoint, distribution,
                         distill_stride, partition_loss)
        import mmseg.models  # noqa: F401  (registers mmseg's modules)
        from mmengine.utils import import_modules_from_strings
        from mmseg.registry import MODELS as MMSEG_MODELS

        cfg = load_mmseg_config(config)
        if cfg_options:
            cfg.merge_from_dict(dict(cfg_options))
        if cfg.get('custom_imports'):
            import_modules_from_strings(**cfg['custom_imports'])
        model_cfg = copy.deepcopy(cfg.model)  # a ConfigDict: mmdet reads it by attribute
        with DefaultScope.overwrite_default_scope('mmseg'):
            self.segmentor = MMSEG_MODELS.build(model_cfg)
        self.model_config = cfg.pretty_text
        self.dataset_meta = self._dataset_meta(cfg)
        self.ignore_index = getattr(self.segmentor.decode_head, 'ignore_index', 255)

    @staticmethod
    def _dataset_meta(cfg: Config) -> Optional[dict]:
        """Class names and palette of the dataset the config trains on (written into the
        exported checkpoint, where mmseg's ``init_model`` reads them)."""
        from mmseg.registry import DATASETS as MMSEG_DATASETS
        dataset_type = cfg.get('train_dataloader', {}).get('dataset', {}).get('type')
        dataset_cls = MMSEG_DATASETS.get(dataset_type) if isinstance(dataset_type, str) else None
        meta = getattr(dataset_cls, 'METAINFO', None)
        return {k: list(v) for k, v in meta.items()} if meta else None

    @property
    def weights_module(self) -> nn.Module:
        return self.segmentor

    def load_pretrained(self) -> str:
        """The config's own initialisation (``init_cfg``: e.g. the backbone's ImageNet
        weights), which mmengine applies only when asked (the constructor builds, as every
        member's)."""
        self.segmentor.init_weights()
        return 'the model config\'s init_cfg'

    @property
    def num_classes(self) -> int:
        return int(self.segmentor.decode_head.num_classes)

    @classmethod
    def handles(cls, head_cls: type) -> bool:
        """Whether this kind of member takes segmentors with this decode-head class."""
        return False

    # ----------------------------------------------------------------------------- training
    def _preprocess(self, inputs, data_samples, training: bool):
        """The segmentor's own data preprocessor (colour order, mean, std, padding). In
        evaluation, images of different sizes share a batch: each is padded (bottom/right) to
        the largest, rounded up to the test size divisor; mmseg crops the padding off again."""
        pp = self.segmentor.data_preprocessor
        if training:
            data = pp(dict(inputs=inputs, data_samples=data_samples), True)
            return data['inputs'], data['data_samples']
        from mmseg.utils import stack_batch
        imgs = [x[[2, 1, 0]] if pp.channel_conversion and x.size(0) == 3 else x for x in inputs]
        mean, std = getattr(pp, 'mean', None), getattr(pp, 'std', None)  # buffers, if normalising
        imgs = [(x.float() - mean) / std if mean is not None else x.float() for x in imgs]
        div = (pp.test_cfg or {}).get('size_divisor') or 1
        size = tuple(math.ceil(max(x.shape[d] for x in imgs) / div) * div for d in (1, 2))
        batch, pad_info = stack_batch(imgs, size=size, pad_val=pp.pad_val,
                                      seg_pad_val=pp.seg_pad_val)
        for sample, info in zip(data_samples, pad_info):
            sample.set_metainfo(info)
        return batch, data_samples

    def task_forward(self, feats, samples, padded_hw) -> Tuple[Tensor, Tensor, Tensor]:
        """``(per-image task loss [N], distilled tensor [N, C, h, w], its log-probabilities)``
        at the distillation resolution; implemented per kind of segmentor."""
        raise NotImplementedError

    def forward_train(self, inputs, data_samples) -> MemberOutput:
        x, samples = self._preprocess(inputs, data_samples, training=True)
        feats = self.segmentor.extract_feat(x)
        loss, logits, log_probs = self.task_forward(feats, samples, x.shape[-2:])
        gt = torch.stack([s.gt_sem_seg.data[0] for s in samples])
        return self.member_output(loss, logits, log_probs, gt, samples[0].metainfo['img_shape'])

    # ----------------------------------------------------------------------------- inference
    def probabilities(self, seg_logits: Tensor) -> Tensor:
        """mmseg's per-pixel scores ``[C, H, W]`` of one image -> class probabilities."""
        raise NotImplementedError

    def predict(self, inputs, data_samples) -> Tensor:
        """Per-pixel class probabilities ``[N, C, H, W]`` at each image's original size, padded
        (bottom/right, zeros) to the largest image of the batch."""
        x, samples = self._preprocess(inputs, data_samples, training=False)
        out = self.segmentor.predict(x, samples)
        return self.pad_stack([self.probabilities(s.seg_logits.data.float()) for s in out])

    # ----------------------------------------------------------------------------- export
    def export_payload(self) -> Any:
        """An mmseg checkpoint: ``state_dict`` + ``meta`` (the dataset's classes)."""
        return dict(state_dict=super().export_payload(),
                    meta=dict(dataset_meta=self.dataset_meta))

    def export_files(self, directory: str, stem: str) -> Dict[str, Any]:
        """``<stem>.py``: the model config, for ``mmseg.apis.init_model(<stem>.py,
        <stem>.pth)``."""
        save_text(self.model_config, os.path.join(directory, f'{stem}.py'))
        return dict(config=f'{stem}.py')

    def describe(self, stem: str) -> Dict[str, Any]:
        return dict(num_classes=self.num_classes,
                    load=f'mmseg.apis.init_model({stem + ".py"!r}, {stem + ".pth"!r})')


def build_mmseg_member(config: Any, **kwargs) -> 'MMSegMemberBase':
    """Any mmseg segmentor as a member (``type: MMSegMember``): the kind of member its
    decode head calls for (:class:`~mask2former_bikd.mmseg_mask2former.MMSegMask2FormerMember`
    or :class:`~mask2former_bikd.mmseg_decode_head.MMSegDecodeHeadMember`), built with
    the arguments of :class:`MMSegMemberBase`."""
    return member_kind(config, kwargs.get('cfg_options'))(config, **kwargs)


#: the class whose arguments the factory takes (the config's key checks read them)
build_mmseg_member.builds = MMSegMemberBase
MEMBERS.register_module(name='MMSegMember', module=build_mmseg_member)
