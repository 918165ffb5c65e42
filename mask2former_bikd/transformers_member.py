"""Hugging Face ``transformers`` segmenters as members: the ``AutoModelForSemanticSegmentation``
family (SegFormer, UperNet, BEiT, DPT, MobileViT, ...) and the universal-segmentation models
(Mask2Former, MaskFormer) used for semantic segmentation."""
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from bikd.members.hf import ImagePreprocessing, TransformersModel, require_transformers
from bikd.members import MemberOutput
from bikd.registry import MEMBERS

from .segmentation_member import PROBABILITY_FLOOR, SegmentationMember
from bikd.errors import UserError

KINDS = {'AutoModelForSemanticSegmentation': 'semantic',
         'AutoModelForUniversalSegmentation': 'universal'}
#: universal models this member does not take, and why
UNSUPPORTED = {'oneformer': 'takes a task prompt and, in training, text queries from its '
                            'tokenizer: this member does not feed them yet (Mask2Former and '
                            'MaskFormer need none)'}


@MEMBERS.register_module()
class TransformersSegmentationMember(TransformersModel, SegmentationMember):
    """A ``transformers`` segmenter as a member, for semantic segmentation.

    It takes the suite's segmentation batches (mmseg's pipeline: BGR ``uint8`` images and
    ``SegDataSample``) and feeds its model what its image processor makes of each image (in
    RGB, the order the processors take): in evaluation every step and option of the
    processor's class (resize by its size rules and filter, DPT's ``keep_aspect_ratio``,
    ``ensure_multiple_of`` and centred padding to ``size_divisor``, (Mask)Former's
    ``size_divisor`` and ``pad_size``, centre crop, rescale, normalisation, MobileViT's BGR
    order and no normalisation), as the processor's torchvision backend computes them, so the
    model's input equals the processor's ``pixel_values`` for the image (see
    :class:`bikd.members.hf.ImagePreprocessing`; a processor it cannot reproduce is refused in one
    line naming the option). In training, and with ``test_resize: false``, only the steps on
    values apply: the data pipeline's crops are the model's input size. Images of a batch are
    padded bottom/right to the largest (zeros after normalisation, as the processors pad).

    Labels are the data's. A processor with ``do_reduce_labels`` (the model's class k is the
    annotation's k + 1, 0 no class) needs labels reduced so by the data pipeline (mmseg's
    ``LoadAnnotations`` with ``reduce_zero_label: true``, as the ADE20K configs have it): a
    batch whose samples say they are not is refused in one line, as training and evaluation
    would otherwise count the model's classes against other labels. The processors'
    ``ignore_index`` and ``num_labels`` concern annotation maps: ``ignore_index`` here is the
    data's.

    - **Semantic models** (``AutoModelForSemanticSegmentation``: SegFormer, UperNet, BEiT, DPT,
      MobileViT): per-image task loss, the model's own loss on that image: the pixel
      cross-entropy of its logits upsampled to the labels (ignored pixels left out), plus
      ``auxiliary_loss_weight`` times its auxiliary head's where it has one. Distilled: its
      per-pixel class distribution at the run's distillation resolution.
    - **Universal models** (``AutoModelForUniversalSegmentation``: Mask2Former, MaskFormer):
      per-image task loss, the Hungarian-matched set loss the model computes (class, mask and
      dice losses of every decoder layer, as its ``get_loss_dict`` weights them), on each
      image's slice, as the official Mask2Former member does with ``SetCriterion``. Distilled:
      its semantic inference at mask resolution.

    Prediction: per-pixel probabilities at each image's original size, from the model
    processor's own ``post_process_semantic_segmentation`` of the image's region of the
    batch's output (the scores it takes its argmax of: softmax for the semantic models,
    normalised over the classes for the universal ones): the processor's pipeline, image by
    image.

    Args:
        model: a hub id (``nvidia/segformer-b0-finetuned-ade-512-512``) or a
            ``save_pretrained`` folder: the architecture, and with ``pretrained`` its weights.
        name: member name; defaults to the last part of ``model``.
        num_classes: the label space (the config's ``num_labels``); a release of another size
            gets a new head.
        checkpoint, pretrained, trust_remote_code, config_overrides: see
            :class:`~classification_bikd.transformers_member.TransformersClassifierMember`.
        test_resize: resize, crop and pad images in evaluation as the image processor
            does.
        ignore_index: the label of ignored pixels in the data (mmseg's 255).
        distribution, distill_stride, partition_loss, trust_checkpoint: see
            :class:`~mask2former_bikd.segmentation_member.SegmentationMember`.
    """

    def __init__(self, model: str, name: Optional[str] = None,
                 num_classes: Optional[int] = None, checkpoint: Optional[str] = None,
                 pretrained: bool = True, trust_remote_code: bool = False,
                 config_overrides: Optional[dict] = None, test_resize: bool = True,
                 ignore_index: int = 255, distribution: str = 'normalized',
                 distill_stride: int = 4, partition_loss: str = 'task',
                 trust_checkpoint: bool = False):
        super().__init__(name or str(model).rstrip('/').split('/')[-1], pretrained, checkpoint,
                         trust_checkpoint, distribution, distill_stride, partition_loss)
        overrides = dict(config_overrides or {})
        if num_classes is not None:
            overrides['num_labels'] = int(num_classes)
        self.kind = self._build(model, overrides, trust_remote_code)
        if self.image_processor is None:
            raise UserError(f'member {self.name!r}: {model} ships no image processor '
                            'configuration (preprocessor_config.json), which gives its '
                            'preprocessing and its post-processing; save the model\'s image '
                            'processor into the folder (processor.save_pretrained(folder))')
        self.task_loss_kind = f'transformers_{self.kind}'
        self.ignore_index = int(ignore_index)
        self.test_resize = bool(test_resize)
        self.pixels = ImagePreprocessing(self.image_processor, self.name)

    def _build(self, model: str, overrides: dict, trust_remote_code: bool) -> str:
        """The network, by the first auto class that builds the model's configuration."""
        last = None
        for auto_class, kind in KINDS.items():
            try:
                self.build_transformers_model(model, overrides, trust_remote_code, auto_class)
                model_type = getattr(self.hf_config, 'model_type', '')
                if model_type in UNSUPPORTED:
                    raise UserError(f'member {self.name!r}: {model} is a {model_type} model, '
                                    f'which {UNSUPPORTED[model_type]}')
                return kind
            except ValueError as e:
                if 'does not build' not in str(e):
                    raise
                last = e
        raise UserError(f'member {self.name!r}: {model} is neither a semantic nor a universal '
                        f'segmentation model of transformers ({last})')

    @property
    def num_classes(self) -> int:
        return int(self.hf_config.num_labels)

    # ----------------------------------------------------------------------------- batches
    def pixel_values(self, inputs: Any, samples: Sequence[Any], training: bool
                     ) -> Tuple[Tensor, List[Tuple[int, int]]]:
        """The batch as the model takes it: each image in RGB through its image processor's
        steps (in evaluation with ``test_resize`` all of them, else those on values), padded
        bottom/right to the largest; and each image's size as the processor made it."""
        geometry = not training and self.test_resize
        out, sizes = [], []
        for image in inputs:
            x = image[[2, 1, 0]] if image.shape[0] == 3 else image  # mmseg's BGR -> RGB
            x = self.pixels(x[None], geometry=geometry)[0]
            out.append(x)
            sizes.append(tuple(x.shape[-2:]))
        h, w = (max(s[d] for s in sizes) for d in (0, 1))
        batch = torch.stack([F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2])) for x in out])
        return batch, sizes

    def check_labels(self, samples: Sequence[Any]) -> None:
        """Refuse samples whose labels are not in the model's label space as its processor
        says it is (``do_reduce_labels`` and data not reduced: see the class's description)."""
        if self.pixels.reduces_labels and any(
                getattr(s, 'metainfo', {}).get('reduce_zero_label') is False for s in samples):
            raise UserError(
                f'member {self.name!r}: its image processor reduces labels '
                '(do_reduce_labels: true: the model\'s class k is the annotation\'s k + 1, 0 '
                'is no class), but the data\'s annotations are not reduced (reduce_zero_label: '
                'false); set reduce_zero_label: true in the LoadAnnotations of the training and '
                'evaluation pipelines')

    def labels(self, samples: Sequence[Any], padded_hw: Sequence[int]) -> Tensor:
        """``LongTensor [N, H, W]``: each image's labels, padded with the ignore label."""
        self.check_labels(samples)
        gts = [s.gt_sem_seg.data[0].long() for s in samples]
        out = torch.full((len(gts), *padded_hw), self.ignore_index, dtype=torch.long,
                         device=gts[0].device)
        for i, gt in enumerate(gts):
            out[i, :gt.shape[0], :gt.shape[1]] = gt
        return out

    # ----------------------------------------------------------------------------- training
    def forward_train(self, inputs, data_samples) -> MemberOutput:
        x, sizes = self.pixel_values(inputs, data_samples, training=True)
        gt = self.labels(data_samples, x.shape[-2:])
        valid_hw = sizes[0]
        if self.kind == 'semantic':
            loss, scores = self._semantic_train(x, gt)
            logits = self.crop_resize(scores, x.shape[-2:], valid_hw)
            return self.member_output(loss, logits, logits.float().log_softmax(1), gt, valid_hw)
        loss, class_logits, masks = self._universal_train(x, gt)
        masks = self.crop_resize(masks, x.shape[-2:], valid_hw)
        logits, log_probs = self.distilled(self.mask_classification_scores(class_logits, masks))
        return self.member_output(loss, logits, log_probs, gt, valid_hw)

    def _semantic_train(self, x: Tensor, gt: Tensor) -> Tuple[Tensor, Tensor]:
        """Per-image loss (the model's own: main + weighted auxiliary cross-entropy) and the
        logits."""
        head = getattr(self.model, 'auxiliary_head', None)
        captured = []
        hook = head.register_forward_hook(lambda m, i, o: captured.append(o)) \
            if head is not None else None
        try:
            logits = self.model(pixel_values=x).logits
        finally:
            if hook is not None:
                hook.remove()
        loss = self.pixel_loss(logits, gt)
        if captured:
            loss = loss + float(self.hf_config.auxiliary_loss_weight) * \
                self.pixel_loss(captured[0], gt)
        return loss, logits

    def pixel_loss(self, logits: Tensor, gt: Tensor) -> Tensor:
        """``[N]``: each image's mean cross-entropy over its labelled pixels, the logits
        upsampled (bilinear) to the labels' size, as the models compute their loss."""
        up = F.interpolate(logits.float(), size=gt.shape[-2:], mode='bilinear',
                           align_corners=False)
        pixel = F.cross_entropy(up, gt, ignore_index=self.ignore_index, reduction='none')
        valid = (gt != self.ignore_index).flatten(1).sum(1)
        return pixel.flatten(1).sum(1) / valid.clamp(min=1)

    def _universal_train(self, x: Tensor, gt: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Per-image set loss (the model's own criterion on each image's slice), the class
        logits and the mask logits."""
        out = self.model(pixel_values=x, output_auxiliary_logits=True)
        masks, classes = out.masks_queries_logits, out.class_queries_logits
        aux = out.auxiliary_logits or []
        losses = []
        for i in range(len(x)):
            labels = torch.unique(gt[i])
            labels = labels[labels != self.ignore_index]
            mask_labels = (gt[i][None] == labels[:, None, None]).float()
            parts = self.model.get_loss_dict(
                masks[i:i + 1], classes[i:i + 1], [mask_labels], [labels],
                [{k: v[i:i + 1] for k, v in a.items()} for a in aux])
            losses.append(self.model.get_loss(parts))
        return torch.stack(losses), classes, masks

    # ----------------------------------------------------------------------------- inference
    def predict(self, inputs, data_samples) -> Tensor:
        """Per-pixel class probabilities ``[N, C, H, W]`` at each image's original size (the
        processor's post-processing of each image's valid region), padded to the largest."""
        transformers = require_transformers()
        self.check_labels(data_samples)
        x, sizes = self.pixel_values(inputs, data_samples, training=False)
        out = self.model(pixel_values=x)
        probs = []
        for i, (sample, (h, w)) in enumerate(zip(data_samples, sizes)):
            target = tuple(int(v) for v in sample.metainfo.get('ori_shape', (h, w))[:2])

            def valid(maps: Tensor) -> Tensor:  # this image's region of a padded batch's maps
                fh = math.ceil(maps.shape[-2] * h / x.shape[-2])
                fw = math.ceil(maps.shape[-1] * w / x.shape[-1])
                return maps[i:i + 1, ..., :fh, :fw]

            if self.kind == 'semantic':
                one = transformers.modeling_outputs.SemanticSegmenterOutput(
                    logits=valid(out.logits))
            else:
                one = type(out)(class_queries_logits=out.class_queries_logits[i:i + 1],
                                masks_queries_logits=valid(out.masks_queries_logits))
            scores = self.image_processor.post_process_semantic_segmentation(
                one, target_sizes=[target], return_segmentation_scores=True)[0]
            scores = scores.segmentation_scores.float()
            probs.append(scores.softmax(0) if self.kind == 'semantic' else
                         scores / scores.sum(0, keepdim=True).clamp(min=PROBABILITY_FLOOR))
        return self.pad_stack(probs)

    def describe(self, stem: str) -> Dict[str, Any]:
        return dict(num_classes=self.num_classes, kind=self.kind,
                    image_processor=self.pixels.describe())
