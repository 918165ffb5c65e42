"""The suite's runner: mmengine's ``Runner`` that owns the run, from its config to its last
checkpoint, as detectron2's ``build_model`` + ``DetectionCheckpointer.resume_or_load`` and
mmengine's ``Runner.load_or_resume`` do for theirs.

The one path from a config to a trained run::

    cfg = load_config(FILE, overrides)       # bikd.engine.config: YAML, overrides, key checks
    runner = BiKDRunner.from_cfg(cfg)        # (mmengine's RUNNERS.build(cfg) calls the same)
    runner.train()                           # or runner.evaluate() (--eval-only)

- :meth:`BiKDRunner.from_cfg` completes the config (work_dir, processes, the suite's own
  keys), checks that the work_dir can be written and, for a training run, before anything
  is written there: takes the work_dir for this run (:class:`~bikd.engine.ownership.
  WorkDirOwner`: a second start is refused while it runs), removes the temporary files an
  interrupted save left anywhere in it, chooses what the run starts from
  (:func:`choose_start`, every checkpoint verified against its digest), refuses a resume
  whose config describes another run, ends a resume of a finished run at once
  (:class:`RunFinished`), and refuses a fresh start over a run's results unless
  ``overwrite`` moves them aside. It then builds the model through :func:`bikd.build_model`
  (:meth:`BiKDRunner.build_model`): built, no weights read. The run's config copy is written
  only once the start is accepted.
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
``skip_bad_samples`` (unreadable training samples to skip),
``keep_training_on_save_error`` (a failed save warns instead of stopping the run) and
``overwrite`` (a fresh start into a work_dir holding a run moves that run aside).

While it trains, a run stops safely on SIGTERM, SIGINT and SIGUSR2 (a checkpoint at the end of
the current iteration: :mod:`bikd.engine.signals`) and continues mid-epoch exactly
(:mod:`bikd.engine.loops`).
"""
import copy
import errno
import json
import logging
import os
import os.path as osp
import shutil
import time
from dataclasses import dataclass, field
from typing import List, Optional, Set

from mmengine.dist import broadcast_object_list, get_rank, get_world_size
from mmengine.runner import Runner

from ..checkpoint import (check_checkpoint_fits, check_readable, checkpoint_iteration,
                          find_last_checkpoint, forget_checkpoints, last_good_checkpoint,
                          read_checkpoint)
from ..errors import UserError, error_message
from ..fileio import (UNVERIFIED, VERIFIED, SaveError, folder_cannot_take_writes,
                      recorded_digest, remove_stale_temporaries, save_json)
from ..members.loading import take_weights
from ..metrics import memberwise_metric
from ..registry import RUNNERS
from ..summary import build_evaluation, format_evaluation
from .build import build_model, unwrap
from .fingerprint import check_same_run, run_fingerprint
from .keys import START_KEYS
from .launch import setup_distributed
from .ownership import OWNER_FILE, WorkDirOwner
from .patches import setup_engine
from .run_state import RunState, recorded_fingerprint
from .signals import LoaderWorkerInit, RunInterrupted, find_safe_stop_hook
from .stops import RunStopped

#: hooks every run has, whatever its config lists: (type, priority)
GUARD_HOOKS = (('LabelSpaceCheckHook', 'VERY_HIGH'), ('RandomStateHook', 'VERY_HIGH'),
               ('RunStateHook', 'VERY_LOW'), ('SafeStopHook', 'LOWEST'))
#: the values of the config's ``resume`` -> the mode (None: a fresh start)
RESUME_MODES = {False: None, None: None, True: 'strict', 'strict': 'strict', 'auto': 'auto'}


class RunFinished(Exception):
    """``--resume`` of a run that reached its end: there is nothing to do, and nothing in
    its work_dir was changed (the message says so and how to train it further)."""


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
        try:
            os.rmdir(folder)
        except OSError as e:  # another run (a grid's next job) made its own folder in it
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            break
    if full is not None:
        raise SaveError(path, full)


