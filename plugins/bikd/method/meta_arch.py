"""Meta-architectures: K members trained together, built by mmengine's Runner.

``BiKDMetaArch`` is the paper's method; ``IndependentMetaArch`` fine-tunes the same members on
their task losses alone and is the control of every comparison. Both share construction,
evaluation and logging through :class:`MultiMemberMetaArch`, as do the baselines.

A meta-architecture is also a *method* of an experiment: it declares its name (``method``),
the method it is compared against (``control``) and the training runs it needs to improve the
members of a config (:meth:`MultiMemberMetaArch.experiment_runs`). ``tools/run_experiment.py``
and ``tools/benchmark.py`` read these declarations, so a new method is one registered class.
"""
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.model import BaseModel
from mmengine.registry import DefaultScope
from torch import Tensor, nn
from torch.profiler import record_function

from ..errors import UserError
from ..experiment_runs import ExperimentRun, MethodNotApplicable, member_names
from ..losses import distillation_loss, positive_temperature
from ..members.base import Member, MemberOutput
from ..members.loading import RANDOM_INIT, check_weights_taken, take_weights, weights_missing
from ..metrics import MemberPredictions
from ..partition import TIE_RULES, select_teachers, teacher_share
from ..registry import MEMBERS, META_ARCH, accepted_arguments, argument_defaults, plain
from ..step import StepOutput
from .lean import lean_train_step, trains

PARTITIONS = ('confidence', 'loss')
#: layers that normalise over the batch in training (timm's and mmcv's subclass these)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def to_channels_last(x: Any) -> Any:
    """A 4-D tensor in channels-last memory format, a 5-D one (video) in channels-last-3d;
    anything else unchanged."""
    if isinstance(x, Tensor) and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if isinstance(x, Tensor) and x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


class PartitionWarning(UserWarning):
    """The configured partition is unlikely to mean what the user wants."""


def build_member(cfg: Union[dict, Member]) -> Member:
    """Build one member from its config dict (or pass an already built one through). The
    member is built, not loaded: its weights come with :func:`bikd.members.loading.take_weights`."""
    if isinstance(cfg, nn.Module):
        if not isinstance(cfg, Member):
            raise TypeError(f'{type(cfg).__name__} is not a bikd Member')
        return cfg
    cfg = dict(cfg)
    member_class(cfg)
    with DefaultScope.overwrite_default_scope('bikd'):
        return MEMBERS.build(cfg)


def member_class(cfg: dict) -> type:
    """The class a member config builds (for a registered factory, the class it builds);
    an unknown or missing ``type`` is an error that lists the registered ones."""
    if 'type' not in cfg:
        raise UserError(f'member config {dict(cfg)} has no "type"')
    built = MEMBERS.get(cfg['type'])
    if built is None:
        known = ', '.join(sorted(MEMBERS.module_dict))
        raise UserError(f'unknown member type {cfg["type"]!r}; registered member types: '
                        f'{known or "none (is the task package in custom_imports?)"}')
    return getattr(built, 'builds', built)


