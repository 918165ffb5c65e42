"""Meta-architectures: K members trained together, built by mmengine's Runner.

``BiKDMetaArch`` is the paper's method; ``IndependentMetaArch`` fine-tunes the same members on
their task losses alone and is the control of every comparison. Both share construction,
evaluation and logging through :class:`MultiMemberMetaArch`.
"""
import warnings
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from mmengine.model import BaseModel
from mmengine.registry import DefaultScope
from torch import Tensor, nn

from .losses import distillation_loss
from .member import Member, MemberOutput
from .partition import select_teachers, teacher_share
from .registry import MEMBERS, META_ARCH

PARTITIONS = ('confidence', 'loss')


def positive_temperature(temperature: float) -> float:
    """``temperature`` as a float; a clear error if it is not positive."""
    if temperature <= 0:
        raise ValueError(f'temperature must be positive, got {temperature}')
    return float(temperature)


class PartitionWarning(UserWarning):
    """The configured partition is unlikely to mean what the user wants."""


def build_member(cfg: Union[dict, Member], random_init: bool = False) -> Member:
    """Build one member from its config dict (or pass an already built one through).

    ``random_init`` builds it without its pretrained weights (``pretrained=False`` and no
    ``checkpoint``): for tests of real-size configs and for tools that load trained weights next.
    """
    if isinstance(cfg, nn.Module):
        if not isinstance(cfg, Member):
            raise TypeError(f'{type(cfg).__name__} is not a bikd Member')
        return cfg
    cfg = dict(cfg)
    if 'type' not in cfg:
        raise KeyError(f'member config {cfg} has no "type"')
    if random_init:
        cfg.update(pretrained=False, checkpoint=None)
    if MEMBERS.get(cfg['type']) is None:
        known = ', '.join(sorted(MEMBERS.module_dict))
        raise KeyError(f'unknown member type {cfg["type"]!r}; registered member types: '
                       f'{known or "none (is the task package in custom_imports?)"}')
    with DefaultScope.overwrite_default_scope('bikd'):
        return MEMBERS.build(cfg)


class MultiMemberMetaArch(BaseModel):
    """K members sharing one batch; evaluation of every member and of their ensemble.

    Args:
        members: member configs (dicts with ``type``) or built :class:`Member` instances.
        random_init: build the members without their pretrained weights.
        data_preprocessor: mmengine data preprocessor; the default moves the batch to the
            device. Normalisation is each member's own business.
    """
    min_members = 2

    def __init__(self, members: Sequence[Union[dict, Member]], random_init: bool = False,
                 data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if len(members) < self.min_members:
            raise ValueError(f'{type(self).__name__} needs at least {self.min_members} members, '
                             f'got {len(members)}')
        built = [build_member(m, random_init) for m in members]
        names = [m.name for m in built]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f'member names must be unique, {duplicates} appear more than once; '
                             'give members a distinct name=...')
        classes = {m.name: m.num_classes for m in built}
        if len(set(classes.values())) > 1:
            raise ValueError(f'members disagree on the number of classes: {classes}; all members '
                             'of a run must predict the same label space')
        self.members = nn.ModuleList(built)

    @property
    def member_names(self) -> List[str]:
        return [m.name for m in self.members]

    def init_weights(self):
        # Members arrive with their pretrained weights; mmengine must not re-initialise them.
        pass

    def forward(self, inputs: Any, data_samples: Any = None, mode: str = 'tensor'):
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return [m.predict(inputs, data_samples) for m in self.members]
        raise ValueError(f'invalid mode {mode!r}; expected "loss", "predict" or "tensor"')

    def predict(self, inputs: Any, data_samples: Any = None) -> List[Dict[str, Any]]:
        """Every member's prediction and the ensemble's (their mean), stacked.

        Returns a one-element list (mmengine's evaluator iterates over outputs) holding
        ``dict(names=[K member names + 'ensemble'], preds=Tensor[K + 1, N, ...])``.
        """
        preds = torch.stack([m.predict(inputs, data_samples).float() for m in self.members])
        preds = torch.cat([preds, preds.mean(dim=0, keepdim=True)])
        return [dict(names=self.member_names + ['ensemble'], preds=preds)]

    def loss(self, inputs: Any, data_samples: Any) -> Dict[str, Tensor]:
        raise NotImplementedError


