"""The suite's runner: mmengine's ``Runner`` that owns the run, from its config to its last
checkpoint, as detectron2's ``build_model`` + ``DetectionCheckpointer.resume_or_load`` and
mmengine's ``Runner.load_or_resume`` do for theirs.

The one path from a config to a trained run::

    cfg = load_config(FILE, overrides)       # bikd.engine.config: YAML, overrides, key checks
    runner = BiKDRunner.from_cfg(cfg)        # (mmengine's RUNNERS.build(cfg) calls the same)
    runner.train()                           # or runner.evaluate() (--eval-only)

- :meth:`BiKDRunner.from_cfg` completes the config (work_dir, processes, the suite's own
  keys), checks that the work_dir can be written, removes the temporary files an interrupted
  save left anywhere in it, and builds the model through :func:`bikd.build_model`
  (:meth:`BiKDRunner.build_model`): built, no weights read.
- :meth:`BiKDRunner.load_or_resume` (called by ``train`` and ``val``) chooses what the run
  starts from (:func:`choose_start`: the work_dir's last checkpoint under ``resume``,
  ``load_from`` only on a fresh start, else the members' own weights) and says which and why
  in the log, checks that a resumed checkpoint is of the same run (its fingerprint) and that
  the checkpoint fits the model, has every member take its weights (none is read when the
  checkpoint holds them all), then loads or resumes.
- The run's state besides weights and optimiser is one object, ``runner.run_state``
  (:class:`~bikd.engine.run_state.RunState`), written into every checkpoint and taken back on
  resume; a resumed run first runs the evaluation its checkpoint owed.
- What a run keeps always runs: the guard hooks (:data:`GUARD_HOOKS`) are registered whatever
  hooks a config lists.
- A start that fails on the user's input (:class:`~bikd.errors.UserError`) or on a file
  (``OSError``) leaves the work_dir as it found it; anything else is a bug and leaves it as it
  is, for diagnosis.

The config's keys of the suite (popped before mmengine sees them): ``resume`` (``false``,
``true`` / ``strict``: a checkpoint must be there, ``auto``: continue if there is one),
``load_from`` (mmengine's, a fresh start's weights), ``load_partial`` (load what of
``load_from`` fits), ``resume_changed`` (resume although the run changed),
``skip_bad_samples`` (unreadable training samples to skip) and
``keep_training_on_save_error`` (a failed save warns instead of stopping the run).
"""
import copy
import errno
import logging
import os
import os.path as osp
import shutil
from dataclasses import dataclass
from typing import Optional, Set

from mmengine.dist import get_rank
from mmengine.runner import Runner

from ..checkpoint import (check_checkpoint_fits, check_readable, checkpoint_iteration,
                          find_last_checkpoint)
from ..errors import UserError, error_message
from ..fileio import SaveError, folder_cannot_take_writes, remove_stale_temporaries, save_json
from ..metrics import memberwise_metric
from ..registry import RUNNERS
from ..summary import build_evaluation, format_evaluation
from .build import build_model, unwrap
from .fingerprint import check_same_run, run_fingerprint
from .launch import setup_distributed
from .patches import setup_engine
from .run_state import RunState, recorded_fingerprint

#: hooks every run has, whatever its config lists: (type, priority)
GUARD_HOOKS = (('LabelSpaceCheckHook', 'VERY_HIGH'), ('RandomStateHook', 'VERY_HIGH'),
               ('RunStateHook', 'VERY_LOW'))
#: the values of the config's ``resume`` -> the mode (None: a fresh start)
RESUME_MODES = {False: None, None: None, True: 'strict', 'strict': 'strict', 'auto': 'auto'}
#: the config key that turns a failed save into a warning
KEEP_TRAINING_KEY = 'keep_training_on_save_error'


class RunStopped(UserError):
    """The run cannot go on for a reason outside the code (a file it must write cannot be
    written, a file it reads broke); the message says what and what to do."""


def save_failed(runner, message: str, error: Exception) -> None:
    """A save of the run failed (``message`` says which and what is intact): stop the run
    with :class:`RunStopped`, or with the config's ``keep_training_on_save_error: true`` log a
    warning and go on."""
    if runner.cfg.get(KEEP_TRAINING_KEY, False):
        runner.logger.warning(f'{message}; training goes on ({KEEP_TRAINING_KEY}=true)')
        return
    raise RunStopped(f'{message}. Free space (or make the work_dir writable), then continue '
                     f'with --resume auto; {KEEP_TRAINING_KEY}=true trains on without the '
                     'files that cannot be written') from error


