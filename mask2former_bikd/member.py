"""mmseg segmentors as Bi-KD members: Mask2Former and plain decode-head models (UPerNet, FCN...)."""
import copy
import math
import os
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import DefaultScope
from torch import Tensor

from bikd.checkpoint import download_weights, load_into, load_weights_file
from bikd.fileio import save_json, save_torch
from bikd.member import Member, MemberOutput
from bikd.registry import MEMBERS

# Added to per-pixel probabilities before the log, so a class with zero score stays finite.
EPS = 1e-6


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
    import yaml
    from mmengine.config.utils import _get_package_and_cfg_path
    from mmengine.utils import get_installed_path

    if '::' not in config:
        raise ValueError(f'checkpoint="zoo" needs a config shipped in mmseg (mmseg::...), got '
                         f'{config}')
    package, cfg_path = _get_package_and_cfg_path(config)
    folder = os.path.join(get_installed_path(package), '.mim', 'configs',
                          os.path.dirname(cfg_path))
    name = os.path.splitext(os.path.basename(cfg_path))[0]
    with open(os.path.join(folder, 'metafile.yaml')) as f:
        models = yaml.safe_load(f).get('Models', [])
    for entry in models:
        if entry.get('Name') == name and entry.get('Weights'):
            return entry['Weights']
    raise KeyError(f'{name} has no weights in {folder}/metafile.yaml')


def _drop_pretrained_init(cfg: dict) -> None:
    """Remove ``init_cfg=Pretrained`` entries (weights from a hub) from a model config."""
    for key, value in list(cfg.items()):
        if key == 'init_cfg' and isinstance(value, dict) and value.get('type') == 'Pretrained':
            cfg[key] = None
        elif key == 'pretrained' and isinstance(value, str):
            cfg[key] = None
        elif isinstance(value, dict):
            _drop_pretrained_init(value)