@dataclass
class Start:
    """What a run starts from: ``'fresh'`` (the members' own weights), ``'load'`` (the
    weights of a runner checkpoint, nothing else) or ``'resume'`` (a checkpoint of this run:
    weights, optimiser, schedule position and run state); ``note`` says which and why;
    ``warnings``: checkpoints skipped because they do not match their digests, a run moved
    aside."""
    kind: str
    checkpoint: Optional[str] = None
    note: str = ''
    warnings: List[str] = field(default_factory=list)


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
    if load_from and (evaluating or mode is None):
        state = ''
        if osp.isfile(load_from):  # read (and checked against its digest) once, kept
            read_checkpoint(load_from)
            state = VERIFIED if recorded_digest(load_from) else UNVERIFIED
        unchecked = f' ({load_from} has no digest file: unverified)' if state == UNVERIFIED \
            else ''
        return Start('load', load_from, (f'evaluating load_from={load_from}' if evaluating else
                                         f'starting from the weights of load_from={load_from}')
                     + unchecked)
    if mode is None:
        return Start('fresh')
    found = last_good_checkpoint(work_dir, read=True)
    last, why = found.path, found.why
    if last is None and found.skipped:
        raise UserError(f'{flag}: no checkpoint in {where} can be trusted, every one differs '
                        f'from the digest written with it ({"; ".join(found.skipped)}). Nothing '
                        'is resumed: restore them from a copy, or start afresh with --overwrite '
                        '(the run is moved aside)')
    if last is not None:
        verified = ('; not verified: it has no digest file (written by an earlier version?)'
                    if found.verification == UNVERIFIED else
                    f' (verified against {osp.basename(last)}.sha256)')
        note = f'{flag}: continuing from {last}' + (f' ({why})' if why else '') + verified
        if evaluating:
            return Start('load', last, f'{flag}: evaluating the last checkpoint {last}' +
                         (f' ({why})' if why else '') + verified, found.skipped)
        if load_from:
            note += (f'; load_from={load_from} is a fresh start\'s weights and is not used: '
                     'this work_dir holds the run\'s own checkpoint')
        return Start('resume', last, note, found.skipped)
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
    """The suite's config keys a runner decides a run's start with (:data:`START_KEYS`)."""
    resume: object = False
    overwrite: bool = False
    load_partial: bool = False
    resume_changed: bool = False

    @classmethod
    def take(cls, cfg) -> '_Options':
        """The options, taken out of ``cfg``."""
        return cls(**{key: cfg.pop(key, getattr(cls, key)) if key == 'resume'
                      else bool(cfg.pop(key, getattr(cls, key))) for key in START_KEYS})


#: what a run leaves in its work_dir that a fresh start would replace
RESULT_NAMES = ('last_checkpoint', 'summary.json')


def run_results(work_dir: str) -> List[str]:
    """The entries of ``work_dir`` that hold a run's results: its checkpoints and their
    marker, ``summary.json``, the per-sample outcomes and a non-empty ``best/``."""
    if not osp.isdir(work_dir):
        return []
    found = []
    for name in sorted(os.listdir(work_dir)):
        path = osp.join(work_dir, name)
        if (name in RESULT_NAMES or (name.endswith('.pth') and osp.isfile(path)) or
                (name.startswith('per_sample_') and name.endswith('.npz')) or
                (name == 'best' and osp.isdir(path) and os.listdir(path))):
            found.append(name)
    return found


def move_run_aside(work_dir: str, keep=(OWNER_FILE, )) -> str:
    """Move everything in ``work_dir`` but ``keep`` into ``<work_dir>.replaced-<time>`` (a
    new sibling folder; nothing is deleted); returns that folder."""
    stamp = time.strftime('%Y%m%d-%H%M%S')
    target, n = f'{work_dir}.replaced-{stamp}', 1
    while osp.exists(target):
        n += 1
        target = f'{work_dir}.replaced-{stamp}-{n}'
    try:
        os.makedirs(target)
    except OSError as e:
        raise SaveError(target, e) from e
    for name in sorted(os.listdir(work_dir)):
        if name not in keep:
            os.rename(osp.join(work_dir, name), osp.join(target, name))
    return target