def default_work_dir(config_file: str) -> str:
    """Where a config's run goes when it names no ``work_dir``: ``work_dirs/<config name>``."""
    return osp.join('work_dirs', osp.splitext(osp.basename(config_file))[0])


def check_work_dir(work_dir: str) -> None:
    """The work_dir is a writable folder or can be made one, on a disk with room, else an
    error that says why, before anything is built or written (a folder made to find out is
    removed again)."""
    path = osp.abspath(work_dir)
    if osp.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f'work_dir {path} is not writable; choose another with '
                                  'work_dir=...')
        full = folder_cannot_take_writes(path)
        if full is not None:
            raise SaveError(path, full)
        return
    if osp.exists(path):
        raise FileExistsError(f'work_dir {path} is a file, not a folder; choose another with '
                              'work_dir=...')
    missing, parent = [], path
    while not osp.exists(parent):
        missing.append(parent)
        parent = osp.dirname(parent)
    if not osp.isdir(parent):
        raise NotADirectoryError(f'work_dir {path} cannot be made: {parent} is a file, not a '
                                 'folder; choose another with work_dir=...')
    try:
        os.makedirs(path)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise SaveError(path, e) from e
        raise PermissionError(f'work_dir {path} cannot be made in {parent}: '
                              f'{e.strerror or e}; choose another with work_dir=...') from e
    full = folder_cannot_take_writes(path)
    for folder in missing:  # deepest first: made only to find out
        os.rmdir(folder)
    if full is not None:
        raise SaveError(path, full)


@dataclass
class Start:
    """What a run starts from: ``'fresh'`` (the members' own weights), ``'load'`` (the
    weights of a runner checkpoint, nothing else) or ``'resume'`` (a checkpoint of this run:
    weights, optimiser, schedule position and run state); ``note`` says which and why."""
    kind: str
    checkpoint: Optional[str] = None
    note: str = ''


def resume_mode(value) -> Optional[str]:
    """The config's ``resume`` as a mode: ``None`` (no resume), ``'strict'`` or ``'auto'``."""
    if isinstance(value, (bool, str)) or value is None:
        if value in RESUME_MODES:
            return RESUME_MODES[value]
    raise UserError(f'resume={value!r}: give false, true (a checkpoint must be there) or auto '
                    '(continue if there is one, else start afresh)')


def choose_start(work_dir: str, resume=False, load_from: Optional[str] = None,
                 evaluating: bool = False) -> Start:
    """What a run in ``work_dir`` starts from (see :class:`Start`).

    Training: with ``resume`` (``'strict'`` or ``'auto'``) the work_dir's last complete
    checkpoint wins (:func:`~bikd.checkpoint.find_last_checkpoint`); ``load_from`` is a fresh
    start's weights and is used only when there is nothing to resume under ``'auto'``, so a
    job script passing both continues its own work at every requeue. ``'strict'`` with
    nothing to resume is an error. Evaluation (``evaluating``): ``load_from`` when given,
    else with ``resume`` the last checkpoint, else the members as configured."""
    mode = resume_mode(resume)
    where = osp.abspath(work_dir)
    flag = '--resume' + (' auto' if mode == 'auto' else '')
    if evaluating and load_from:
        return Start('load', load_from, f'evaluating load_from={load_from}')
    if mode is None:
        return Start('load', load_from, f'starting from the weights of load_from={load_from}') \
            if load_from else Start('fresh')
    last, why = find_last_checkpoint(work_dir)
    if last is not None:
        note = f'{flag}: continuing from {last}' + (f' ({why})' if why else '')
        if evaluating:
            return Start('load', last, f'{flag}: evaluating the last checkpoint {last}' +
                         (f' ({why})' if why else ''))
        if load_from:
            note += (f'; load_from={load_from} is a fresh start\'s weights and is not used: '
                     'this work_dir holds the run\'s own checkpoint')
        return Start('resume', last, note)
    if mode == 'strict':
        raise UserError(f'--resume: nothing to resume in {where} ({why}). Is the work_dir '
                        'right (work_dir=... or the config\'s name)? Without --resume the run '
                        'starts afresh; --resume auto resumes only where there is something to.')
    if evaluating:
        return Start('fresh', None, f'{flag}: no checkpoint in {where}: evaluating the members '
                                    'as configured')
    if load_from:
        return Start('load', load_from, f'{flag}: nothing to resume in {where} ({why}): '
                                        f'starting afresh from load_from={load_from}')
    return Start('fresh', None, f'{flag}: nothing to resume in {where} ({why}): starting '
                                'afresh')