class MultiMemberMetaArch(BaseModel):
    """K members sharing one batch; evaluation of every member and of their ensemble.

    Args:
        members: member configs (dicts with ``type``) or built :class:`Member` instances.
        random_init: take no weights: every member keeps its random initialisation, whatever
            its ``checkpoint`` or ``pretrained`` say (tests of real-size configs, benchmarks).
        data_preprocessor: mmengine data preprocessor; the default moves the batch to the
            device. Normalisation is each member's own business.
        channels_last: keep the members' convolution weights and the input batch in
            channels-last memory format (channels-last-3d for video), which tensor-core GPUs
            and oneDNN on CPU run faster. Results are unchanged up to floating-point order.
        lean: train member by member (:mod:`bikd.method.lean`): at most one member's activations
            are alive at once, for members that do not fit on the device together; costs one
            more forward per trained member. The weights after each step are the ordinary
            step's.

    Subclasses implement ``loss_from_outputs(outputs, data_samples, decide_on=None) ->
    StepOutput``: the step's losses from the outputs of :meth:`step_members` (in that
    order), with any per-sample choice (teachers, routes) taken on ``decide_on`` when given
    (the lean step passes the outputs computed without gradient). A training step whose loss
    is not finite is the optimiser wrapper's to drop or raise
    (``optim_wrapper.nonfinite_policy``, :mod:`bikd.engine.optim`).

    As a method of an experiment, a subclass sets ``method`` (its name for
    ``tools/run_experiment.py --methods``), ``control`` (the method it is compared against)
    and, where one run with every member learning is not what it needs, overrides
    :meth:`experiment_runs`.
    """
    min_members = 2
    #: the method's name in experiments; '' for a class that is not a method of its own
    method = ''
    #: the method every result of this one is compared against ('' for the control itself)
    control = 'independent'
    #: whether the logged teacher shares decided who taught (False: only logged)
    partition_teaches = True
    #: the constructor arguments that change what a run of this method computes: the run's
    #: fingerprint records their values (defaults filled in) and a resume that changes one is
    #: refused (:mod:`bikd.engine.fingerprint`). Each method declares its own; ``lean`` and
    #: ``channels_last`` change nothing but speed and memory, and the members say for
    #: themselves what they are (:meth:`bikd.Member.fingerprint`).
    result_arguments: Tuple[str, ...] = ()

    def __init__(self, members: Sequence[Union[dict, Member]], random_init: bool = False,
                 data_preprocessor: Optional[dict] = None, init_cfg: Optional[dict] = None,
                 channels_last: bool = False, lean: bool = False):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if len(members) < self.min_members:
            raise UserError(f'{type(self).__name__} needs at least {self.min_members} members, '
                            f'got {len(members)}')
        built = [build_member(m) for m in members]
        names = [m.name for m in built]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise UserError(f'member names must be unique, {duplicates} appear more than once; '
                            'give members a distinct name=...')
        classes = {m.name: m.num_classes for m in built}
        if len(set(classes.values())) > 1:
            raise UserError(f'members disagree on the number of classes: {classes}; all members '
                            'of a run must predict the same label space')
        self.members = nn.ModuleList(built)
        self.channels_last = bool(channels_last)
        if self.channels_last:  # the convolutions' weights, as the batch (prepare_inputs)
            nn.utils.convert_conv2d_weight_memory_format(self.members, torch.channels_last)
            nn.utils.convert_conv3d_weight_memory_format(self.members, torch.channels_last_3d)
        self.lean = bool(lean)
        self.random_init = bool(random_init)
        if self.random_init:  # nothing to take: ready as built
            for m in self.members:
                m.weights_from = RANDOM_INIT

    @property
    def member_names(self) -> List[str]:
        return [m.name for m in self.members]

    # ------------------------------------------------------------------ what a run is
    @classmethod
    def fingerprint(cls, model: dict) -> Dict[str, Any]:
        """What a run of this method with the model config ``model`` is: the method, the
        values of its :attr:`result_arguments` (their defaults where the config gives none)
        and each member's :meth:`~bikd.Member.fingerprint`."""
        defaults = argument_defaults(cls)
        out: Dict[str, Any] = dict(method=cls.__name__)
        for key in cls.result_arguments:
            out[key] = plain(model.get(key, defaults.get(key)))
        random_init = bool(model.get('random_init', False))
        out['members'] = [
            member_class(m).fingerprint(dict(m, name=m.get('name', f'member {i}')), random_init)
            if isinstance(m, dict) else dict(name=m.name, type=type(m).__name__)
            for i, m in enumerate(model.get('members') or [])]
        return out

    # ------------------------------------------------------------------ experiments
    @classmethod
    def run_model(cls, model: dict, **arguments) -> dict:
        """``model`` (another method's model config with the same members) as a config of
        this class: its members and every argument of ``model`` this class takes, plus
        ``arguments``."""
        accepted = accepted_arguments(cls)
        kept = {k: v for k, v in model.items() if k in accepted}
        return dict(type=cls.__name__, **{**kept, **arguments})

    @classmethod
    def experiment_runs(cls, model: dict) -> List[ExperimentRun]:
        """The training runs this method needs to improve the members of ``model``: by
        default one run in which every member learns. Raises :class:`MethodNotApplicable`
        where the method cannot run on these members."""
        names = member_names(model)
        if len(names) < cls.min_members:
            raise MethodNotApplicable(f'{cls.method or cls.__name__} needs at least '
                                      f'{cls.min_members} members, the config has {len(names)}')
        return [ExperimentRun(cls.method, cls.method, cls.run_model(model), tuple(names))]

    # ------------------------------------------------------------------ training
    def parse_losses(self, losses: StepOutput) -> Tuple[Tensor, Dict[str, Tensor]]:
        """The total loss and the logged values of a step. Terms that are not finite are left
        out of the log (the step output says which: :meth:`StepOutput.nonfinite_terms`)."""
        total = losses.total()
        log_vars = losses.log_vars()
        bad = losses.nonfinite_terms()
        if bad:
            log_vars = {k: v for k, v in log_vars.items() if k not in bad and k != 'loss'}
        return total, log_vars

    def update(self, losses: StepOutput, optim_wrapper) -> Dict[str, Tensor]:
        """One step of the weights from a step's losses; returns the logged values. The
        optimiser wrapper decides whether the step is taken; the suite's wrappers are told
        which terms were not finite, to name them when they drop the step or stop."""
        total, log_vars = self.parse_losses(losses)
        if hasattr(optim_wrapper, 'update_params_in_parts'):  # the suite's step policy
            optim_wrapper.update_params(total, nonfinite=losses.nonfinite_terms())
        else:
            optim_wrapper.update_params(total)
        return log_vars

    def init_weights(self):
        """mmengine's Runner calls this before ``load_from`` / resume: the members take their
        weights (:func:`bikd.members.loading.take_weights`) unless the builder has given them
        (nothing of mmengine's initialisation is applied to pretrained members)."""
        if weights_missing(self):
            take_weights(self)

    def val_step(self, data: Any) -> list:
        check_weights_taken(self)
        return super().val_step(data)

    def test_step(self, data: Any) -> list:
        check_weights_taken(self)
        return super().test_step(data)

    def train_step(self, data: Any, optim_wrapper) -> Dict[str, Tensor]:
        check_weights_taken(self)
        if self._one_sample_for_batch_norm(data):
            return {}
        if self.lean:
            return self.lean_step(data, optim_wrapper)
        with optim_wrapper.optim_context(self):
            data = self.data_preprocessor(data, True)
            losses = self(**data, mode='loss') if isinstance(data, dict) else \
                self(*data, mode='loss')
        return self.update(losses, optim_wrapper)

    def lean_step(self, data: Any, optim_wrapper,
                  reduce_gradients: Optional[Callable[[nn.Module], None]] = None
                  ) -> Dict[str, Tensor]:
        """One training step member by member (:mod:`bikd.method.lean`);
        ``reduce_gradients(member)`` after each member's backward (DDP)."""
        if type(self).loss is not MultiMemberMetaArch.loss:
            raise TypeError(f'{type(self).__name__} overrides loss(); lean mode computes the loss '
                            'member by member and needs it as loss_from_outputs(outputs, '
                            'data_samples, decide_on=None)')
        return lean_train_step(self, data, optim_wrapper, reduce_gradients)

    _skipped_single_batches = 0

    def _one_sample_for_batch_norm(self, data: Any) -> bool:
        """A training batch of one sample (an epoch's last, when the set size leaves one over)
        cannot be normalised by batch norm in training mode: such a batch is skipped, with a
        warning the first time."""
        inputs = data.get('inputs') if isinstance(data, dict) else None
        n = len(inputs) if isinstance(inputs, (Tensor, list, tuple)) else None
        if n != 1 or not any(isinstance(m, BATCH_NORMS) and m.training
                             for m in self.modules()):
            return False
        self._skipped_single_batches += 1
        if self._skipped_single_batches == 1:
            warnings.warn('a training batch holds a single sample, which batch norm cannot '
                          'normalise (the last batch of an epoch whose size leaves one over): '
                          'such batches are skipped. train_dataloader.drop_last=true drops '
                          'every incomplete last batch instead.', RuntimeWarning)
        return True

    def prepare_inputs(self, inputs: Any) -> Any:
        """The batch as the members take it (channels-last where switched on)."""
        return to_channels_last(inputs) if self.channels_last else inputs

    def forward(self, inputs: Any, data_samples: Any = None, mode: str = 'tensor'):
        inputs = self.prepare_inputs(inputs)
        if mode == 'loss':
            if self.lean and torch.is_grad_enabled() and not self._warned_not_lean:
                self._warned_not_lean = True
                warnings.warn('model.lean=true, but the training step came through '
                              "forward(mode='loss') (a model wrapper that does not know lean "
                              'mode): this step is the ordinary one. Under DDP use '
                              'model_wrapper_cfg.type=bikd.BiKDDistributedDataParallel.',
                              RuntimeWarning)
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return [m.predict(inputs, data_samples) for m in self.members]
        raise ValueError(f'invalid mode {mode!r}; expected "loss", "predict" or "tensor"')

    def predict(self, inputs: Any, data_samples: Any = None) -> List[Dict[str, Any]]:
        """Every member's prediction and the ensemble's (their mean).

        Returns a one-element list (mmengine's evaluator iterates over outputs) holding
        ``dict(names=[K member names + 'ensemble'], preds=MemberPredictions)``: the members
        run one at a time when the metric reads them
        (:class:`bikd.evaluation.MemberPredictions`; ``.stacked()`` for one tensor).
        """
        preds = MemberPredictions(self.members, inputs, data_samples)
        return [dict(names=preds.names, preds=preds)]

    _warned_not_lean = False

    def step_members(self) -> List[Member]:
        """The modules whose training forward a step runs, in the order in which
        :meth:`loss_from_outputs` takes their outputs: the members by default (KL+DP adds
        the frozen initial copy of its student). Those without trainable weights run
        without gradient."""
        return list(self.members)

    def forward_members(self, inputs: Any, data_samples: Any) -> List[MemberOutput]:
        """The training forward of every module of :meth:`step_members`, labelled for
        torch.profiler traces; frozen ones without gradient."""
        outputs = []
        for m in self.step_members():
            with record_function(f'bikd.forward.{m.name}'), torch.set_grad_enabled(
                    torch.is_grad_enabled() and trains(m)):
                outputs.append(m.forward_train(inputs, data_samples))
        return outputs

    def loss_from_outputs(self, outputs: Sequence[MemberOutput], data_samples: Any,
                          decide_on: Optional[Sequence[MemberOutput]] = None) -> StepOutput:
        """The step's losses from the outputs of :meth:`step_members`; per-sample choices
        are taken on ``decide_on`` (default: ``outputs``)."""
        raise NotImplementedError(f'{type(self).__name__} implements no loss_from_outputs')

    def task_losses(self, outputs: Sequence[MemberOutput]) -> StepOutput:
        """Every member's mean task loss (the members that learn from their task: all)."""
        return StepOutput(task_losses={m.name: o.task_loss()
                                       for m, o in zip(self.members, outputs)})

    def loss(self, inputs: Any, data_samples: Any) -> StepOutput:
        return self.loss_from_outputs(self.forward_members(inputs, data_samples), data_samples)


