"""The baselines Bi-KD is compared with, on the same members, data and machinery:
KL+DP (Roth et al., ICLR 2024), Hinton's KD from a frozen teacher, and deep mutual learning.

Each builds on :class:`~bikd.method.meta_arch.BiKDMetaArch`'s pieces: the members' outputs, the
per-sample partition (:func:`~bikd.partition.select_teachers`) and the masked KL
(:func:`~bikd.losses.distillation_loss`), so every task that supports Bi-KD supports them.
Frozen members stay in eval mode, take no gradient and are never updated.
"""
import copy
from typing import Any, List, Optional, Sequence, Union

import torch
from torch import Tensor

from ..errors import UserError
from ..experiment_runs import ExperimentRun, MethodNotApplicable, member_names
from ..losses import at_least_fp32, distillation_loss, positive_temperature
from ..members.base import Member, MemberOutput
from ..partition import select_teachers
from ..registry import META_ARCH
from ..step import StepOutput
from .meta_arch import PARTITIONS, MultiMemberMetaArch


class _FrozenMembersMixin:
    """Keeps the modules listed by ``frozen_modules()`` in eval mode without gradients."""

    def frozen_modules(self) -> List[torch.nn.Module]:
        raise NotImplementedError

    def _freeze(self) -> None:
        for module in self.frozen_modules():
            module.requires_grad_(False)
            module.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self


def _member_index(members: Sequence[Member], name: str, role: str) -> int:
    names = [m.name for m in members]
    if name not in names:
        raise UserError(f'{role} {name!r} is not one of the members {names}')
    return names.index(name)


@META_ARCH.register_module()
class KLDPMetaArch(_FrozenMembersMixin, MultiMemberMetaArch):
    """KL+DP (Roth et al. 2024, "Fantastic Gains and Where to Find Them"): one trainable
    student learns from a frozen teacher and a frozen copy of its initial self.

    Per sample the target is the teacher iff it is strictly better on that sample than the
    initial student: ``p_teacher(y) > p_initial(y)`` (``partition='confidence'``;
    ``unsupervised=True`` compares the maximum probabilities instead) or, for dense tasks,
    ``loss_teacher < loss_initial`` (``partition='loss'``); otherwise the initial student.
    Loss: pure ``T^2 / N * sum_i KL(target_i || student_i)`` (no task loss, alpha = 1).
    Improving both members takes two runs, one per ``student``.

    Logged: the distillation term and the share of samples routed to the teacher
    (``<teacher>``) and to the initial student (``<student>@initial``).

    In an experiment: one run per student (two members only).
    """
    method = 'kldp'
    result_arguments = ('student', 'partition', 'temperature', 'unsupervised')

    def __init__(self, members: Sequence[Union[dict, Member]], student: str,
                 partition: str = 'confidence', temperature: float = 1.0,
                 unsupervised: bool = False, **kwargs):
        super().__init__(members, **kwargs)
        if len(self.members) != 2:
            raise UserError(f'KL+DP transfers from one teacher to one student: give 2 members, '
                            f'got {len(self.members)}')
        if partition not in PARTITIONS:
            raise UserError(f'partition must be one of {PARTITIONS}, got {partition!r}')
        if unsupervised and partition != 'confidence':
            raise UserError("unsupervised KL+DP compares maximum class probabilities: it needs "
                            "partition='confidence'")
        self.student_index = _member_index(self.members, student, 'student')
        self.teacher_index = 1 - self.student_index
        self.partition, self.temperature = partition, positive_temperature(temperature)
        self.unsupervised = bool(unsupervised)
        self.initial_student = copy.deepcopy(self.members[self.student_index])
        # (it starts from the student's weights, whatever the student takes)
        self.initial_student.weights_copied_from = self.members[self.student_index].name
        self._freeze()

    def frozen_modules(self):
        return [self.members[self.teacher_index], self.initial_student]

    @classmethod
    def experiment_runs(cls, model: dict) -> List[ExperimentRun]:
        names = member_names(model)
        if len(names) != 2:
            raise MethodNotApplicable(f'KL+DP transfers between two members, this config has '
                                      f'{len(names)} ({names})')
        return [ExperimentRun(f'kldp_{s}', cls.method, cls.run_model(model, student=s), (s, ),
                              frozen_forwards=(t, s), label=f'KL+DP, student {s}')
                for s, t in zip(names, names[::-1])]

    def _scores(self, out: MemberOutput) -> Tensor:
        if self.partition == 'loss':
            loss = out.loss if out.partition_loss is None else out.partition_loss
            return -loss.detach()
        if self.unsupervised:
            if out.logits.dim() != 2:
                raise UserError('unsupervised KL+DP compares class probabilities [N, C]; '
                                f'the members give {tuple(out.logits.shape)}')
            return at_least_fp32(out.logits.detach()).softmax(dim=1).amax(dim=1)
        if out.confidence is None:
            raise UserError("the members give no ground-truth confidence; use "
                            "partition='loss' for this task")
        return out.confidence

    def route(self, teacher: MemberOutput, initial: MemberOutput) -> Tensor:
        """``BoolTensor[N]``: True where the teacher is the target (strictly better)."""
        # select_teachers gives ties to the later entry: the initial student, as KL+DP does
        return select_teachers(torch.stack([self._scores(teacher), self._scores(initial)])) == 0

    def step_members(self) -> List[Member]:
        """The student, the teacher and the initial student, in this order."""
        return [self.members[self.student_index], self.members[self.teacher_index],
                self.initial_student]

    def loss_from_outputs(self, outputs: Sequence[MemberOutput], data_samples: Any,
                          decide_on: Optional[Sequence[MemberOutput]] = None) -> StepOutput:
        student = self.members[self.student_index]
        out, teacher, initial = outputs
        to_teacher = self.route(*(outputs if decide_on is None else decide_on)[1:])
        shape = (-1, ) + (1, ) * (teacher.logits.dim() - 1)
        target = torch.where(to_teacher.view(shape), teacher.logits, initial.logits)
        # the student is member 0 and the chosen target member 1 for every sample
        ones = torch.ones_like(to_teacher, dtype=torch.long)
        share = to_teacher.float().mean()
        return StepOutput(
            distill_loss=distillation_loss([out.logits, target], ones, self.temperature),
            teacher_share={self.members[self.teacher_index].name: share,
                           f'{student.name}@initial': 1 - share})


