"""Everything a run keeps in its checkpoints besides the weights and the optimiser, in one
object (:class:`RunState`) under one key of the checkpoint (:data:`RUN_STATE_KEY`), with its
own version.

What it holds: the run's fingerprint (what the run is, :mod:`bikd.engine.fingerprint`), the
evaluation before training and every evaluation during it, each member's best records
(:mod:`bikd.engine.best`), the summed teacher shares, the training samples skipped as
unreadable, the optimiser wrapper's count of steps dropped for a non-finite loss, and the
random generators' states. The suite's runner holds one (``runner.run_state``); the hooks
read and update it, and :class:`RunStateHook` (registered in every run by the runner) writes
it into each checkpoint and takes it back when a run resumes.

A checkpoint is written *before* the evaluation that follows it (mmengine's loops save in
``after_train_epoch`` / ``after_train_iter`` and evaluate after). A run that resumes from it
therefore first finishes what that checkpoint still owed: the evaluation due at its
iteration (:func:`evaluation_due`), with everything that evaluation does (best weights, the
record of evaluations). The evaluation of the same weights gives the same numbers, so a run
killed at any moment (mid-epoch, during a checkpoint's write, during the evaluation, during a
``best/`` save) and resumed ends with the ``best/`` and ``summary.json`` of a run that was
never interrupted.
"""
import bisect
import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional

from mmengine.dist import broadcast, is_distributed
from mmengine.hooks import Hook
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

from ..data import SkipBadSamples, unwrap_dataset
from ..errors import UserError
from ..registry import HOOKS
from .build import unwrap
from .random_state import get_random_state

#: the key of a checkpoint that holds the run state
RUN_STATE_KEY = 'bikd_run_state'
#: the layout of the run state this version writes
RUN_STATE_VERSION = 1


@dataclass
class RunState:
    """The state of a run that its checkpoints carry besides weights and optimiser.

    Attributes:
        fingerprint: what the run is (:func:`bikd.engine.fingerprint.run_fingerprint`).
        before: every metric of the evaluation before training (iteration 0).
        evaluations: the evaluations during training, in order: ``{iteration, epoch,
            metrics}`` with every metric of every model (``<model>/<metric>``).
        best: member -> selection metric -> ``{iteration, value, file}``, the weights in
            ``best/`` (:class:`bikd.engine.best.BestMembersHook`).
        teacher_share_sum, teacher_share_steps: the teacher shares summed over the steps
            that updated the weights, and how many steps that is.
        skipped_samples: training samples skipped as unreadable (``skip_bad_samples``).
        nonfinite_steps, nonfinite_in_a_row: steps the optimiser wrapper dropped for a
            non-finite loss, in all and in a row at the save.
        random: the random generators' states at the save
            (:func:`bikd.engine.random_state.get_random_state`).
    """
    fingerprint: Dict[str, Any] = field(default_factory=dict)
    before: Optional[Dict[str, float]] = None
    evaluations: List[Dict[str, Any]] = field(default_factory=list)
    best: Dict[str, Dict[str, dict]] = field(default_factory=dict)
    teacher_share_sum: Dict[str, float] = field(default_factory=dict)
    teacher_share_steps: int = 0
    skipped_samples: int = 0
    nonfinite_steps: int = 0
    nonfinite_in_a_row: int = 0
    random: Optional[dict] = None

    # ------------------------------------------------------------------ what the hooks use
    def add_teacher_share(self, shares: Dict[str, float]) -> None:
        for name, share in shares.items():
            self.teacher_share_sum[name] = self.teacher_share_sum.get(name, 0.0) + float(share)
        self.teacher_share_steps += 1

    def teacher_share(self) -> Dict[str, float]:
        """Each member's share of the samples it taught, averaged over the steps."""
        steps = self.teacher_share_steps
        return {k: v / steps for k, v in self.teacher_share_sum.items()} if steps else {}

    def add_evaluation(self, iteration: int, epoch: int, metrics: Dict[str, float]) -> None:
        self.evaluations.append(dict(iteration=int(iteration), epoch=int(epoch),
                                     metrics={k: float(v) for k, v in metrics.items()}))

    def evaluation_at(self, iteration: int) -> Optional[Dict[str, float]]:
        """The metrics of the evaluation at ``iteration``, if there was one."""
        for record in reversed(self.evaluations):
            if record['iteration'] == iteration:
                return record['metrics']
        return None

    # ------------------------------------------------------------------ in and out of checkpoints
    def state_dict(self) -> Dict[str, Any]:
        """The checkpoint's entry: plain containers and tensors (``weights_only`` loads it)."""
        return dict(version=RUN_STATE_VERSION, **copy.deepcopy(asdict(self)))

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, source: str = 'the checkpoint') -> 'RunState':
        """The run state a checkpoint holds; an empty one for a checkpoint that holds none
        (written by mmengine's own runner)."""
        state = checkpoint.get(RUN_STATE_KEY)
        if state is None:
            return cls()
        version = state.get('version')
        if version != RUN_STATE_VERSION:
            raise UserError(f'{source} holds a run state of version {version}; this version of '
                            f'bikd reads version {RUN_STATE_VERSION}: resume it with the bikd '
                            'that wrote it')
        known = {f.name for f in fields(cls)}
        return cls(**copy.deepcopy({k: v for k, v in state.items() if k in known}))