def check_partition(members: Sequence[Member], partition: str, ties: str) -> None:
    """The partition's arguments, and a warning where ``partition='loss'`` would compare
    losses the members define differently."""
    if partition not in PARTITIONS:
        raise UserError(f'partition must be one of {PARTITIONS}, got {partition!r}')
    if ties not in TIE_RULES:
        raise UserError(f'ties must be one of {TIE_RULES}, got {ties!r}')
    kinds = {m.name: m.partition_loss_kind for m in members}
    if partition == 'loss' and len(set(kinds.values())) > 1:
        warnings.warn(f'partition="loss" compares per-sample losses that the members define '
                      f'differently ({kinds}): the member with the smaller scale will teach '
                      'everything. Give the members a loss defined alike for the partition '
                      '(segmentation members: partition_loss="pixel_ce").', PartitionWarning)


def choose_teachers(members: Sequence[Member], outputs: Sequence[MemberOutput], partition: str,
                    ties: str) -> Tensor:
    """Teacher index per sample (``LongTensor[N]``) from the members' outputs: the highest
    ground-truth confidence (Eq. 3 / 11) or the lowest per-sample loss (Eq. 6)."""
    if partition == 'confidence':
        missing = [m.name for m, o in zip(members, outputs) if o.confidence is None]
        if missing:
            raise UserError(f'members {missing} give no ground-truth confidence; use '
                            "partition='loss' for this task")
        return select_teachers(torch.stack([o.confidence for o in outputs]), True, ties)
    losses = [o.loss if o.partition_loss is None else o.partition_loss for o in outputs]
    return select_teachers(torch.stack([x.detach() for x in losses]), False, ties)


