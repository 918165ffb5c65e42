"""The command lines of the suite's tools, and ``train_net``: detectron2's command line on
mmengine's Runner.

``python tools/train_net.py --config-file FILE [--num-gpus N] [--num-machines M
--machine-rank R --dist-url tcp://HOST:PORT] [--eval-only] [--resume [auto]] [key=value ...]``.
Multi-process runs also come from ``torchrun`` (its environment is detected; see the README's
cluster recipe). Every tool that reads a config takes it the same way (:func:`config_parser`):
``--config-file`` and trailing ``key=value`` overrides. An error in the user's input (config,
data, checkpoint, flag) or in the run's surroundings (a disk that cannot be written) is one
line and exit status 2 (:func:`run_tool`), and a run that could not start leaves nothing in
its work_dir.
"""
import argparse
import logging
import os
import os.path as osp
import shutil
import sys
from typing import Callable, List, Optional

from ..checkpoint import (check_checkpoint_fits, check_readable, checkpoint_iteration,
                          find_last_checkpoint, remove_stale_temporary_files)
from ..fileio import SaveError, save_json
from ..metrics import memberwise_metric
from ..summary import build_evaluation, format_evaluation
from .config import load_config
from .fingerprint import check_same_run
from .launch import launch, rendezvous, setup_distributed
from .optim import AMP_DTYPES
from .patches import setup_engine
from .runner import RunStopped, build_runner, default_work_dir, unwrap

#: errors of the user's input (config, data, checkpoints, flags) or of the run's surroundings
#: (files that cannot be read or written): one message, exit status 2
USER_ERRORS = (OSError, KeyError, ValueError, RunStopped)
OVERRIDES_EPILOG = ('Trailing key=value pairs override the config, e.g. '
                    'train_cfg.max_epochs=2 model.members.0.pretrained=false work_dir=out/run1')
#: ``--resume`` (strict: a checkpoint must be there) and ``--resume auto`` (resume when one is)
RESUME_MODES = ('strict', 'auto')


def config_parser(description: str, many: bool = False) -> argparse.ArgumentParser:
    """The parser every config-reading tool starts from: ``--config-file FILE`` (repeatable
    with ``many``) and, last on the line, ``key=value`` overrides (``args.opts``). A tool adds
    its own flags."""
    parser = argparse.ArgumentParser(description=description, epilog=OVERRIDES_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config-file', required=True, metavar='FILE',
                        action='append' if many else 'store',
                        help='YAML config' + (' (repeatable)' if many else ''))
    parser.add_argument('opts', nargs=argparse.REMAINDER, metavar='key=value',
                        help='config overrides')
    return parser


def default_argument_parser(description: str = 'Bi-KD training and evaluation'):
    """``train_net``'s flags (detectron2's, plus the suite's switches)."""
    parser = config_parser(description)
    parser.add_argument('--num-gpus', type=int, default=1,
                        help='processes to start on this machine (one per GPU; on a CPU-only '
                             'machine, gloo processes)')
    parser.add_argument('--num-machines', type=int, default=1,
                        help='machines of the run (detectron2\'s flag): start train_net on each '
                             'with its --machine-rank and the same --dist-url (or use torchrun)')
    parser.add_argument('--machine-rank', type=int, default=0,
                        help='this machine\'s rank, 0 .. --num-machines - 1')
    parser.add_argument('--dist-url', default='auto',
                        help='tcp://HOST:PORT of machine 0, where the processes meet (auto: a '
                             'free port on this machine, for one machine)')
    parser.add_argument('--eval-only', action='store_true',
                        help='evaluate every member and the ensemble, no training')
    parser.add_argument('--resume', nargs='?', const='strict', choices=RESUME_MODES,
                        metavar='auto',
                        help='continue from the last complete checkpoint in the work_dir (an '
                             'error if there is none); --resume auto: continue if there is '
                             'one, else start afresh (what a job script or torchrun '
                             '--max-restarts passes on every start)')
    parser.add_argument('--amp', choices=['bf16', 'fp16'],
                        help='mixed precision: the same as optim_wrapper.type=BiKDAmpOptimWrapper '
                             'optim_wrapper.dtype=... (bf16 also on CPU)')
    parser.add_argument('--channels-last', action='store_true',
                        help='channels-last memory format: the same as model.channels_last=true')
    parser.add_argument('--lean', action='store_true',
                        help='train member by member, for members that do not fit on the device '
                             'together (one more forward per member; the same weights): the '
                             'same as model.lean=true')
    parser.add_argument('--debug', action='store_true',
                        help='show the traceback of an error in the input (config, data, '
                             'checkpoint), not only its message')
    return parser