def recorded_fingerprint(checkpoint: dict) -> Optional[Dict[str, Any]]:
    """The fingerprint a checkpoint's run state recorded; ``None`` for a checkpoint without
    one."""
    state = checkpoint.get(RUN_STATE_KEY)
    if isinstance(state, dict):
        return state.get('fingerprint') or None
    return None


def run_state_of(runner) -> RunState:
    """The runner's run state (made, empty, for a runner that is not the suite's)."""
    state = getattr(runner, 'run_state', None)
    if state is None:
        state = RunState()
        runner.run_state = state
    return state


def training_dataset(runner, cls: type = SkipBadSamples) -> Any:
    """The training dataset's wrapper of type ``cls`` (``None`` when it has none)."""
    loader = runner.train_dataloader if runner.train_loop is not None else None
    return unwrap_dataset(getattr(loader, 'dataset', None), cls)


def evaluation_due(runner) -> bool:
    """Whether the train loop evaluates at the point where it stands: the evaluation that
    follows a checkpoint saved here (mmengine's loops save first, then evaluate)."""
    loop = runner.train_loop
    if runner.val_loop is None:
        return False
    if isinstance(loop, EpochBasedTrainLoop):
        if loop.iter != loop.epoch * len(loop.dataloader):  # saved mid-epoch
            return False
        progress, end = loop.epoch, loop.max_epochs
    elif isinstance(loop, IterBasedTrainLoop):
        progress, end = loop.iter, loop.max_iters
    else:
        return False
    if progress == 0:
        return False
    # the interval in force there, as the loop decides it (its dynamic intervals by milestone)
    interval = loop.dynamic_intervals[bisect.bisect(loop.dynamic_milestones, progress + 1) - 1]
    return progress >= loop.val_begin and (progress % interval == 0 or progress == end)


@HOOKS.register_module()
class RunStateHook(Hook):
    """Writes the runner's :class:`RunState` into every checkpoint and takes it back when the
    run resumes (only then: ``load_from`` takes weights alone); a resumed run then first runs
    the evaluation its checkpoint owed. The suite's runner registers it in every run."""
    priority = 'VERY_LOW'  # before_train: after the hooks that read the state back

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        state = run_state_of(runner)
        state.random = get_random_state()
        wrapper = runner.optim_wrapper
        if hasattr(wrapper, 'skipped_steps'):
            state.nonfinite_steps = int(wrapper.skipped_steps)
            state.nonfinite_in_a_row = int(wrapper.skipped_in_a_row)
        dataset = training_dataset(runner)
        if dataset is not None:
            state.skipped_samples = dataset.skipped
        checkpoint[RUN_STATE_KEY] = state.state_dict()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not getattr(runner, 'resuming', False):
            return
        fingerprint = run_state_of(runner).fingerprint  # the run as configured now
        runner.run_state = RunState.from_checkpoint(checkpoint)
        runner.run_state.fingerprint = fingerprint

    def before_val(self, runner) -> None:
        # Under DDP each process keeps batch-norm statistics of its own (buffers are not
        # broadcast in training) and a checkpoint holds process 0's. Every process evaluates
        # process 0's model, the one a checkpoint holds and a resumed run continues from, so
        # an evaluation gives the same numbers whether or not the run was interrupted.
        if is_distributed():
            for buffer in unwrap(runner.model).buffers():
                broadcast(buffer, src=0)

    def before_train(self, runner) -> None:
        if runner.iter == 0:
            return
        state = run_state_of(runner)
        wrapper = runner.optim_wrapper
        if hasattr(wrapper, 'skipped_steps'):
            wrapper.skipped_steps = state.nonfinite_steps
            wrapper.skipped_in_a_row = state.nonfinite_in_a_row
        dataset = training_dataset(runner)
        if dataset is not None:
            dataset.skipped = state.skipped_samples
        if evaluation_due(runner) and state.evaluation_at(runner.iter) is None:
            runner.logger.info(f'Finishing what the checkpoint of iteration {runner.iter} owed: '
                               'the evaluation after it (its best weights and records are '
                               'kept as in an uninterrupted run)')
            runner.val_loop.run()
            runner.model.train()


__all__ = ['RUN_STATE_KEY', 'RUN_STATE_VERSION', 'RunState', 'RunStateHook', 'evaluation_due',
           'recorded_fingerprint', 'run_state_of']
