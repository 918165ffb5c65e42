"""The official Mask2Former (a detectron2 project, the paper's own models) as a member."""
import logging
import os
import warnings
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from mmengine.logging import print_log
from torch import Tensor, nn

from bikd import compat
from bikd.members import MemberOutput
from bikd.metrics import StructuredPrediction
from bikd.registry import MEMBERS

from . import d2
from .set_criterion import set_losses
from .segmentation_member import PROBABILITY_FLOOR, SegmentationMember
from bikd.errors import UserError


def targets_from_instances(instances: Sequence[Any], padded_hw: Sequence[int],
                           device: torch.device) -> List[Dict[str, Tensor]]:
    """Mask2Former's training targets from detectron2 ``Instances`` (``gt_classes``,
    ``gt_masks`` ``[n, H, W]``), as its panoptic and instance dataset mappers make them: the
    masks padded to the batch's size, as ``MaskFormer.prepare_targets`` does."""
    targets = []
    for inst in instances:
        inst = inst.to(device)
        masks = inst.gt_masks
        masks = getattr(masks, 'tensor', masks)  # BitMasks or a tensor
        padded = torch.zeros((masks.shape[0], *padded_hw), dtype=masks.dtype, device=device)
        padded[:, :masks.shape[1], :masks.shape[2]] = masks
        targets.append(dict(labels=inst.gt_classes, masks=padded))
    return targets


def labels_from_targets(targets: Sequence[Dict[str, Tensor]], padded_hw: Sequence[int],
                        ignore_index: int) -> Tensor:
    """``LongTensor [N, H, W]``: each pixel's class from the target masks covering it (the
    ignore label where none does), for the pixel cross-entropy of the partition."""
    out = torch.full((len(targets), *padded_hw), ignore_index, dtype=torch.long,
                     device=targets[0]['masks'].device if targets else None)
    for i, t in enumerate(targets):
        for label, mask in zip(t['labels'], t['masks'].bool()):
            out[i][mask] = int(label)
    return out


def targets_from_sem_seg(sem_segs: Sequence[Tensor], padded_hw: Sequence[int],
                         ignore_index: int) -> List[Dict[str, Tensor]]:
    """Mask2Former's training targets from semantic labels ``[H, W]``: one binary mask per
    class present (ignored pixels excluded), padded to the batch's size, as its semantic
    dataset mapper and ``MaskFormer.prepare_targets`` make them."""
    targets = []
    for sem in sem_segs:
        labels = torch.unique(sem)
        labels = labels[labels != ignore_index]
        masks = torch.zeros((len(labels), *padded_hw), dtype=torch.bool, device=sem.device)
        masks[:, :sem.shape[0], :sem.shape[1]] = sem[None] == labels[:, None, None]
        targets.append(dict(labels=labels.long(), masks=masks))
    return targets