def setup(args):
    """Config from the command line: overrides, work_dir, launcher, what to resume (and that
    it is the same run). Returns the config and notes for the run's log."""
    cfg = load_config(args.config_file, args.opts)
    if getattr(args, 'amp', None):
        cfg.optim_wrapper.update(type='BiKDAmpOptimWrapper', dtype=AMP_DTYPES[args.amp])
    if getattr(args, 'channels_last', False):
        cfg.model.channels_last = True
    if getattr(args, 'lean', False):
        cfg.model.lean = True
    if not cfg.get('work_dir'):
        cfg.work_dir = default_work_dir(args.config_file)
    check_work_dir(cfg.work_dir)
    cfg.launcher = setup_distributed(cfg)
    main_process = int(os.environ.get('RANK', '0')) == 0
    if main_process and osp.isdir(cfg.work_dir):
        removed = remove_stale_temporary_files(cfg.work_dir)
        if removed:
            print(f'removed {len(removed)} temporary file(s) that an interrupted save left in '
                  f'{cfg.work_dir}', flush=True)
    notes = []
    mode = getattr(args, 'resume', None)  # with --eval-only: evaluate the last checkpoint
    resume = bool(mode) and not args.eval_only
    if mode and not cfg.get('load_from'):
        last, note = find_last_checkpoint(cfg.work_dir)
        if last is None and mode == 'auto':
            notes.append(f'--resume auto: nothing to resume in {osp.abspath(cfg.work_dir)} '
                         f'({note}): starting afresh' if resume else
                         f'--resume auto: no checkpoint in {osp.abspath(cfg.work_dir)}: '
                         'evaluating the members as configured')
            resume = False
        elif last is None:
            raise FileNotFoundError(f'--resume: nothing to resume in {osp.abspath(cfg.work_dir)} '
                                    f'({note}). Is the work_dir right (work_dir=... or the '
                                    'config\'s name)? Without --resume the run starts afresh; '
                                    '--resume auto resumes only where there is something to.')
        else:
            notes.append(f'--resume{" auto" if mode == "auto" else ""}: '
                         f'{note or "continuing from " + last}')
            cfg.load_from = last
    contents = check_readable(cfg.load_from) if cfg.get('load_from') else None
    allow_changed = bool(cfg.pop('resume_changed', False))
    if resume:
        meta = (contents or {}).get('meta')
        note = check_same_run(cfg, meta if isinstance(meta, dict) else None, cfg.load_from,
                              allow_changed)
        if note:
            notes.append(note)
    cfg.resume = resume
    skips = cfg.pop('skip_bad_samples', None)
    if skips is not None and not args.eval_only:
        if not isinstance(skips, int) or isinstance(skips, bool) or skips < 0:
            raise ValueError(f'skip_bad_samples={skips!r}: give how many unreadable training '
                             'samples the run may skip (an integer, 0 or more)')
        cfg.train_dataloader.dataset = dict(type='SkipBadSamples', max_skips=skips,
                                            dataset=cfg.train_dataloader.dataset)
    return cfg, notes


def check_work_dir(work_dir: str) -> None:
    """The work_dir is a writable folder or can be made one, else an error that says why,
    before anything is built or written (a folder made to find out is removed again)."""
    path = osp.abspath(work_dir)
    if osp.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f'work_dir {path} is not writable; choose another with '
                                  'work_dir=...')
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
        raise PermissionError(f'work_dir {path} cannot be made in {parent}: '
                              f'{e.strerror or e}; choose another with work_dir=...') from e
    for folder in missing:  # deepest first: made only to find out
        os.rmdir(folder)


def main(args) -> Optional[dict]:
    """Train, or with ``--eval-only`` evaluate every member and the ensemble. An error before
    training starts removes what this start wrote in the work_dir (its log folder; the
    work_dir itself when this start made it)."""
    setup_engine()
    cfg, notes = setup(args)
    allow_partial = bool(cfg.pop('load_partial', False))
    existed = osp.isdir(cfg.work_dir)
    runner = build_runner(cfg)
    try:
        for note in notes:  # what --resume did, in the terminal and the log file
            if 'resume_changed' in note:
                runner.logger.warning(note)
            else:
                runner.logger.info(note)
        model = unwrap(runner.model)
        checkpoint = cfg.get('load_from')
        if checkpoint and not cfg.get('resume'):
            check_checkpoint_fits(model, checkpoint, allow_partial)
        # build, then load: the members' own weights, unless the checkpoint holds them all
        sources = model.take_weights(checkpoint if checkpoint and not allow_partial else None)
    except USER_ERRORS:
        _remove_what_this_start_wrote(runner, existed)
        raise
    for name, source in sources.items():
        runner.logger.info(f'member {name}: weights from {source}')
    if args.eval_only:
        metrics = runner.val()
        iteration = checkpoint_iteration(checkpoint) if checkpoint else None
        evaluated = (f'the checkpoint {checkpoint}' + (
            f' (iteration {iteration})' if iteration is not None else '')
            if checkpoint else 'the initial members (their configured weights)')
        summary = build_evaluation(metrics, model.member_names,
                                   memberwise_metric(runner.val_evaluator).primary_metric,
                                   evaluated, type(model).__name__, checkpoint, iteration)
        if runner.rank == 0:
            save_json(summary, osp.join(runner.work_dir, 'eval.json'))
            print(format_evaluation(summary))
        return summary
    try:
        runner.train()
    except USER_ERRORS as e:
        # (not runner.iter: that builds the train loop again when building it failed)
        iteration = runner.message_hub.get_info('iter', 0)
        if iteration == 0:  # nothing trained: the start failed (data, evaluator, ...)
            _remove_what_this_start_wrote(runner, existed)
        if iteration == 0 or isinstance(e, (RunStopped, SaveError)) or \
                not isinstance(e, OSError):
            raise
        # a file of the data that cannot be read (named in the message), found mid-run
        last, _ = find_last_checkpoint(cfg.work_dir)
        kept = f'its last complete checkpoint {last} is intact' if last else \
            'no checkpoint was saved before'
        raise RunStopped(f'{error_message(e)}; the run stopped at iteration {iteration} and '
                         f'{kept}. Fix or remove the file and continue with --resume auto, or '
                         'let the run skip such training samples with skip_bad_samples=N') from e
    return None


