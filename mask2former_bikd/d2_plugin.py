"""Bi-KD as a detectron2 plug-in: ``D2BiKDMetaArch`` and ``D2IndependentMetaArch`` in
detectron2's ``META_ARCH_REGISTRY``, over official Mask2Former members (named apart from the
core's :class:`bikd.BiKDMetaArch`, which they wrap).

A detectron2 project adds Bi-KD in a few lines, building then loading as detectron2 does::

    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    import mask2former_bikd.d2_plugin as bikd_d2      # registers the meta-architectures

    cfg = get_cfg()
    bikd_d2.add_bikd_config(cfg)
    cfg.merge_from_file('bikd_swinT_swinS.yaml')      # MODEL.META_ARCHITECTURE: D2BiKDMetaArch
    model = build_model(cfg)                          # both members built, no weights read
    bikd_d2.BiKDCheckpointer(model, cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS,
                                                                   resume=False)
    # (a run's own checkpoint when resuming or MODEL.WEIGHTS names one; else every member
    # takes its own weights, MODEL.BIKD.WEIGHTS)

and trains it with detectron2's trainers (the loss dict holds each member's task loss and the
distillation term; the teacher shares go to the event storage) and evaluates it with
:func:`member_evaluators` around detectron2's evaluators (every member and the ensemble):
``SemSegEvaluator`` for semantic members; for panoptic and instance members (Mask2Former's
panoptic / instance configs, trained on detectron2's ``instances`` targets) also
``COCOPanopticEvaluator`` and ``COCOEvaluator``. The method itself is the suite's core
(:class:`bikd.BiKDMetaArch`: teacher selection, masked KL); this module only speaks
detectron2.

Config (``MODEL.BIKD``): the members' keys ``MEMBERS`` (each member's Mask2Former config: a
path or a name in the Mask2Former repository), ``WEIGHTS`` (each member's checkpoint:
``model_final_*.pkl`` or a detectron2 ``.pth``; empty: the member's own ``MODEL.WEIGHTS``),
``NAMES``, ``PARTITION_LOSS`` (``task`` or ``pixel_ce``), ``DISTRIBUTION``; and one key per
argument the methods declare (their ``result_arguments``: :func:`method_keys`), made from
the classes themselves so that a new switch of the core appears here by itself: ``PARTITION``
(``loss`` here), ``TIES`` (``later``; ``skip``: the authors' tie rule), ``TEMPERATURE``,
``DETACH_TEACHER``, ``DETACH_STUDENT``.
"""
import os
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

import bikd
from bikd.errors import UserError
from bikd.members.loading import check_weights_taken, take_weights
from bikd.metrics import MemberPredictions, StructuredPrediction, dense
from bikd.registry import argument_defaults
from bikd.step import TEACHER_SHARE, log_key

from . import d2
from .mask2former_member import Mask2FormerMember

d2.require_detectron2()
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import CfgNode as CN  # noqa: E402
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators  # noqa: E402
from detectron2.modeling import META_ARCH_REGISTRY  # noqa: E402
from detectron2.utils.events import get_event_storage  # noqa: E402


#: the core meta-architectures the plug-in wraps (D2BiKDMetaArch, D2IndependentMetaArch)
CORES = (bikd.BiKDMetaArch, bikd.IndependentMetaArch)
#: where the plug-in's default differs from the core's: segmentation members are ranked by loss
D2_DEFAULTS = dict(partition='loss')


def method_keys(core: type) -> Dict[str, object]:
    """``MODEL.BIKD`` key -> default for every argument ``core`` declares as changing what it
    computes (its ``result_arguments``), the core's own default unless :data:`D2_DEFAULTS`
    says otherwise."""
    defaults = argument_defaults(core)
    return {name.upper(): D2_DEFAULTS.get(name, defaults[name])
            for name in core.result_arguments}


