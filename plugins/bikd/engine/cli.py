"""The command lines of the suite's tools, and ``train_net``: detectron2's command line on
mmengine's Runner.

``python tools/train_net.py --config-file FILE [--num-gpus N] [--eval-only] [--resume]
[key=value ...]``. Multi-process runs also come from ``torchrun`` (its environment is detected).
Every tool that reads a config takes it the same way (:func:`config_parser`): ``--config-file``
and trailing ``key=value`` overrides. An error in the user's input (config, data, checkpoint,
flag) is one line and exit status 2 (:func:`run_tool`).
"""
import argparse
import os
import os.path as osp
import sys
from typing import Callable, List, Optional

from ..checkpoint import (check_checkpoint_fits, checkpoint_iteration, find_last_checkpoint,
                          remove_stale_temporary_files)
from ..fileio import save_json
from ..metrics import memberwise_metric
from ..summary import build_evaluation, format_evaluation
from .config import load_config
from .launch import launch, setup_distributed
from .optim import AMP_DTYPES
from .patches import setup_engine
from .runner import build_runner, default_work_dir, unwrap

#: errors of the user's input (config, data, checkpoints, flags): one message, exit status 2
USER_ERRORS = (FileNotFoundError, KeyError, ValueError, PermissionError, IsADirectoryError)
OVERRIDES_EPILOG = ('Trailing key=value pairs override the config, e.g. '
                    'train_cfg.max_epochs=2 model.members.0.pretrained=false work_dir=out/run1')


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
    parser.add_argument('--eval-only', action='store_true',
                        help='evaluate every member and the ensemble, no training')
    parser.add_argument('--resume', action='store_true',
                        help='continue from the last checkpoint in the work_dir')
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
    """Config from the command line: overrides, work_dir, launcher, what to resume."""
    cfg = load_config(args.config_file, args.opts)
    if getattr(args, 'amp', None):
        cfg.optim_wrapper.update(type='BiKDAmpOptimWrapper', dtype=AMP_DTYPES[args.amp])
    if getattr(args, 'channels_last', False):
        cfg.model.channels_last = True
    if getattr(args, 'lean', False):
        cfg.model.lean = True
    if not cfg.get('work_dir'):
        cfg.work_dir = default_work_dir(args.config_file)
    cfg.launcher = setup_distributed(cfg)
    if int(os.environ.get('RANK', '0')) == 0 and osp.isdir(cfg.work_dir):
        removed = remove_stale_temporary_files(cfg.work_dir)
        if removed:
            print(f'removed {len(removed)} temporary file(s) that an interrupted save left in '
                  f'{cfg.work_dir}', flush=True)
    cfg.resume = bool(args.resume) and not args.eval_only
    if args.resume and not cfg.get('load_from'):
        last, note = find_last_checkpoint(cfg.work_dir)
        if last is None:
            raise FileNotFoundError(f'--resume: nothing to resume in {osp.abspath(cfg.work_dir)} '
                                    f'({note}). Is the work_dir right (work_dir=... or the '
                                    'config\'s name)? Without --resume the run starts afresh.')
        if note:
            print(f'--resume: {note}', flush=True)
        cfg.load_from = last
    return cfg


def main(args) -> Optional[dict]:
    """Train, or with ``--eval-only`` evaluate every member and the ensemble."""
    setup_engine()
    cfg = setup(args)
    allow_partial = bool(cfg.pop('load_partial', False))
    runner = build_runner(cfg)
    model = unwrap(runner.model)
    checkpoint = cfg.get('load_from')
    if checkpoint and not cfg.get('resume'):
        check_checkpoint_fits(model, checkpoint, allow_partial)
    # build, then load: the members' own weights, unless the checkpoint holds them all
    sources = model.take_weights(checkpoint if checkpoint and not allow_partial else None)
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
    runner.train()
    return None


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


def run_tool(run: Callable[[], object], config_file: str = '', debug: bool = False) -> None:
    """Run a tool's body; an error of the user's input ends it with one line on stderr and
    exit status 2 (``debug``: the traceback instead)."""
    try:
        run()
    except USER_ERRORS as e:
        if debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if isinstance(e, FileNotFoundError) and config_file:
            message += _where_relative_paths_go(config_file)
        print(f'error: {message}\n(--debug shows where it was raised)', file=sys.stderr)
        sys.exit(2)


def run_cli(argv: Optional[List[str]] = None) -> None:
    """``tools/train_net.py``."""
    parser = default_argument_parser()
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    if args.num_gpus < 1:
        parser.error(f'--num-gpus must be at least 1, got {args.num_gpus}')
    run_tool(lambda: launch(main, args.num_gpus, args), args.config_file, args.debug)