@META_ARCH.register_module()
class KDMetaArch(_FrozenMembersMixin, MultiMemberMetaArch):
    """Hinton et al.'s knowledge distillation from one frozen member (``teacher``) into every
    other: ``task loss + T^2 KL(p_teacher || p_student)`` per student, on every sample.

    In an experiment: one run per teacher, each member in turn."""
    method = 'kd'
    result_arguments = ('teacher', 'temperature')

    def __init__(self, members: Sequence[Union[dict, Member]], teacher: str,
                 temperature: float = 1.0, **kwargs):
        super().__init__(members, **kwargs)
        self.teacher_index = _member_index(self.members, teacher, 'teacher')
        self.temperature = positive_temperature(temperature)
        self._freeze()

    def frozen_modules(self):
        return [self.members[self.teacher_index]]

    @classmethod
    def experiment_runs(cls, model: dict) -> List[ExperimentRun]:
        names = member_names(model)
        return [ExperimentRun(f'kd_from_{t}', cls.method, cls.run_model(model, teacher=t),
                              tuple(n for n in names if n != t), frozen_forwards=(t, ),
                              label=f'KD from {t}')
                for t in names]

    def loss_from_outputs(self, outputs: Sequence[MemberOutput], data_samples: Any,
                          decide_on: Optional[Sequence[MemberOutput]] = None) -> StepOutput:
        out = StepOutput(task_losses={m.name: o.task_loss()
                                      for i, (m, o) in enumerate(zip(self.members, outputs))
                                      if i != self.teacher_index})
        n = outputs[0].logits.shape[0]
        teachers = torch.full((n, ), self.teacher_index, dtype=torch.long,
                              device=outputs[0].logits.device)
        out.distill_loss = distillation_loss([o.logits for o in outputs], teachers,
                                             self.temperature)
        return out


@META_ARCH.register_module()
class DMLMetaArch(MultiMemberMetaArch):
    """Deep mutual learning (Zhang et al. 2018): every member learns from every other on
    every sample, ``task loss + T^2 / (K - 1) * sum_{j != i} KL(p_j || p_i)`` with ``p_j``
    detached. Costs K (K - 1) KL terms, against Bi-KD's K - 1.

    Logged: each member's task loss and the distillation term (the sum over members of
    their KL terms).
    """
    method = 'dml'
    result_arguments = ('temperature', )

    def __init__(self, members: Sequence[Union[dict, Member]], temperature: float = 1.0,
                 **kwargs):
        super().__init__(members, **kwargs)
        self.temperature = positive_temperature(temperature)

    def loss_from_outputs(self, outputs: Sequence[MemberOutput], data_samples: Any,
                          decide_on: Optional[Sequence[MemberOutput]] = None) -> StepOutput:
        logits = [o.logits for o in outputs]
        n, k = logits[0].shape[0], len(logits)
        total = logits[0].new_zeros(())
        for j in range(k):  # member j teaches every other member on every sample
            teachers = torch.full((n, ), j, dtype=torch.long, device=logits[0].device)
            total = total + distillation_loss(logits, teachers, self.temperature)
        return StepOutput(task_losses={m.name: o.task_loss()
                                       for m, o in zip(self.members, outputs)},
                          distill_loss=total / (k - 1))


__all__ = ['DMLMetaArch', 'KDMetaArch', 'KLDPMetaArch']