def run_is_finished(cfg, work_dir: str, contents: Optional[dict]) -> Optional[str]:
    """Whether the checkpoint a resume would continue from (its ``contents``) ends the
    schedule of ``cfg`` and the run's ``summary.json`` was written after it: the message
    for :class:`RunFinished`, else ``None``."""
    meta = (contents or {}).get('meta') or {}
    train_cfg = cfg.get('train_cfg') or {}
    if 'iter' not in meta or 'epoch' not in meta:
        return None
    by_epoch = 'max_epochs' in train_cfg
    end = train_cfg.get('max_epochs') if by_epoch else train_cfg.get('max_iters')
    reached = meta['epoch'] if by_epoch else meta['iter']
    if end is None or reached < end:
        return None
    summary = osp.join(work_dir, 'summary.json')
    try:
        with open(summary) as f:
            done_at = json.load(f).get('iterations')
    except (OSError, ValueError, AttributeError):
        return None
    if done_at != meta['iter']:
        return None
    unit = (f'epoch {meta["epoch"]} (iteration {meta["iter"]})' if by_epoch
            else f'iteration {meta["iter"]}')
    key = 'train_cfg.max_epochs' if by_epoch else 'train_cfg.max_iters'
    return (f'the run in {work_dir} finished at {unit}, its summary.json written: nothing to '
            f'do, no file changed. Raise {key} to train it further, or evaluate it with '
            '--eval-only --resume')


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
    def from_cfg(cls, cfg, evaluating: bool = False) -> 'BiKDRunner':
        """The runner of a config: the suite's keys taken out, the work_dir checked and, for
        training (not ``evaluating``), taken for this run and its start decided (see the
        module's description), the model built (not loaded). A start that fails on the
        user's input or a file says so in one line and leaves the work_dir as it was."""
        setup_engine()
        cfg = copy.deepcopy(cfg)
        options = _Options.take(cfg)
        mode = resume_mode(options.resume)  # an invalid one is refused before anything is made
        if options.overwrite and mode is not None:
            raise UserError('--overwrite starts the run afresh (the run in the work_dir moved '
                            'aside) and --resume continues it: give one of them')
        skips = cfg.pop('skip_bad_samples', None)
        if skips is not None:
            if not isinstance(skips, int) or isinstance(skips, bool) or skips < 0:
                raise UserError(f'skip_bad_samples={skips!r}: give how many unreadable '
                                'training samples the run may skip (an integer, 0 or more)')
            if cfg.get('train_dataloader'):
                cfg.train_dataloader.dataset = dict(type='SkipBadSamples', max_skips=skips,
                                                    dataset=cfg.train_dataloader.dataset)
        seed_training_samples(cfg)
        if not cfg.get('work_dir'):
            cfg.work_dir = default_work_dir(cfg.filename or 'run')
        batch_note = global_batch(cfg, int(os.environ.get('WORLD_SIZE', '1')))
        cfg.launcher = setup_distributed(cfg)
        work_dir = osp.abspath(cfg.work_dir)
        existed = osp.isdir(work_dir)
        decision = _Decision(work_dir, existed)
        if get_rank() == 0:  # the process that writes (the others would race it)
            decision.make(cfg, options, evaluating)
        decision = _agree(decision)
        before = set(decision.before)
        try:
            runner = super().from_cfg(cfg)
        except (UserError, OSError) as e:
            if get_rank() == 0:
                _remove_new_entries(work_dir, existed, before)
                decision.release()
            if isinstance(e, OSError) and not isinstance(e, SaveError) and e.errno and \
                    not e.filename:  # a write of mmengine's (log, config dump) failed
                raise SaveError(work_dir, e) from e
            raise
        except BaseException:
            decision.release()
            raise
        runner.options = options
        runner.owner = decision.owner
        runner.start = decision.start
        runner._start_record = (work_dir, existed, before)
        for note in decision.notes:
            runner.logger.info(note)
        if batch_note:
            runner.logger.info(batch_note)
        return runner

    #: who holds the work_dir for this run (process 0 of a training run; else ``None``)
    owner: Optional[WorkDirOwner] = None
    _config_written = False

    def dump_config(self) -> None:
        """The run's config copy, written once the start is accepted
        (:meth:`write_config_copy`), so that a refused start leaves the one there as it was."""

    def write_config_copy(self) -> None:
        if not self._config_written:
            self._config_written = True
            super().dump_config()

    def build_train_loop(self, loop):
        """mmengine's loop of the config; the epoch-based one is the suite's
        (:class:`~bikd.engine.loops.BiKDEpochBasedTrainLoop`), which continues a stopped
        epoch."""
        if isinstance(loop, dict) and (loop.get('type') == 'EpochBasedTrainLoop' or (
                'type' not in loop and loop.get('by_epoch', True) and 'max_epochs' in loop)):
            loop = dict(loop, type='bikd.BiKDEpochBasedTrainLoop')
            loop.pop('by_epoch', None)
        return super().build_train_loop(loop)

    @staticmethod
    def build_dataloader(dataloader, seed=None, diff_rank_seed=False):
        """mmengine's loader of the config, with a random generator of its own: starting an
        epoch's loader then draws nothing from the training's random stream (torch draws its
        workers' base seed there otherwise), so a resumed run's stream is an uninterrupted
        one's whether or not its workers persist between epochs. Its workers ignore the stop
        signals, which the run acts on (:class:`~bikd.engine.signals.LoaderWorkerInit`)."""
        import torch
        loader = Runner.build_dataloader(dataloader, seed=seed, diff_rank_seed=diff_rank_seed)
        if getattr(loader, 'generator', 0) is None:
            loader.generator = torch.Generator().manual_seed(int(seed or 0))
        if getattr(loader, 'num_workers', 0) and not isinstance(loader.worker_init_fn,
                                                                LoaderWorkerInit):
            loader.worker_init_fn = LoaderWorkerInit(loader.worker_init_fn)
        return loader

    def release_work_dir(self) -> None:
        """Give the work_dir back (the end of the run; also at the process's exit)."""
        if self.owner is not None:
            self.owner.release()

    def build_model(self, model):
        """The model of the config, built through :func:`bikd.build_model` (no weights)."""
        self.run_state = RunState()  # its fingerprint once the members have their weights
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
        """Choose what the run starts from (:func:`choose_start`; a training run's start was
        chosen and checked by :meth:`from_cfg`), check it (a resumed checkpoint's fingerprint
        against the config's, a checkpoint's fit to the model) and have every member take
        its weights: before any loop is built or anything runs. Once per runner;
        :meth:`train` and :meth:`val` call it."""
        if self._start_prepared:
            return self.start
        load_from = self.cfg.get('load_from')
        start = self.start
        if start is None:  # (evaluating, or a runner not made by from_cfg)
            start = choose_start(self.work_dir, self.options.resume, load_from, evaluating)
            if start.kind == 'resume':
                self.run_state.fingerprint = run_fingerprint(self.cfg)
                note = check_same_run(self.run_state.fingerprint, recorded_fingerprint(
                    check_readable(start.checkpoint) or {}), start.checkpoint,
                    self.options.resume_changed)
                if note:
                    start.warnings.append(note)
        model = unwrap(self.model)
        checkpoint = start.checkpoint
        if checkpoint and start.kind == 'load':
            check_readable(checkpoint)
        if start.note:
            self.logger.info(start.note)
        for warning in start.warnings:
            self.logger.warning(warning)
        partial = self.options.load_partial and start.kind == 'load'
        if hasattr(model, 'members'):
            if checkpoint:
                check_checkpoint_fits(model, checkpoint, partial,
                                      'load_from' if checkpoint == load_from else '--resume')
            # build, then load: the members' own weights, unless the checkpoint holds them all
            sources = take_weights(model, checkpoint if checkpoint and not partial else None)
            for name, source in sources.items():
                self.logger.info(f'member {name}: weights from {source}{verification(source)}')
        if not self.run_state.fingerprint:  # (after the members' files were read: a file's
            # digest comes from its one read, or from the digest written beside it)
            self.run_state.fingerprint = run_fingerprint(self.cfg)
        self.start = start
        self._start_prepared = True
        self.write_config_copy()
        return start

    _start_prepared = False

    def load_or_resume(self) -> None:
        """Load or resume what :meth:`prepare_start` chose (mmengine's ``train`` and ``val``
        call this after their ``before_run`` hooks); once per runner."""
        start = self.prepare_start(evaluating=True)
        if self._start_loaded:
            return
        if start.checkpoint:
            self.start_iteration = checkpoint_iteration(start.checkpoint)
        if start.kind == 'resume':
            self.resuming = True  # the run state hook takes the checkpoint's state back
            try:
                self.resume(start.checkpoint)
            finally:
                self.resuming = False
        elif start.kind == 'load':
            self.load_checkpoint(start.checkpoint)
        forget_checkpoints()  # (its contents were kept for the checks and this load)
        self._start_loaded = True

    _start_loaded = False
    #: the iteration the checkpoint started from was saved at (``None``: none, or unknown)
    start_iteration: Optional[int] = None

    # ------------------------------------------------------------------ train, evaluate
    def train(self):
        """mmengine's ``train``. A start that fails on the user's input or a file (before the
        first step) leaves the work_dir as it found it; a file of the data that breaks mid-run
        stops the run with its name and the last checkpoint kept."""
        stop = find_safe_stop_hook(self)
        try:
            self.prepare_start()
            if stop is not None:
                stop.start(self)
            return super().train()
        except RunInterrupted:
            raise
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
        finally:
            if stop is not None:
                stop.finish()
            self.release_work_dir()

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
        iteration = self.start_iteration if checkpoint else None
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
        self.release_work_dir()