def add_bikd_config(cfg) -> None:
    """Add ``MODEL.BIKD`` (see the module's description) to a detectron2 config."""
    cfg.MODEL.BIKD = CN()
    cfg.MODEL.BIKD.MEMBERS = []
    cfg.MODEL.BIKD.WEIGHTS = []
    cfg.MODEL.BIKD.NAMES = []
    cfg.MODEL.BIKD.PARTITION_LOSS = 'task'
    cfg.MODEL.BIKD.DISTRIBUTION = 'normalized'
    for core in CORES:
        for key, value in method_keys(core).items():
            cfg.MODEL.BIKD[key] = value


def member_configs(cfg) -> List[dict]:
    """The member configs a ``MODEL.BIKD`` config names (each Mask2Former config and the
    checkpoint its member takes its weights from)."""
    b = cfg.MODEL.BIKD
    if len(b.MEMBERS) < 2 and cfg.MODEL.META_ARCHITECTURE == 'D2BiKDMetaArch':
        raise UserError(f'MODEL.BIKD.MEMBERS names {len(b.MEMBERS)} member config(s); Bi-KD '
                        'needs at least two')
    for key in ('WEIGHTS', 'NAMES'):
        if b[key] and len(b[key]) != len(b.MEMBERS):
            raise UserError(f'MODEL.BIKD.{key} has {len(b[key])} entries for '
                            f'{len(b.MEMBERS)} members')
    names = list(b.NAMES) or [os.path.splitext(os.path.basename(c))[0] for c in b.MEMBERS]
    weights = list(b.WEIGHTS) or [''] * len(b.MEMBERS)
    return [dict(type='Mask2FormerMember', config=config, name=name, checkpoint=w or None,
                 test_resize=False, partition_loss=b.PARTITION_LOSS,
                 distribution=b.DISTRIBUTION)
            for config, name, w in zip(b.MEMBERS, names, weights)]


@META_ARCH_REGISTRY.register()
class D2BiKDMetaArch(nn.Module):
    """:class:`bikd.BiKDMetaArch` over official Mask2Former members, as detectron2 builds and
    runs meta-architectures (``forward(batched_inputs)``: the loss dict in training, per
    image ``{'sem_seg': ensemble probabilities, 'bikd_members': {name: member's result}}`` in
    evaluation, where a member's result is what the official model gives: ``sem_seg``
    (probabilities) for semantic models, ``panoptic_seg``, ``instances`` and ``sem_seg`` for
    panoptic and instance models as their configs' ``MODEL.MASK_FORMER.TEST`` flags ask).
    Each member's task loss in the loss dict is its official training loss (normalised over
    the batch and the processes, as ``MaskFormer.forward``), so that the control trains each
    member as Mask2Former's own ``train_net.py`` would.

    Built through :func:`bikd.build_model`, reading no weights; :class:`BiKDCheckpointer`
    loads them."""
    core = bikd.BiKDMetaArch

    def __init__(self, cfg):
        super().__init__()
        b = cfg.MODEL.BIKD
        self.bikd = bikd.build_model(dict(type=self.core.__name__, members=member_configs(cfg),
                                          **{key.lower(): b[key]
                                             for key in method_keys(self.core)}))
        self.to(torch.device(cfg.MODEL.DEVICE))

    @property
    def members(self) -> Sequence[Mask2FormerMember]:
        return self.bikd.members

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, batched_inputs: List[dict]):
        check_weights_taken(self.bikd)
        if self.training:
            out = self.bikd.loss(batched_inputs, None)
            try:
                storage = get_event_storage()
            except AssertionError:  # outside a trainer
                storage = None
            if storage is not None:
                for name, share in out.teacher_share.items():
                    storage.put_scalar(log_key(TEACHER_SHARE, name), float(share))
            return out.loss_terms()  # detectron2's trainers sum the values
        results = [dict(bikd_members=OrderedDict()) for _ in batched_inputs]
        for name, pred in MemberPredictions(self.members, batched_inputs, None):
            for i, (r, p, x) in enumerate(zip(results, dense(pred), batched_inputs)):
                if name == 'ensemble':
                    r['sem_seg'] = self._crop(p, x)
                elif isinstance(pred, StructuredPrediction):  # panoptic / instance results
                    r['bikd_members'][name] = pred.extra[i]
                else:
                    r['bikd_members'][name] = dict(sem_seg=self._crop(p, x))
        return results

    @staticmethod
    def _crop(probs: torch.Tensor, item: dict) -> torch.Tensor:
        """One image's probabilities without the batch's padding."""
        h, w = item.get('height', probs.shape[-2]), item.get('width', probs.shape[-1])
        return probs[:, :h, :w]