class PartitionedMetaArch(MultiMemberMetaArch):
    """Members whose samples are each given a teacher by the per-sample partition: Bi-KD, and
    its control, which computes the partition only to log it.

    Args:
        members: see :class:`MultiMemberMetaArch`.
        partition: ``'confidence'`` (the highest ground-truth confidence teaches, Eq. 3 / 11)
            or ``'loss'`` (the lowest per-sample loss, Eq. 6).
        ties: a sample whose best score is shared by several members: ``'later'`` (the
            later member teaches, as Eq. 3 / 6 say for two members; the default) or
            ``'skip'`` (nobody teaches it, as the authors' three- and four-model scripts do).
    """

    result_arguments = ('partition', 'ties')

    def __init__(self, members: Sequence[Union[dict, Member]], partition: str = 'confidence',
                 ties: str = 'later', **kwargs):
        super().__init__(members, **kwargs)
        check_partition(self.members, partition, ties)
        self.partition, self.ties = partition, ties

    def partition_step(self, outputs: Sequence[MemberOutput],
                       decide_on: Optional[Sequence[MemberOutput]] = None
                       ) -> Tuple[StepOutput, Tensor]:
        """The members' task losses with the share of samples each taught, and the teacher of
        every sample (chosen on ``decide_on`` when given)."""
        out = self.task_losses(outputs)
        teachers = choose_teachers(self.members, outputs if decide_on is None else decide_on,
                                   self.partition, self.ties)
        out.teacher_share = dict(zip(self.member_names, teacher_share(teachers, len(outputs))))
        return out, teachers