@META_ARCH.register_module()
class BiKDMetaArch(MultiMemberMetaArch):
    """Bidirectional knowledge distillation between K >= 2 pretrained members.

    Per sample, the teacher is the member with the highest ground-truth confidence
    (``partition='confidence'``, Eq. 3 / 11) or the lowest task loss (``partition='loss'``,
    Eq. 6); ties go to the later member. Loss = sum of the members' mean task losses + the
    masked KL of every other member to the teacher (Eq. 12 / 13).

    Args:
        members: see :class:`MultiMemberMetaArch`.
        partition: ``'confidence'`` or ``'loss'``.
        temperature: T of Eq. 1.
        detach_teacher: stop the distillation gradient into the teacher (standard
            distillation). ``False`` reproduces the paper authors' released code.

    Logged per step: ``loss_<member>`` (task loss), ``loss_distill`` and ``teach_<member>``
    (share of the batch the member taught).
    """
    distill = True

    def __init__(self, members: Sequence[Union[dict, Member]], partition: str = 'confidence',
                 temperature: float = 1.0, detach_teacher: bool = True, **kwargs):
        super().__init__(members, **kwargs)
        if partition not in PARTITIONS:
            raise ValueError(f'partition must be one of {PARTITIONS}, got {partition!r}')
        self.partition = partition
        self.temperature = positive_temperature(temperature)
        self.detach_teacher = bool(detach_teacher)
        kinds = {m.name: m.partition_loss_kind for m in self.members}
        if partition == 'loss' and len(set(kinds.values())) > 1:
            warnings.warn(f'partition="loss" compares per-sample losses that the members define '
                          f'differently ({kinds}): the member with the smaller scale will teach '
                          'everything. Give the members a loss defined alike for the partition '
                          '(MMSegMember: partition_loss="pixel_ce").', PartitionWarning)

    def select_teachers(self, outputs: Sequence[MemberOutput]) -> Tensor:
        """Teacher index per sample from the members' outputs (``LongTensor[N]``)."""
        if self.partition == 'confidence':
            missing = [m.name for m, o in zip(self.members, outputs) if o.confidence is None]
            if missing:
                raise ValueError(f'members {missing} give no ground-truth confidence; use '
                                 "partition='loss' for this task")
            return select_teachers(torch.stack([o.confidence for o in outputs]), True)
        losses = [o.loss if o.partition_loss is None else o.partition_loss for o in outputs]
        return select_teachers(torch.stack([x.detach() for x in losses]), False)

    def loss(self, inputs: Any, data_samples: Any) -> Dict[str, Tensor]:
        outputs = [m.forward_train(inputs, data_samples) for m in self.members]
        losses = {f'loss_{m.name}': o.loss.mean() for m, o in zip(self.members, outputs)}
        if len(outputs) < 2:
            return losses
        teachers = self.select_teachers(outputs)
        share = teacher_share(teachers, len(outputs))
        for m, s in zip(self.members, share):
            losses[f'teach_{m.name}'] = s
        if self.distill:
            losses['loss_distill'] = distillation_loss([o.distill for o in outputs], teachers,
                                                       self.temperature, self.detach_teacher)
        return losses


@META_ARCH.register_module()
class IndependentMetaArch(BiKDMetaArch):
    """The control: the same members fine-tuned on their own task losses, nothing distilled.

    It accepts Bi-KD's arguments so that a Bi-KD config becomes its control by changing
    ``type`` alone; the partition is still computed and logged (``teach_<member>``: the share
    of samples each member *would* have taught), the KL is not. With one member it is plain
    fine-tuning (used to "pretrain" the demo's members).
    """
    distill = False
    min_members = 1
