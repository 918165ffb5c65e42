"""Meta-architectures: K members trained together, built by mmengine's Runner.

``BiKDMetaArch`` is the paper's method; ``IndependentMetaArch`` fine-tunes the same members on
their task losses alone and is the control of every comparison. Both share construction,
evaluation and logging through :class:`MultiMemberMetaArch`.
"""
import logging
import warnings
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.distributed as dist
from mmengine.logging import MessageHub, print_log
from mmengine.model import BaseModel
from mmengine.registry import DefaultScope
from torch import Tensor, nn
from torch.profiler import record_function

from .losses import distillation_loss, positive_temperature
from .member import Member, MemberOutput
from .partition import select_teachers, teacher_share
from .registry import MEMBERS, META_ARCH

PARTITIONS = ('confidence', 'loss')


def to_channels_last(x: Any) -> Any:
    """A 4-D tensor in channels-last memory format, a 5-D one (video) in channels-last-3d;
    anything else unchanged."""
    if isinstance(x, Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if isinstance(x, Tensor) and x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


NONFINITE_POLICIES = ('skip', 'raise')


def _culprit(loss_key: str) -> str:
    if loss_key == 'loss_distill':
        return 'the distillation term'
    if loss_key.startswith('loss_'):
        return f'member {loss_key[len("loss_"):]!r}'
    return loss_key


def _any_process(flag: bool, device) -> bool:
    """``flag`` or-ed over the processes of a distributed run."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([float(flag)], device=device if dist.get_backend() == 'nccl' else 'cpu')
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


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
        channels_last: keep the members' convolution weights and the input batch in
            channels-last memory format (channels-last-3d for video), which tensor-core GPUs
            and oneDNN on CPU run faster. Results are unchanged up to floating-point order.
        nonfinite_policy: what a training step whose loss (any member's task loss or the
            distillation term) is NaN or infinite does. Either way no weight is updated from
            it. ``'skip'``: the step is dropped, counted and logged with the member and the
            iteration; ``'raise'``: training stops with ``FloatingPointError``.
        max_nonfinite_in_a_row: with ``'skip'``, the number of consecutive dropped steps
            after which training stops with ``FloatingPointError`` (the run has diverged).
    """
    min_members = 2

    def __init__(self, members: Sequence[Union[dict, Member]], random_init: bool = False,
                 data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None,
                 channels_last: bool = False, nonfinite_policy: str = 'skip',
                 max_nonfinite_in_a_row: int = 5):
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
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.members._apply(to_channels_last)
        if nonfinite_policy not in NONFINITE_POLICIES:
            raise ValueError(f'nonfinite_policy must be one of {NONFINITE_POLICIES}, got '
                             f'{nonfinite_policy!r}')
        if int(max_nonfinite_in_a_row) < 1:
            raise ValueError(f'max_nonfinite_in_a_row must be >= 1, got {max_nonfinite_in_a_row}')
        self.nonfinite_policy = nonfinite_policy
        self.max_nonfinite_in_a_row = int(max_nonfinite_in_a_row)
        self.skipped_steps = 0
        self._skipped_in_a_row = 0

    @property
    def member_names(self) -> List[str]:
        return [m.name for m in self.members]

    def train_step(self, data, optim_wrapper) -> Dict[str, Tensor]:
        with optim_wrapper.optim_context(self):
            data = self.data_preprocessor(data, True)
            losses = self._run_forward(data, mode='loss')
        return self.update_from_losses(losses, optim_wrapper)

    def update_from_losses(self, losses: Dict[str, Tensor], optim_wrapper) -> Dict[str, Tensor]:
        """The update of one training step, unless a loss is not finite (``nonfinite_policy``).

        Every process of a distributed run takes the same decision, so that all skip together.
        """
        parsed, log_vars = self.parse_losses(losses)
        bad = [key for key, value in losses.items()
               if 'loss' in key and not bool(torch.isfinite(value.detach()).all())]
        if not _any_process(bool(bad), parsed.device):
            self._skipped_in_a_row = 0
            optim_wrapper.update_params(parsed)
            return log_vars
        it = MessageHub.get_current_instance().get_info('iter', None)
        culprits = ', '.join(_culprit(k) for k in bad) or 'a loss on another process'
        where = f'at iteration {it + 1}' if it is not None else 'in this step'
        values = ', '.join(f'{k}={float(losses[k].detach().float().mean()):g}' for k in bad)
        if self.nonfinite_policy == 'raise':
            raise FloatingPointError(
                f'non-finite loss of {culprits} {where} ({values}); no weights were updated. '
                "model.nonfinite_policy='skip' drops such steps instead.")
        self.skipped_steps += 1
        self._skipped_in_a_row += 1
        if self._skipped_in_a_row >= self.max_nonfinite_in_a_row:
            raise FloatingPointError(
                f'non-finite loss of {culprits} {where} ({values}): {self._skipped_in_a_row} '
                'steps in a row were dropped, the run has diverged (max_nonfinite_in_a_row='
                f'{self.max_nonfinite_in_a_row}). Lower the learning rate or check the data.')
        print_log(f'non-finite loss of {culprits} {where} ({values}): step dropped, no weights '
                  f'updated ({self._skipped_in_a_row} in a row, {self.skipped_steps} in all)',
                  logger='current', level=logging.WARNING)
        optim_wrapper.zero_grad()
        kept = {k: v for k, v in log_vars.items() if k not in bad and k != 'loss'}
        kept['skipped_steps'] = torch.tensor(float(self.skipped_steps))
        return kept

    def init_weights(self):
        # Members arrive with their pretrained weights; mmengine must not re-initialise them.
        pass

    def forward(self, inputs: Any, data_samples: Any = None, mode: str = 'tensor'):
        if self.channels_last:
            inputs = to_channels_last(inputs)
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
        # The labels name the parts of a step in torch.profiler traces (tools/benchmark.py).
        outputs = []
        for m in self.members:
            with record_function(f'bikd.forward.{m.name}'):
                outputs.append(m.forward_train(inputs, data_samples))
        losses = {f'loss_{m.name}': o.loss.mean() for m, o in zip(self.members, outputs)}
        if len(outputs) < 2:
            return losses
        with record_function('bikd.distillation'):
            teachers = self.select_teachers(outputs)
            share = teacher_share(teachers, len(outputs))
            for m, s in zip(self.members, share):
                losses[f'teach_{m.name}'] = s
            if self.distill:
                losses['loss_distill'] = distillation_loss(
                    [o.distill for o in outputs], teachers, self.temperature,
                    self.detach_teacher)
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