@META_ARCH_REGISTRY.register()
class D2IndependentMetaArch(D2BiKDMetaArch):
    """The control: the same members fine-tuned on their own task losses
    (:class:`bikd.IndependentMetaArch`)."""
    core = bikd.IndependentMetaArch


class BiKDCheckpointer(DetectionCheckpointer):
    """detectron2's ``DetectionCheckpointer`` (same arguments) for a Bi-KD model: the step
    that gives a built model its weights, as ``resume_or_load(path, resume=...)`` does for
    detectron2's models.

    - Resuming (``resume=True`` and a checkpoint in its ``save_dir``) or a ``path`` (a
      checkpoint of a Bi-KD run, e.g. ``MODEL.WEIGHTS``): the checkpoint holds every
      member's weights; no member's own file is read.
    - No checkpoint to load: every member takes its own weights (``MODEL.BIKD.WEIGHTS``,
      else each member's config's ``MODEL.WEIGHTS``).

    Give it to detectron2's trainers in place of theirs (``trainer.checkpointer =
    BiKDCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(trainer))``).
    """

    def load(self, path: str, checkpointables=None):
        core = getattr(self.model, 'module', self.model).bikd
        sources = take_weights(core, path or None)
        for name, source in sources.items():
            self.logger.info(f'member {name}: weights from {source}')
        if not path:
            return {}
        return super().load(path, checkpointables)


class MemberEvaluator(DatasetEvaluator):
    """A detectron2 evaluator scoring one member (or ``'ensemble'``) of a Bi-KD model: it
    passes that model's results on (``sem_seg``; ``panoptic_seg`` and ``instances`` of
    panoptic and instance members) and prefixes the results' keys."""

    def __init__(self, evaluator: DatasetEvaluator, member: str):
        self.evaluator, self.member = evaluator, member

    def reset(self):
        self.evaluator.reset()

    def process(self, inputs, outputs):
        if self.member != 'ensemble':
            outputs = [o['bikd_members'][self.member] for o in outputs]
        self.evaluator.process(inputs, outputs)

    def evaluate(self):
        results = self.evaluator.evaluate() or {}
        return OrderedDict((f'{self.member}/{k}', v) for k, v in results.items())


def member_evaluators(make: Callable[[], DatasetEvaluator], model,
                      make_for_ensemble: Optional[Callable[[], DatasetEvaluator]] = None
                      ) -> DatasetEvaluators:
    """One evaluator per member, each made by ``make()`` (e.g. ``lambda:
    SemSegEvaluator('ade20k_sem_seg_val')``), and one for the ensemble made by
    ``make_for_ensemble()`` (default ``make``), for ``inference_on_dataset``. Panoptic
    members: ``make`` gives detectron2's ``DatasetEvaluators([COCOPanopticEvaluator(..),
    SemSegEvaluator(..)])``, ``make_for_ensemble`` the ``SemSegEvaluator`` alone (the ensemble
    is the mean of the members' semantic distributions: two models' segments do not
    correspond, so it has no PQ or AP)."""
    names = [m.name for m in getattr(model, 'module', model).members]
    return DatasetEvaluators([MemberEvaluator(make(), name) for name in names] +
                             [MemberEvaluator((make_for_ensemble or make)(), 'ensemble')])


def results_by_member(results: Dict[str, Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    """``{'a/sem_seg': {'mIoU': ..}, 'a/panoptic_seg': {'PQ': ..}, 'ensemble/sem_seg': ..}``
    -> ``{'a': {'mIoU': .., 'PQ': ..}, 'ensemble': ..}`` (every task's results per member)."""
    out: Dict[str, Dict[str, float]] = {}
    for key, value in results.items():
        out.setdefault(key.split('/')[0], {}).update(value)
    return out