@MEMBERS.register_module()
class Mask2FormerMember(SegmentationMember):
    """The official Mask2Former (``facebookresearch/Mask2Former`` on detectron2) as a member,
    built from its detectron2 config, with its official weights.

    Args:
        config: a Mask2Former detectron2 config: a path, or its name in the Mask2Former
            repository (``configs/ade20k/semantic-segmentation/swin/
            maskformer2_swin_tiny_bs16_160k.yaml``).
        name: member name; defaults to the config file's stem.
        opts: detectron2 config overrides, ``[KEY, value, ...]`` as on Mask2Former's command
            line (``['MODEL.MASK_FORMER.NUM_OBJECT_QUERIES', 20]``).
        checkpoint: the trained model: an official ``model_final_*.pkl`` (read without
            running pickle code: numpy arrays and plain containers only, unless
            ``trust_checkpoint``) or a detectron2 ``.pth`` checkpoint (what the export writes).
        pretrained: without ``checkpoint``, load the config's ``MODEL.WEIGHTS`` (the
            backbone's ImageNet weights, matched by name as detectron2 does); ``False``:
            random initialisation.
        test_resize: in evaluation, resize each image as detectron2's test mapper does
            (``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``, PIL bilinear),
            so that evaluation on images at their original size is the official protocol; an
            image the pipeline already resized that way is left as it is.
        batched_inference: in evaluation, run a batch's images through the model together.
            ``False`` (the default): one at a time, as detectron2 evaluates (batch 1),
            whatever the loader's batch size, so that every result is the official model's.
            ``True`` is faster on a GPU, but the batch is padded to its largest image, which
            changes the results of the others (the member warns when it batches).
        distribution, distill_stride, partition_loss, trust_checkpoint: see
            :class:`~mask2former_bikd.segmentation_member.SegmentationMember`.

    Task loss (what trains the member, :attr:`~bikd.members.base.MemberOutput.objective`): the
    official training loss of the batch, ``SetCriterion`` (Hungarian matching, class loss with
    the "no object" weight, BCE + Dice mask losses on sampled points, auxiliary losses of every
    decoder layer, each weighted by the config) normalised over the batch and, under DDP, over
    the processes, as ``MaskFormer.forward`` computes it. Per-image loss (what the partition
    compares): the same criterion on the image's own queries and masks, normalised by its own
    number of masks (its official loss at batch 1), from the same matching and sampled points
    and without any collective (:func:`~mask2former_bikd.set_criterion.set_losses`).
    Distilled: its semantic inference at mask resolution. Prediction: its own inference
    (``MaskFormer.forward`` in evaluation) at each image's original size, one image at a time
    unless ``batched_inference``; the results are those its config's ``TEST.SEMANTIC_ON`` /
    ``INSTANCE_ON`` / ``PANOPTIC_ON`` ask for.

    It takes the suite's segmentation batches (mmseg's pipeline: BGR ``uint8`` images and
    ``SegDataSample``) and detectron2's (a list of dicts with ``image`` in the config's
    ``INPUT.FORMAT`` and ``sem_seg``).
    """
    export_format = 'detectron2'
    task_loss_kind = 'mask2former_set_criterion'
    #: checkpoint entries the config determines, which a checkpoint may lack
    DERIVED_KEYS = ('criterion.empty_weight', )

    def __init__(self, config: str, name: Optional[str] = None, opts: Optional[list] = None,
                 checkpoint: Optional[str] = None, pretrained: bool = True,
                 distribution: str = 'normalized', distill_stride: int = 4,
                 partition_loss: str = 'task', trust_checkpoint: bool = False,
                 test_resize: bool = True, batched_inference: bool = False):
        super().__init__(name or os.path.splitext(os.path.basename(config))[0], pretrained,
                         checkpoint, trust_checkpoint, distribution, distill_stride,
                         partition_loss)
        cfg = d2.load_d2_config(config, opts)
        self.config_text = cfg.dump()  # as configured, for the export
        cfg.defrost()
        cfg.MODEL.DEVICE = 'cpu'  # the engine moves the member to its device
        from detectron2.modeling import build_model
        self.model: nn.Module = build_model(cfg)
        # the model's results (what detectron2's evaluators score) are the ones its config asks
        # for; the semantic inference, which the ensemble averages, is computed in evaluation
        # in any case (predict) and given as a result only where the config asks for it
        self.semantic_on = bool(cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON)
        self.batched_inference = bool(batched_inference)
        self.backbone_weights = cfg.MODEL.WEIGHTS
        self.ignore_index = int(cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE)
        self.input_format = cfg.INPUT.FORMAT
        self._num_classes = int(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
        # the criterion sums a loss per supervised decoder output: members with different
        # numbers of them have task losses of different scales (check_partition warns)
        mf = cfg.MODEL.MASK_FORMER
        outputs = int(mf.DEC_LAYERS) if mf.DEEP_SUPERVISION else 1
        self.task_loss_kind = f'mask2former_set_criterion over {outputs} decoder outputs'
        from detectron2.data.detection_utils import build_augmentation
        self.test_augmentations = build_augmentation(cfg, is_train=False) if test_resize else []

    @property
    def num_classes(self) -> int:
        return self._num_classes

    # ----------------------------------------------------------------------------- weights
    @property
    def weights_module(self) -> nn.Module:
        return self.model

    def local_copy(self, url: str, what: str) -> str:
        """A downloaded file's local copy (detectron2's file cache), or an error that says
        what to pass instead."""
        from detectron2.utils.file_io import PathManager
        try:
            return PathManager.get_local_path(url)
        except Exception as e:  # noqa: BLE001 - downloads fail in many ways
            raise UserError(f'member {self.name!r}: cannot download {what} {url} '
                            f'({type(e).__name__}: {e}); without access, download it by hand '
                            'and pass its local path') from e

    def read_weights(self, source: str) -> Dict[str, Tensor]:
        if source.startswith(('http://', 'https://')):
            source = self.local_copy(source, 'the checkpoint')
        if source.endswith('.pkl'):  # (checked against its digest file, if any, as it is read)
            state, heuristics = d2.pickle_state(d2.load_pickle(source, self.trust_checkpoint),
                                                source)
            if heuristics:
                raise UserError(f'{source} is not a detectron2 model checkpoint (it has no '
                                '"model" and "__author__" entries, as backbone weights for '
                                'ImageNet initialisation do); pass it as the config\'s '
                                'MODEL.WEIGHTS with pretrained=True instead')
            return state
        return super().read_weights(source)

    def from_native(self, state: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The official checkpoints' names -> the model's. Files written before Mask2Former's
        head put its pixel decoder in a submodule name its parameters ``sem_seg_head.<x>``
        (not ``sem_seg_head.pixel_decoder.<x>``); the head renames them itself when a file
        carries no version, which would also rename a file already in today's layout. The map
        here renames only what needs it, and the result is loaded as today's layout."""
        own = self.model.state_dict()
        out = OrderedDict()
        for key, value in state.items():
            if key not in own and key.startswith('sem_seg_head.') and \
                    not key.startswith('sem_seg_head.predictor.'):
                renamed = 'sem_seg_head.pixel_decoder.' + key[len('sem_seg_head.'):]
                key = renamed if renamed in own else key
            out[key] = value
        for key in self.DERIVED_KEYS:  # a checkpoint without them keeps the config's values
            if key in own and key not in out:
                out[key] = own[key]
        compat.set_state_dict_metadata(out, compat.state_dict_metadata(own))  # today's layout
        return out

    def load_pretrained(self) -> str:
        """The config's ``MODEL.WEIGHTS`` (ImageNet backbone weights), matched to the model's
        names with detectron2's heuristics; the rest of the model keeps its initialisation."""
        if not self.backbone_weights:
            return 'random initialisation (the config names no MODEL.WEIGHTS)'
        from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
        path = self.local_copy(self.backbone_weights, 'the config\'s MODEL.WEIGHTS')
        if path.endswith('.pkl'):
            state, heuristics = d2.pickle_state(d2.load_pickle(path, self.trust_checkpoint), path)
        else:
            state, heuristics = self.read_weights(path), True
        if heuristics:
            state = align_and_update_state_dicts(self.model.state_dict(), state,
                                                 c2_conversion='blobs' in state)
        if not state:
            raise UserError(f'member {self.name!r}: no parameter of {path} matches the model')
        self.model.load_state_dict(state, strict=False)
        return path

    # ----------------------------------------------------------------------------- batches
    def batched_inputs(self, inputs: Any, data_samples: Any, with_labels: bool) -> List[dict]:
        """The batch as detectron2 models take it: a list of dicts with ``image`` (in the
        config's channel order), ``height`` / ``width`` (the size to predict at) and, with
        labels, ``sem_seg``. A detectron2 batch (dicts as detectron2's dataset mappers make
        them: with ``instances`` for panoptic and instance models) passes through."""
        if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], dict) and \
                (data_samples is None or all(s is None for s in data_samples)):
            return list(inputs)
        out = []
        for image, sample in zip(inputs, data_samples):
            if self.input_format == 'RGB' and image.shape[0] == 3:
                image = image[[2, 1, 0]]  # the suite's images are BGR, as mmcv reads them
            if not with_labels and self.test_augmentations:
                image = self.test_resize(image)
            h, w = sample.metainfo.get('ori_shape', image.shape[-2:])[:2]
            item = dict(image=image, height=int(h), width=int(w))
            if with_labels:
                item['sem_seg'] = sample.gt_sem_seg.data[0].long()
            out.append(item)
        return out

    def test_resize(self, image: Tensor) -> Tensor:
        """``uint8 [3, H, W]`` -> the image detectron2's test mapper would give the model."""
        from detectron2.data import transforms as T
        array = image.permute(1, 2, 0).cpu().numpy()
        aug = T.AugInput(array)
        T.AugmentationList(self.test_augmentations)(aug)
        return torch.from_numpy(aug.image.copy()).permute(2, 0, 1).to(image.device)

    def _images(self, batch: List[dict]):
        from detectron2.structures import ImageList
        images = [(x['image'].to(self.model.device) - self.model.pixel_mean) /
                  self.model.pixel_std for x in batch]
        return ImageList.from_tensors(images, self.model.size_divisibility)

    # ----------------------------------------------------------------------------- training
    def forward_train(self, inputs, data_samples) -> MemberOutput:
        batch = self.batched_inputs(inputs, data_samples, with_labels=True)
        images = self._images(batch)
        outputs = self.model.sem_seg_head(self.model.backbone(images.tensor))
        padded_hw = images.tensor.shape[-2:]
        device = images.tensor.device
        if 'instances' in batch[0]:  # panoptic or instance targets, as detectron2 maps them
            targets = targets_from_instances([x['instances'] for x in batch], padded_hw, device)
            gt = [x['sem_seg'].to(device) for x in batch] if 'sem_seg' in batch[0] else \
                list(labels_from_targets(targets, padded_hw, self.ignore_index))
        else:
            gt = [x['sem_seg'].to(device) for x in batch]
            targets = targets_from_sem_seg(gt, padded_hw, self.ignore_index)
        per_image, objective = set_losses(self.model.criterion, outputs, targets)
        valid_hw = images.image_sizes[0]
        masks = self.crop_resize(outputs['pred_masks'], padded_hw, valid_hw)
        logits, log_probs = self.distilled(self.mask_classification_scores(
            outputs['pred_logits'], masks))
        padded_gt = torch.full((len(gt), *padded_hw), self.ignore_index, dtype=torch.long,
                               device=images.tensor.device)
        for i, g in enumerate(gt):
            padded_gt[i, :g.shape[0], :g.shape[1]] = g
        out = self.member_output(per_image, logits, log_probs, padded_gt, valid_hw)
        out.objective = objective
        return out

    # ----------------------------------------------------------------------------- inference
    def predict(self, inputs, data_samples) -> Union[Tensor, StructuredPrediction]:
        """Per-pixel class probabilities ``[N, C, H, W]`` at each image's original size (its
        semantic inference normalised over the classes), padded to the largest image. A
        panoptic or instance model gives a :class:`~bikd.metrics.StructuredPrediction`: those
        probabilities, and each image's result as the model gives it (``panoptic_seg``,
        ``instances``, ``sem_seg``: those its config's ``TEST`` flags ask for) for
        detectron2's evaluators. The images run one at a time, as detectron2 evaluates, unless
        ``batched_inference``."""
        batch = self.batched_inputs(inputs, data_samples, with_labels=False)
        self.say_how_it_evaluates(len(batch))
        # the semantic inference is what the ensemble averages: computed whatever the config
        # says (it changes none of the model's other results), given as a result where it asks
        self.model.semantic_on = True
        try:
            if self.batched_inference:
                results = self.model(batch)
            else:  # as detectron2 evaluates: one image at a time, no padding to another's size
                results = [r for item in batch for r in self.model([item])]
        finally:
            self.model.semantic_on = self.semantic_on
        probs = self.pad_stack([
            r['sem_seg'] / r['sem_seg'].sum(0, keepdim=True).clamp(min=PROBABILITY_FLOOR)
            for r in results])
        if not self.semantic_on:
            for r in results:
                del r['sem_seg']
        if any(('panoptic_seg' in r or 'instances' in r) for r in results):
            return StructuredPrediction(probs, list(results))
        return probs

    _said_how = False

    def say_how_it_evaluates(self, batch_size: int) -> None:
        """Say once how the member evaluates: one image at a time (detectron2's protocol), or
        batched, with a warning that padding changes the results."""
        if self._said_how:
            return
        if self.batched_inference and batch_size > 1:
            self._said_how = True
            warnings.warn(
                f'member {self.name!r} evaluates {batch_size} images at once '
                '(batched_inference=True): each batch is padded to its largest image, which '
                'changes the results of the others, so PQ / AP / mIoU are not the official '
                'model\'s; detectron2 evaluates one image at a time (batched_inference=False, '
                'the default)', RuntimeWarning)
        elif not self.batched_inference:
            self._said_how = True
            print_log(f'member {self.name!r} evaluates one image at a time, as detectron2 does '
                      '(batch 1, whatever the loader\'s batch size; batched_inference=True '
                      'batches them, with padding)', logger='current', level=logging.INFO)

    # ----------------------------------------------------------------------------- export
    def export_payload(self) -> Any:
        """A detectron2 checkpoint: what ``DetectionCheckpointer`` (and so Mask2Former's
        ``train_net.py ... MODEL.WEIGHTS``) loads."""
        return dict(model=super().export_payload(),
                    __author__='bikd (Bi-KD fine-tuning of the official Mask2Former)')

    def export_files(self, directory: str, stem: str) -> Dict[str, Any]:
        """``<stem>.yaml``: the model's detectron2 config, complete (no ``_BASE_``)."""
        from bikd.fileio import save_text
        save_text(self.config_text, os.path.join(directory, f'{stem}.yaml'))
        return dict(config=f'{stem}.yaml')

    def describe(self, stem: str) -> Dict[str, Any]:
        return dict(num_classes=self.num_classes,
                    load=f'python train_net.py --config-file {stem}.yaml --eval-only '
                         f'MODEL.WEIGHTS {stem}.pth   (Mask2Former\'s train_net.py)')