#: a log record's attribute (``extra={LOG_FILE_ONLY: True}``) that keeps it off the terminal
LOG_FILE_ONLY = 'bikd_log_file_only'


#: what the config's global_batch_policy may say
GLOBAL_BATCH_POLICIES = ('keep', 'scale_lr')


def global_batch(cfg, world_size: int) -> str:
    """Keep the config's ``global_batch_size`` (the batch of one step over all processes,
    e.g. the paper's 128) whatever the number of processes: ``global_batch_policy: keep``
    (the default) sets each process's batch to the global one divided by the processes (an
    error when it does not divide), ``scale_lr`` keeps the per-process batch and scales the
    learning rate by the batch it makes as mmengine's ``auto_scale_lr`` does (linear scaling).
    Returns the note for the log ('' when the config gives no global batch)."""
    total = cfg.pop('global_batch_size', None)
    policy = cfg.pop('global_batch_policy', 'keep')
    if total is None:
        return ''
    if policy not in GLOBAL_BATCH_POLICIES:
        raise UserError(f'global_batch_policy={policy!r}: give one of {GLOBAL_BATCH_POLICIES}')
    if not isinstance(total, int) or isinstance(total, bool) or total < 1:
        raise UserError(f'global_batch_size={total!r}: give the batch of a step over all '
                        'processes, a positive integer')
    loader = cfg.get('train_dataloader')
    if not loader:
        return ''
    if policy == 'scale_lr':
        cfg.auto_scale_lr = dict(enable=True, base_batch_size=total)
        return (f'global batch: {world_size} process(es) x {loader.batch_size} = '
                f'{world_size * loader.batch_size} per step, against the config\'s {total}: '
                'the learning rate is scaled by their ratio (global_batch_policy=scale_lr; '
                'mmengine logs the scaled rate)')
    if total % world_size:
        raise UserError(f'global_batch_size={total} does not divide among {world_size} '
                        'processes: choose a number of processes that divides it, or '
                        'global_batch_policy=scale_lr to keep the per-process batch and scale '
                        'the learning rate')
    loader.batch_size = total // world_size
    return (f'global batch {total} = {world_size} process(es) x {loader.batch_size} '
            '(global_batch_size; the learning rate is the config\'s)')


class _KeepDumpsInTheLogFile(logging.Filter):
    """Keeps mmengine's environment, config and hook-order dumps (about 300 lines a run), and
    records marked :data:`LOG_FILE_ONLY`, off the terminal; the log file in the work_dir still
    has them."""
    DUMPS = ('Config:\n', 'Hooks will be executed in the following order')

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, LOG_FILE_ONLY, False):
            return False
        message = record.getMessage()
        return not ('\nSystem environment:' in message[:100] or message.startswith(self.DUMPS))


@dataclass
class _Options:
    """The suite's config keys a runner acts on (see the module's description)."""
    resume: object = False
    load_partial: bool = False
    resume_changed: bool = False