def _remove_new_entries(work_dir: str, existed: bool, before: Set[str]) -> None:
    if not existed:
        shutil.rmtree(work_dir, ignore_errors=True)
        return
    for name in set(os.listdir(work_dir)) - before - {OWNER_FILE} if osp.isdir(work_dir) else ():
        path = osp.join(work_dir, name)
        if osp.isdir(path) and not osp.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)


def verification(source: str) -> str:
    """`` (verified)`` or `` (unverified: ...)`` for a local weights file or folder (checked
    when it was read: a mismatch is an error), else ''."""
    if not isinstance(source, str) or not osp.exists(source):
        return ''
    from ..fileio import FOLDER_DIGESTS, digest_path
    has = osp.isfile(osp.join(source, FOLDER_DIGESTS) if osp.isdir(source)
                     else digest_path(source))
    return ' (verified)' if has else ' (unverified: it has no digest beside it)'


def seed_training_samples(cfg) -> None:
    """Every training sample draws its augmentation from its own seed and the sampler can
    start an epoch past the batches already trained (:class:`bikd.data.SeededSamples`,
    :class:`bikd.data.ResumableSampler`), so a run continues mid-epoch exactly."""
    loader = cfg.get('train_dataloader')
    if not loader or not isinstance(loader.get('dataset'), dict):
        return
    if loader.dataset.get('type') not in ('SeededSamples', 'bikd.SeededSamples'):
        loader.dataset = dict(type='bikd.SeededSamples', dataset=loader.dataset)
    sampler = loader.get('sampler')
    if isinstance(sampler, dict) and sampler.get('type') not in ('ResumableSampler',
                                                                 'bikd.ResumableSampler'):
        loader.sampler = dict(type='bikd.ResumableSampler', sampler=sampler)