@META_ARCH.register_module()
class BiKDMetaArch(PartitionedMetaArch):
    """Bidirectional knowledge distillation between K >= 2 pretrained members.

    Per sample, the teacher is the member with the highest ground-truth confidence
    (``partition='confidence'``, Eq. 3 / 11) or the lowest task loss (``partition='loss'``,
    Eq. 6); ties go to the later member. Loss = sum of the members' mean task losses + the
    masked KL of every other member to the teacher (Eq. 12 / 13).

    Args:
        members, partition, ties: see :class:`PartitionedMetaArch`.
        temperature: T of Eq. 1.
        detach_teacher: stop the distillation gradient into the teacher (standard
            distillation, the default). ``False`` lets it flow into the teacher too, as the
            paper authors' classification and saliency scripts do.
        detach_student: also stop it into the students, so that the distillation term is
            computed and logged but trains nothing: the authors' segmentation code, which is
            therefore equivalent to the Independent control.

    Logged per step: each member's task loss, the distillation term and the share of the
    batch each member taught (:mod:`bikd.step`).
    """
    method = 'bikd'
    result_arguments = PartitionedMetaArch.result_arguments + (
        'temperature', 'detach_teacher', 'detach_student')

    def __init__(self, members: Sequence[Union[dict, Member]], temperature: float = 1.0,
                 detach_teacher: bool = True, detach_student: bool = False, **kwargs):
        super().__init__(members, **kwargs)
        self.temperature = positive_temperature(temperature)
        self.detach_teacher = bool(detach_teacher)
        self.detach_student = bool(detach_student)

    def loss_from_outputs(self, outputs: Sequence[MemberOutput], data_samples: Any,
                          decide_on: Optional[Sequence[MemberOutput]] = None) -> StepOutput:
        with record_function('bikd.distillation'):
            out, teachers = self.partition_step(outputs, decide_on)
            logits = [o.logits.detach() if self.detach_student else o.logits for o in outputs]
            out.distill_loss = distillation_loss(logits, teachers, self.temperature,
                                                 self.detach_teacher)
        return out


@META_ARCH.register_module()
class IndependentMetaArch(PartitionedMetaArch):
    """The control: the same members fine-tuned on their own task losses, nothing distilled.

    It takes Bi-KD's arguments (:class:`BiKDMetaArch`), so that a Bi-KD config becomes its
    control by changing ``type`` alone: ``partition`` and ``ties`` decide the share of samples
    each member *would* have taught, which is logged; ``temperature``, ``detach_teacher`` and
    ``detach_student`` are accepted and unused. With one member it is plain fine-tuning (used to
    "pretrain" the demo's members).
    """
    method = 'independent'
    control = ''
    partition_teaches = False
    min_members = 1

    def __init__(self, members: Sequence[Union[dict, Member]], temperature: float = 1.0,
                 detach_teacher: bool = True, detach_student: bool = False, **kwargs):
        super().__init__(members, **kwargs)  # the distillation's arguments: taken, unused

    def loss_from_outputs(self, outputs: Sequence[MemberOutput], data_samples: Any,
                          decide_on: Optional[Sequence[MemberOutput]] = None) -> StepOutput:
        if len(outputs) < 2:
            return self.task_losses(outputs)
        return self.partition_step(outputs, decide_on)[0]