def _remove_what_this_start_wrote(runner, work_dir_existed: bool) -> None:
    """A start that failed before training leaves the work_dir as it found it."""
    for handler in list(runner.logger.handlers):  # the log file is in the folder removed
        if isinstance(handler, logging.FileHandler):
            handler.close()
            runner.logger.removeHandler(handler)
    if runner.rank != 0:
        return
    if not work_dir_existed:
        shutil.rmtree(runner.work_dir, ignore_errors=True)
    elif osp.isdir(runner.log_dir) and osp.dirname(osp.abspath(runner.log_dir)) == \
            osp.abspath(runner.work_dir):
        shutil.rmtree(runner.log_dir, ignore_errors=True)


def _where_relative_paths_go(config_file: str) -> str:
    """A note for a missing file when the command runs outside the config's repository:
    relative paths in configs (data, checkpoints) are read from the current directory."""
    folder = osp.dirname(osp.abspath(config_file))
    while folder != osp.dirname(folder) and osp.basename(folder) != 'configs':
        folder = osp.dirname(folder)
    root = osp.dirname(folder) if osp.basename(folder) == 'configs' else None
    if root is None or osp.abspath(os.getcwd()) == root:
        return ''
    return (f'\n(relative paths in a config are read from the current directory, {os.getcwd()}; '
            f'the config belongs to {root}: run from there or give absolute paths)')


def error_message(error: BaseException) -> str:
    """The message of an error for its one line: a ``KeyError``'s without quotes, and of an
    error that a data loader worker raised, the original error's last line (not the worker's
    traceback)."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    if 'Original Traceback' in message:  # re-raised by torch's DataLoader from a worker
        last = [line for line in message.strip().splitlines() if line.strip()][-1]
        message = last.split(': ', 1)[1] if ': ' in last else last
    return message


def run_tool(run: Callable[[], object], config_file: str = '', debug: bool = False) -> None:
    """Run a tool's body; an error of the user's input or of the run's surroundings ends it
    with one line on stderr and exit status 2 (``debug``: the traceback instead)."""
    try:
        run()
    except USER_ERRORS as e:
        if debug:
            raise
        message = error_message(e)
        if isinstance(e, FileNotFoundError) and config_file:
            message += _where_relative_paths_go(config_file)
        print(f'error: {message}\n(--debug shows where it was raised)', file=sys.stderr)
        sys.exit(2)


def guarded_main(args) -> None:
    """:func:`main` with its errors reported as :func:`run_tool` reports them (in every
    process of a run)."""
    config = args.config_file[0] if isinstance(args.config_file, list) else args.config_file
    run_tool(lambda: main(args), config, args.debug)


def resume_flags(argv: List[str]) -> List[str]:
    """``--resume`` with or without its mode, as one token (``--resume=strict``,
    ``--resume=auto``), so that the overrides after it are not taken for its value."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == '--resume':
            given = i + 1 < len(argv) and argv[i + 1] in RESUME_MODES
            out.append(f'--resume={argv[i + 1] if given else "strict"}')
            i += 2 if given else 1
            continue
        out.append(argv[i])
        i += 1
    return out


def run_cli(argv: Optional[List[str]] = None) -> None:
    """``tools/train_net.py``."""
    parser = default_argument_parser()
    args = parser.parse_args(resume_flags(list(argv if argv is not None else sys.argv[1:])))
    if args.num_gpus < 1:
        parser.error(f'--num-gpus must be at least 1, got {args.num_gpus}')
    if args.num_machines < 1 or not 0 <= args.machine_rank < args.num_machines:
        parser.error(f'--machine-rank must be in 0 .. {args.num_machines - 1} for '
                     f'--num-machines {args.num_machines}, got {args.machine_rank}')
    if args.dist_url != 'auto':
        try:
            rendezvous(args.dist_url)
        except ValueError as e:
            parser.error(str(e))
    if args.num_machines > 1 and args.dist_url == 'auto':
        parser.error('--num-machines > 1 needs --dist-url tcp://HOST:PORT of machine 0 (the '
                     'same on every machine)')
    launch(guarded_main, args.num_gpus, args, num_machines=args.num_machines,
           machine_rank=args.machine_rank, dist_url=args.dist_url)