class _Decision:
    """What process 0 decides for a start, before anything is written (see
    :meth:`BiKDRunner.from_cfg`), agreed on by every process (:func:`_agree`)."""

    def __init__(self, work_dir: str, existed: bool):
        self.work_dir, self.existed = work_dir, existed
        self.start: Optional[Start] = None
        self.notes: List[str] = []
        self.before: List[str] = []
        self.owner: Optional[WorkDirOwner] = None
        self.error: Optional[tuple] = None  # (kind, message) to raise on every process
        self._made = False

    def make(self, cfg, options: _Options, evaluating: bool) -> None:
        work_dir = self.work_dir
        try:
            check_work_dir(work_dir)
            if evaluating:
                self.before = sorted(os.listdir(work_dir)) if self.existed else []
                return
            if not osp.isdir(work_dir):
                os.makedirs(work_dir)
                self._made = True
            self.owner = WorkDirOwner(work_dir).acquire()
            if self.owner.took_over:
                self.notes.append(f'work_dir {work_dir} taken over from {self.owner.took_over}')
            removed = remove_stale_temporaries(work_dir)
            if removed:
                print(f'removed {len(removed)} temporary file(s) that an interrupted save left '
                      f'in {work_dir}', flush=True)
            self.start = self._choose(cfg, options)
            self.before = sorted(os.listdir(work_dir))
        except RunFinished as e:
            self.error = ('finished', str(e))
        except (UserError, OSError) as e:
            self.error = ('user', error_message(e), e)
        except BaseException:
            self.release()
            raise
        if self.error:
            self.release()

    def _choose(self, cfg, options: _Options) -> Start:
        work_dir = self.work_dir
        start = choose_start(work_dir, options.resume, cfg.get('load_from'))
        if start.kind == 'resume':
            contents = check_readable(start.checkpoint, '--resume') or {}
            note = check_same_run(run_fingerprint(cfg), recorded_fingerprint(contents),
                                  start.checkpoint, options.resume_changed)
            if note:
                start.warnings.append(note)
            finished = run_is_finished(cfg, work_dir, contents)
            if finished:
                raise RunFinished(finished)
            return start
        results = run_results(work_dir)
        if results and not options.overwrite:
            shown = ', '.join(results[:6]) + (', ...' if len(results) > 6 else '')
            raise UserError(f'work_dir {work_dir} holds a run ({shown}); a fresh start would '
                            'replace it. Continue it with --resume auto, choose another '
                            'work_dir=..., or pass --overwrite to start afresh (the run there '
                            f'is moved to {work_dir}.replaced-<time>, not deleted)')
        if results:
            load_from = cfg.get('load_from')
            if load_from and osp.abspath(load_from).startswith(work_dir + os.sep):
                raise UserError(f'load_from={load_from} is inside the run that --overwrite '
                                f'would move aside; copy it out of {work_dir} first')
            target = move_run_aside(work_dir)
            start.warnings.append(f'--overwrite: the run that was in {work_dir} was moved to '
                                  f'{target}')
        return start

    def release(self) -> None:
        """Give the work_dir back and remove what this start made, after a refused start."""
        if self.owner is not None:
            self.owner.release()
        if self._made and osp.isdir(self.work_dir) and not os.listdir(self.work_dir):
            os.rmdir(self.work_dir)
            self._made = False


def _agree(decision: _Decision) -> _Decision:
    """Process 0's decision on every process (its error raised on each)."""
    if get_world_size() > 1:
        shared = [None if get_rank() else (decision.start, decision.notes, decision.before,
                                           decision.error and decision.error[:2])]
        broadcast_object_list(shared, src=0)
        if get_rank():
            decision.start, decision.notes, decision.before, decision.error = shared[0]
    if decision.error:
        kind, message = decision.error[:2]
        if kind == 'finished':
            raise RunFinished(message)
        original = decision.error[2] if len(decision.error) > 2 else None
        if original is not None:
            raise original
        raise UserError(message)
    return decision


__all__ = ['BiKDRunner', 'GUARD_HOOKS', 'RESUME_MODES', 'RunFinished', 'Start',
           'check_work_dir', 'choose_start', 'default_work_dir', 'move_run_aside',
           'run_is_finished', 'run_results']