@RUNNERS.register_module()
class BiKDRunner(Runner):
    """mmengine's ``Runner`` (same arguments) that owns the run: see the module's
    description. Build it with :meth:`from_cfg` (or mmengine's ``RUNNERS.build(cfg)``)."""

    options = _Options()
    run_state: Optional[RunState] = None
    #: what the run starts from, once :meth:`prepare_start` has decided
    start: Optional[Start] = None
    #: whether the checkpoint being loaded is resumed (its run state is taken back)
    resuming = False

    # ------------------------------------------------------------------ from a config
    @classmethod
    def from_cfg(cls, cfg) -> 'BiKDRunner':
        """The runner of a config: its work_dir checked and cleaned of an interrupted save's
        temporary files, the suite's keys taken out, the model built (not loaded). A start
        that fails on a full or read-only disk says so in one line and leaves nothing."""
        setup_engine()
        cfg = copy.deepcopy(cfg)
        options = _Options(resume=cfg.pop('resume', False),
                           load_partial=bool(cfg.pop('load_partial', False)),
                           resume_changed=bool(cfg.pop('resume_changed', False)))
        resume_mode(options.resume)  # an invalid one is refused before anything is made
        skips = cfg.pop('skip_bad_samples', None)
        if skips is not None:
            if not isinstance(skips, int) or isinstance(skips, bool) or skips < 0:
                raise UserError(f'skip_bad_samples={skips!r}: give how many unreadable '
                                'training samples the run may skip (an integer, 0 or more)')
            if cfg.get('train_dataloader'):
                cfg.train_dataloader.dataset = dict(type='SkipBadSamples', max_skips=skips,
                                                    dataset=cfg.train_dataloader.dataset)
        if not cfg.get('work_dir'):
            cfg.work_dir = default_work_dir(cfg.filename or 'run')
        batch_note = global_batch(cfg, int(os.environ.get('WORLD_SIZE', '1')))
        cfg.launcher = setup_distributed(cfg)
        main = get_rank() == 0
        if main:  # the process that writes (the others would race it making the folder)
            check_work_dir(cfg.work_dir)
        work_dir = osp.abspath(cfg.work_dir)
        existed = osp.isdir(work_dir)
        if main and existed:
            removed = remove_stale_temporaries(work_dir)
            if removed:
                print(f'removed {len(removed)} temporary file(s) that an interrupted save left '
                      f'in {work_dir}', flush=True)
        before = set(os.listdir(work_dir)) if existed else set()
        try:
            runner = super().from_cfg(cfg)
        except (UserError, OSError) as e:
            if main:
                _remove_new_entries(work_dir, existed, before)
            if isinstance(e, OSError) and not isinstance(e, SaveError) and e.errno and \
                    not e.filename:  # a write of mmengine's (log, config dump) failed
                raise SaveError(work_dir, e) from e
            raise
        runner.options = options
        runner._start_record = (work_dir, existed, before)
        if batch_note:
            runner.logger.info(batch_note)
        return runner

    def build_model(self, model):
        """The model of the config, built through :func:`bikd.build_model` (no weights)."""
        self.run_state = RunState(fingerprint=run_fingerprint(self.cfg))
        return super().build_model(build_model(dict(model), self.cfg.get('default_scope'))
                                   if isinstance(model, dict) else model)

    def register_hooks(self, default_hooks=None, custom_hooks=None) -> None:
        super().register_hooks(default_hooks, custom_hooks)
        present = {type(h).__name__ for h in self.hooks}
        for kind, priority in GUARD_HOOKS:
            if kind not in present:
                self.register_hook(dict(type=kind), priority=priority)

    def build_logger(self, *args, **kwargs):
        logger = super().build_logger(*args, **kwargs)
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler:
                handler.addFilter(_KeepDumpsInTheLogFile())
        return logger

    # ------------------------------------------------------------------ what to start from
    def prepare_start(self, evaluating: bool = False) -> Start:
        """Choose what the run starts from (:func:`choose_start`), check it (a resumed
        checkpoint's fingerprint against the config's, a checkpoint's fit to the model) and
        have every member take its weights: before any loop is built or anything runs. Once
        per runner; :meth:`train` and :meth:`val` call it."""
        if self.start is not None:
            return self.start
        load_from = self.cfg.get('load_from')
        start = choose_start(self.work_dir, self.options.resume, load_from, evaluating)
        model = unwrap(self.model)
        checkpoint = start.checkpoint
        contents = check_readable(checkpoint) if checkpoint else None
        if start.note:
            self.logger.info(start.note)
        if start.kind == 'resume':
            note = check_same_run(self.run_state.fingerprint, recorded_fingerprint(contents or {}),
                                  checkpoint, self.options.resume_changed)
            if note:
                (self.logger.warning if 'resume_changed' in note else self.logger.info)(note)
        partial = self.options.load_partial and start.kind == 'load'
        if hasattr(model, 'take_weights'):
            if checkpoint:
                check_checkpoint_fits(model, checkpoint, partial,
                                      'load_from' if checkpoint == load_from else '--resume')
            # build, then load: the members' own weights, unless the checkpoint holds them all
            sources = model.take_weights(checkpoint if checkpoint and not partial else None)
            for name, source in sources.items():
                self.logger.info(f'member {name}: weights from {source}')
        self.start = start
        return start

    def load_or_resume(self) -> None:
        """Load or resume what :meth:`prepare_start` chose (mmengine's ``train`` and ``val``
        call this after their ``before_run`` hooks); once per runner."""
        start = self.prepare_start(evaluating=True)
        if self._start_loaded:
            return
        if start.kind == 'resume':
            self.resuming = True  # the run state hook takes the checkpoint's state back
            try:
                self.resume(start.checkpoint)
            finally:
                self.resuming = False
        elif start.kind == 'load':
            self.load_checkpoint(start.checkpoint)
        self._start_loaded = True

    _start_loaded = False

    # ------------------------------------------------------------------ train, evaluate
    def train(self):
        """mmengine's ``train``. A start that fails on the user's input or a file (before the
        first step) leaves the work_dir as it found it; a file of the data that breaks mid-run
        stops the run with its name and the last checkpoint kept."""
        try:
            self.prepare_start()
            return super().train()
        except (UserError, OSError) as e:
            # (not self.iter: that builds the train loop again when building it failed)
            iteration = self.message_hub.get_info('iter', 0)
            if iteration == 0:  # nothing trained: the start failed (data, evaluator, ...)
                self.remove_what_this_start_wrote()
                raise
            if isinstance(e, (UserError, SaveError)):
                raise
            last, _ = find_last_checkpoint(self.work_dir)
            kept = f'its last complete checkpoint {last} is intact' if last else \
                'no checkpoint was saved before'
            raise RunStopped(f'{error_message(e)}; the run stopped at iteration {iteration} and '
                             f'{kept}. Fix or remove the file and continue with --resume auto, '
                             'or let the run skip such training samples with '
                             'skip_bad_samples=N') from e
        except Exception:  # a bug: its traceback, also in the log file; the work_dir is kept
            self.logger.error(f'the run stopped at iteration {self.message_hub.get_info("iter", 0)}'
                              ' on an error of the code, not of its input:', exc_info=True,
                              extra={LOG_FILE_ONLY: True})
            raise

    def val(self):
        """mmengine's ``val``, of what :meth:`prepare_start` chooses for an evaluation; a
        failure on the input leaves the work_dir as it found it."""
        try:
            self.prepare_start(evaluating=True)
            return super().val()
        except (UserError, OSError):
            self.remove_what_this_start_wrote()
            raise

    def evaluate(self) -> dict:
        """``--eval-only``: every member and the ensemble on the validation split, of what
        :func:`choose_start` picks (``load_from``, with ``resume`` the last checkpoint, else
        the members as configured); writes ``eval.json`` and prints the table. Returns the
        evaluation."""
        metrics = self.val()
        model = unwrap(self.model)
        checkpoint = self.start.checkpoint if self.start else None
        iteration = checkpoint_iteration(checkpoint) if checkpoint else None
        evaluated = (f'the checkpoint {checkpoint}' + (
            f' (iteration {iteration})' if iteration is not None else '')
            if checkpoint else 'the initial members (their configured weights)')
        summary = build_evaluation(metrics, model.member_names,
                                   memberwise_metric(self.val_evaluator).primary_metric,
                                   evaluated, type(model).__name__, checkpoint, iteration)
        if self.rank == 0:
            save_json(summary, osp.join(self.work_dir, 'eval.json'))
            print(format_evaluation(summary))
        return summary

    def remove_what_this_start_wrote(self) -> None:
        """A start that failed on its input leaves the work_dir as it found it: what appeared
        in it since this runner was made is removed (its log folder; the work_dir itself when
        this start made it)."""
        for handler in list(self.logger.handlers):  # the log file is in what is removed
            if isinstance(handler, logging.FileHandler):
                handler.close()
                self.logger.removeHandler(handler)
        record = getattr(self, '_start_record', None)
        if self.rank == 0 and record is not None:
            _remove_new_entries(*record)


def _remove_new_entries(work_dir: str, existed: bool, before: Set[str]) -> None:
    if not existed:
        shutil.rmtree(work_dir, ignore_errors=True)
        return
    for name in set(os.listdir(work_dir)) - before if osp.isdir(work_dir) else ():
        path = osp.join(work_dir, name)
        if osp.isdir(path) and not osp.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)


def build_runner(cfg) -> BiKDRunner:
    """The suite's runner from a config."""
    return BiKDRunner.from_cfg(cfg)


__all__ = ['BiKDRunner', 'GUARD_HOOKS', 'RunStopped', 'Start', 'build_runner', 'check_work_dir',
           'choose_start', 'default_work_dir', 'save_failed', 'unwrap']