@MEMBERS.register_module()
class MMSegMember(Member):
    """Any mmseg segmentor (built by mmseg's registry from a standard model config) as a member.

    Args:
        config: the segmentor's mmseg config: a file, or the name of one shipped in mmseg
            (``mmseg::mask2former/mask2former_swin-t_8xb2-160k_ade20k-512x512.py``).
        name: member name; defaults to the config file's stem.
        cfg_options: dotted overrides of the config (``model.decode_head.num_queries=20``).
        checkpoint: the trained segmentor's weights: a local mmseg checkpoint, a URL, or
            ``'zoo'``: the weights mmseg's model zoo lists for ``config`` in its metafile
            (downloaded when reachable). Without it, ``pretrained=True`` keeps the
            config's backbone initialisation (e.g. ImageNet weights) and ``pretrained=False``
            initialises at random.
        distill: the per-pixel class distribution that is distilled: ``'normalized'`` (the
            semantic scores divided by their sum over classes; for Mask2Former the scores of
            its semantic inference, sum_q softmax(class_q) * sigmoid(mask_q)) or ``'softmax'``
            (a softmax over the scores, as the paper authors' code does). Decode-head models
            give class logits, distilled through a softmax either way.
        distill_stride: the distillation resolution, as a fraction of the training crop
            (4: the mask resolution of Mask2Former); shared by all members of a run.
        partition_loss: the per-image loss the ``loss`` partition compares: ``'task'`` (the
            segmentor's own loss, Eq. 6; comparable between Mask2Formers) or ``'pixel_ce'``
            (the cross-entropy of the distilled class distribution against the ground truth at
            the distillation resolution; comparable between any segmentors, e.g. Mask2Former
            with UPerNet).

    The per-sample task loss is the segmentor's own loss evaluated image by image (for
    Mask2Former the set criterion with Hungarian matching, BCE + Dice mask losses, class loss
    and the auxiliary decoder losses), so the loss partition (Eq. 6) compares members per image.
    """

    def __init__(self, config: Any, name: Optional[str] = None,
                 cfg_options: Optional[dict] = None, checkpoint: Optional[str] = None,
                 pretrained: bool = True, distill: str = 'normalized', distill_stride: int = 4,
                 partition_loss: str = 'task', trust_checkpoint: bool = False):
        if name is None:
            name = os.path.splitext(os.path.basename(config))[0] if isinstance(config, str) \
                else 'segmentor'
        super().__init__(name)
        if distill not in ('normalized', 'softmax'):
            raise ValueError(f"distill must be 'normalized' or 'softmax', got {distill!r}")
        if partition_loss not in ('task', 'pixel_ce'):
            raise ValueError(f"partition_loss must be 'task' or 'pixel_ce', got "
                             f'{partition_loss!r}')
        self.partition_loss = partition_loss
        import mmseg.models  # noqa: F401  (registers mmseg's modules)
        from mmseg.registry import MODELS as MMSEG_MODELS
        from mmengine.utils import import_modules_from_strings

        cfg = load_mmseg_config(config)
        if cfg_options:
            cfg.merge_from_dict(dict(cfg_options))
        if cfg.get('custom_imports'):
            import_modules_from_strings(**cfg['custom_imports'])
        model_cfg = copy.deepcopy(cfg.model)  # a ConfigDict: mmdet reads it by attribute
        if checkpoint or not pretrained:
            _drop_pretrained_init(model_cfg)
        with DefaultScope.overwrite_default_scope('mmseg'):
            self.segmentor = MMSEG_MODELS.build(model_cfg)
        self.model_config = cfg.pretty_text
        self.dataset_meta = self._dataset_meta(cfg)
        if checkpoint:
            self._load(checkpoint, trust_checkpoint, config)
        elif pretrained:
            self.segmentor.init_weights()
        self.distill = distill
        self.distill_stride = int(distill_stride)
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

    def _load(self, checkpoint: str, trust: bool, config: Any) -> None:
        if checkpoint == 'zoo':
            checkpoint = zoo_checkpoint_url(config)
        if checkpoint.startswith(('http://', 'https://')):
            state = download_weights(checkpoint, self.name, 'checkpoint=PATH (a local copy)',
                                     trust)
        else:
            state = load_weights_file(checkpoint, trust)
        load_into(self.segmentor, state, checkpoint, owner=self.name)

    @property
    def is_mask2former(self) -> bool:
        return hasattr(self.segmentor.decode_head, '_seg_data_to_instance_data')

    @property
    def num_classes(self) -> int:
        return int(self.segmentor.decode_head.num_classes)

    @property
    def partition_loss_kind(self) -> str:
        if self.partition_loss == 'pixel_ce':
            return 'pixel_ce'
        return 'mask2former_set_criterion' if self.is_mask2former else 'decode_head_loss'

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
        imgs = [(x.float() - pp.mean) / pp.std if pp._enable_normalize else x.float()
                for x in imgs]
        div = (pp.test_cfg or {}).get('size_divisor') or 1
        size = tuple(math.ceil(max(x.shape[d] for x in imgs) / div) * div for d in (1, 2))
        batch, pad_info = stack_batch(imgs, size=size, pad_val=pp.pad_val,
                                      seg_pad_val=pp.seg_pad_val)
        for sample, info in zip(data_samples, pad_info):
            sample.set_metainfo(info)
        return batch, data_samples

    def _distill_size(self, samples) -> Tuple[int, int]:
        h, w = samples[0].metainfo['img_shape'][:2]
        return math.ceil(h / self.distill_stride), math.ceil(w / self.distill_stride)

    def _crop_resize(self, maps: Tensor, padded_hw, samples) -> Tensor:
        """Feature-resolution maps of the padded batch -> the valid (unpadded) region at the
        shared distillation size."""
        h, w = samples[0].metainfo['img_shape'][:2]
        fh = math.ceil(maps.shape[-2] * h / padded_hw[0])
        fw = math.ceil(maps.shape[-1] * w / padded_hw[1])
        maps = maps[..., :fh, :fw]
        size = self._distill_size(samples)
        if tuple(maps.shape[-2:]) != size:
            maps = F.interpolate(maps, size=size, mode='bilinear', align_corners=False)
        return maps

    def _mask2former_train(self, feats, samples, padded_hw):
        head = self.segmentor.decode_head
        gt_instances, img_metas = head._seg_data_to_instance_data(samples)
        cls_scores, mask_preds = head(feats, samples)
        losses = []
        for i in range(len(samples)):
            parts = head.loss_by_feat([c[i:i + 1] for c in cls_scores],
                                      [m[i:i + 1] for m in mask_preds], [gt_instances[i]],
                                      [img_metas[i]])
            losses.append(sum(v.sum() for k, v in parts.items() if 'loss' in k))
        masks = self._crop_resize(mask_preds[-1], padded_hw, samples)
        probs = cls_scores[-1].float().softmax(-1)[..., :-1]
        scores = torch.einsum('nqc,nqhw->nchw', probs, masks.float().sigmoid())
        return torch.stack(losses), scores

    def _decode_head_train(self, feats, samples, padded_hw):
        """Per-image loss of a decode-head segmentor: each head's own loss modules (with their
        weights), per pixel, averaged per image the way mmseg averages over the batch (over all
        pixels, or over non-ignored ones with ``avg_non_ignore``)."""
        heads = [self.segmentor.decode_head]
        aux = getattr(self.segmentor, 'auxiliary_head', None)
        heads += list(aux) if isinstance(aux, torch.nn.ModuleList) else ([aux] if aux else [])
        gt = torch.stack([s.gt_sem_seg.data.squeeze(0) for s in samples]).long()
        valid = (gt != self.ignore_index).flatten(1).sum(1).clamp(min=1)
        loss, logits = 0, None
        for head in heads:
            out = head(feats)
            logits = out if logits is None else logits
            up = F.interpolate(out, size=gt.shape[-2:], mode='bilinear',
                               align_corners=head.align_corners)
            fns = head.loss_decode if isinstance(head.loss_decode, torch.nn.ModuleList) \
                else [head.loss_decode]
            for fn in fns:
                pixel = fn(up, gt, weight=None, ignore_index=self.ignore_index,
                           reduction_override='none').flatten(1).sum(1)
                loss = loss + pixel / (valid if getattr(fn, 'avg_non_ignore', False)
                                       else gt[0].numel())
        return loss, self._crop_resize(logits, padded_hw, samples)

    def forward_train(self, inputs, data_samples) -> MemberOutput:
        x, samples = self._preprocess(inputs, data_samples, training=True)
        feats = self.segmentor.extract_feat(x)
        padded_hw = x.shape[-2:]
        if self.is_mask2former:
            loss, scores = self._mask2former_train(feats, samples, padded_hw)
            log_probs = (scores / scores.sum(1, keepdim=True).clamp(min=EPS) + EPS).log()
            distill = log_probs if self.distill == 'normalized' else scores
        else:
            loss, distill = self._decode_head_train(feats, samples, padded_hw)
            log_probs = distill.float().log_softmax(1)
        partition_loss = None
        if self.partition_loss == 'pixel_ce':
            partition_loss = self._pixel_ce(log_probs.detach(), samples, padded_hw)
        return MemberOutput(loss=loss, distill=distill, partition_loss=partition_loss)

    def _pixel_ce(self, log_probs: Tensor, samples, padded_hw) -> Tensor:
        """Per-image mean of -log p(ground truth) over non-ignored pixels, at the distillation
        resolution (ground truth subsampled with nearest neighbours)."""
        gt = torch.stack([s.gt_sem_seg.data for s in samples]).float()  # [N, 1, Hp, Wp]
        gt = self._crop_resize_nearest(gt, padded_hw, samples, log_probs.shape[-2:])
        gt = gt.squeeze(1).long()
        valid = gt != self.ignore_index
        nll = -log_probs.gather(1, gt.clamp(0, self.num_classes - 1).unsqueeze(1)).squeeze(1)
        return (nll * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp(min=1)

    @staticmethod
    def _crop_resize_nearest(maps: Tensor, padded_hw, samples, size) -> Tensor:
        h, w = samples[0].metainfo['img_shape'][:2]
        maps = maps[..., :min(h, padded_hw[0]), :min(w, padded_hw[1])]
        return F.interpolate(maps, size=tuple(size), mode='nearest')

    # ----------------------------------------------------------------------------- inference
    def predict(self, inputs, data_samples) -> Tensor:
        """Per-pixel class probabilities ``[N, C, H, W]`` at each image's original size, padded
        (bottom/right, zeros) to the largest image of the batch."""
        x, samples = self._preprocess(inputs, data_samples, training=False)
        out = self.segmentor.predict(x, samples)
        probs = []
        for s in out:
            logits = s.seg_logits.data.float()  # [C, H, W] at the original size
            if self.is_mask2former:
                probs.append(logits / logits.sum(0, keepdim=True).clamp(min=EPS))
            else:
                probs.append(logits.softmax(0))
        h = max(p.shape[-2] for p in probs)
        w = max(p.shape[-1] for p in probs)
        return torch.stack([F.pad(p, (0, w - p.shape[-1], 0, h - p.shape[-2])) for p in probs])

    # ----------------------------------------------------------------------------- export
    def export(self, directory: str, stem: str) -> Dict[str, Any]:
        """``<stem>.pth``: an mmseg checkpoint (``state_dict`` + ``meta``) that mmseg's
        ``init_model(<stem>.py, <stem>.pth)`` loads; ``<stem>.py``: the model config."""
        weights = os.path.join(directory, f'{stem}.pth')
        state = {k: v.detach().cpu() for k, v in self.segmentor.state_dict().items()}
        save_torch(dict(state_dict=state, meta=dict(dataset_meta=self.dataset_meta)), weights)
        config = os.path.join(directory, f'{stem}.py')
        with open(config + '.tmp', 'w') as f:
            f.write(self.model_config)
        os.replace(config + '.tmp', config)
        info = dict(format='mmseg', member=self.name, checkpoint=os.path.basename(weights),
                    config=os.path.basename(config), num_classes=self.num_classes,
                    load=f'mmseg.apis.init_model({os.path.basename(config)!r}, '
                         f'{os.path.basename(weights)!r})')
        save_json(info, os.path.join(directory, f'{stem}.json'))
        return info
