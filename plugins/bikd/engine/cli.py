"""The command lines of the suite's tools, and ``train_net``: detectron2's command line on
mmengine's Runner.

``python tools/train_net.py --config-file FILE [--num-gpus N] [--num-machines M
--machine-rank R --dist-url tcp://HOST:PORT] [--eval-only] [--resume [auto]] [--overwrite]
[key=value ...]``. Multi-process runs also come from ``torchrun`` (its environment is
detected; see the README's cluster recipe). Every tool that reads a config takes it the same
way (:func:`config_parser`): ``--config-file`` and ``key=value`` overrides, flags and
overrides in any order. An error in the user's input (config, data, checkpoint, flag:
:class:`~bikd.errors.UserError`) or in the run's surroundings (a file that cannot be read or
written) is one line and exit status 2 (:func:`run_tool`), and a run that could not start
leaves nothing in its work_dir; any other error is a bug and shows its traceback. A run
stopped by a signal ends with one line and status 128 + the signal's number; ``--resume``
of a finished run says so and exits 0. This module decides nothing about a run: what it
starts from, resumes or loads is the runner's (:class:`~bikd.engine.runner.BiKDRunner`).
"""
import argparse
import os
import os.path as osp
import sys
from typing import Callable, Dict, List, Optional

from ..errors import ToolExit, UserError, error_message
from .config import load_config
from .keys import FLAG_KEYS
from .launch import launch, rendezvous
from .optim import AMP_DTYPES
from .runner import RESUME_MODES, BiKDRunner, RunFinished
from .signals import RunInterrupted

#: what a tool reports in one line (exit status 2): errors in the user's input, and files that
#: cannot be read or written (named in the message); anything else is a bug (a traceback)
USER_ERRORS = (UserError, OSError)
OVERRIDES_EPILOG = ('key=value pairs override the config, before or after the flags, e.g. '
                    'train_cfg.max_epochs=2 model.members.0.pretrained=false work_dir=out/run1')
#: ``--resume`` (strict: a checkpoint must be there) and ``--resume auto`` (resume when one is)


class ConfigArgumentParser(argparse.ArgumentParser):
    """argparse's parser that takes flags and ``key=value`` overrides in any order (``train_net
    --config-file F work_dir=W --resume auto`` as well as ``--resume auto work_dir=W``):
    options that take an optional value (``--resume [auto]``) are joined with it first, so an
    override after them is never taken for their value."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: option string -> its action, for the options with an optional value and choices
        self.optional_value_options: Dict[str, argparse.Action] = {}

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        if action.nargs == '?' and action.choices and action.option_strings:
            self.optional_value_options.update({s: action for s in action.option_strings})
        return action

    def parse_args(self, args=None, namespace=None):
        argv = list(sys.argv[1:] if args is None else args)
        return self.parse_intermixed_args(optional_values(self, argv), namespace)


def optional_values(parser: ConfigArgumentParser, argv: List[str]) -> List[str]:
    """``--flag value`` as ``--flag=value`` (and ``--flag`` alone as its ``const``) for the
    parser's options with an optional value (``nargs='?'``) and a list of choices."""
    optional = parser.optional_value_options
    out, i = [], 0
    while i < len(argv):
        action = optional.get(argv[i])
        if action is not None:
            given = i + 1 < len(argv) and action.choices and argv[i + 1] in action.choices
            out.append(f'{argv[i]}={argv[i + 1] if given else action.const}')
            i += 2 if given else 1
            continue
        out.append(argv[i])
        i += 1
    return out


def config_parser(description: str, many: bool = False,
                  required: bool = True) -> argparse.ArgumentParser:
    """The parser every config-reading tool starts from: ``--config-file FILE`` (repeatable
    with ``many``; optional where the tool has another way to name its configs) and
    ``key=value`` overrides (``args.opts``), before or after the flags. A tool adds its own
    flags."""
    parser = ConfigArgumentParser(description=description, epilog=OVERRIDES_EPILOG,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config-file', required=required, metavar='FILE',
                        action='append' if many else 'store',
                        help='YAML config' + (' (repeatable)' if many else ''))
    parser.add_argument('opts', nargs='*', metavar='key=value', help='config overrides')
    return parser


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug``: the traceback of an input error instead of its one line
    (:func:`run_tool`), for a tool that reports its errors through it."""
    parser.add_argument('--debug', action='store_true',
                        help='show the traceback of an error in the input (config, data, '
                             'checkpoint), not only its message')


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
    modes = sorted({m for m in RESUME_MODES.values() if m}, reverse=True)  # strict, auto
    parser.add_argument('--resume', nargs='?', const='strict', choices=modes, metavar='auto',
                        help='continue from the last complete checkpoint in the work_dir (an '
                             'error if there is none); --resume auto: continue if there is '
                             'one, else start afresh (what a job script or torchrun '
                             '--max-restarts passes on every start)')
    parser.add_argument('--overwrite', action='store_true',
                        help='start afresh in a work_dir that holds a run: that run is moved to '
                             '<work_dir>.replaced-<time> (nothing is deleted)')
    parser.add_argument('--amp', choices=['bf16', 'fp16'],
                        help='mixed precision: the same as optim_wrapper.type=BiKDAmpOptimWrapper '
                             'optim_wrapper.dtype=... (bf16 also on CPU)')
    parser.add_argument('--channels-last', action='store_true',
                        help='channels-last memory format: the same as model.channels_last=true')
    parser.add_argument('--lean', action='store_true',
                        help='train member by member, for members that do not fit on the device '
                             'together (one more forward per member; the same weights): the '
                             'same as model.lean=true')
    add_debug_flag(parser)
    return parser


def setup(args):
    """The config of a command line: the file, its overrides and the flags that are config
    keys (``--resume``, ``--amp``, ``--channels-last``, ``--lean``)."""
    cfg = load_config(args.config_file, args.opts)
    for key in FLAG_KEYS:  # --resume [auto], --overwrite
        if getattr(args, key, None):
            cfg[key] = getattr(args, key)
    if getattr(args, 'amp', None):
        cfg.optim_wrapper.update(type='BiKDAmpOptimWrapper', dtype=AMP_DTYPES[args.amp])
    if getattr(args, 'channels_last', False):
        cfg.model.channels_last = True
    if getattr(args, 'lean', False):
        cfg.model.lean = True
    return cfg


def main(args) -> Optional[dict]:
    """Train, or with ``--eval-only`` evaluate every member and the ensemble: the config, the
    runner (which chooses what to start from, checks and loads it:
    :class:`~bikd.engine.runner.BiKDRunner`), then train or evaluate."""
    runner = BiKDRunner.from_cfg(setup(args), evaluating=args.eval_only)
    try:
        if args.eval_only:
            return runner.evaluate()
        runner.train()
    finally:
        runner.release_work_dir()
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
    """Run a tool's body. An error in the user's input (:class:`~bikd.errors.UserError`) or a
    file it cannot read or write (``OSError``) ends it with one line on stderr and exit status
    2 (``debug``: the traceback instead); anything else is a bug and shows its traceback (exit
    status 1). A run stopped by a signal ends with its line and status 128 + the signal's
    number (printed by process 0 of a run), Ctrl-C outside a run's training with one line and
    status 130; a finished run's line ends it with status 0."""
    first = int(os.environ.get('RANK', '0')) == 0
    try:
        run()
    except RunFinished as e:
        if first:
            print(str(e), flush=True)
        sys.exit(0)
    except (RunInterrupted, ToolExit) as e:
        if first:
            print(str(e), file=sys.stderr, flush=True)
        sys.exit(e.exit_status)
    except KeyboardInterrupt:
        if debug:
            raise
        if first:
            print('interrupted (Ctrl-C); every file written is complete (saves are atomic); '
                  'continue a training run with --resume auto', file=sys.stderr, flush=True)
        sys.exit(130)
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


def run_cli(argv: Optional[List[str]] = None) -> None:
    """``tools/train_net.py``."""
    parser = default_argument_parser()
    args = parser.parse_args(argv)
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


if __name__ == '__main__':  # python -m bikd.engine.cli: train_net, from wherever bikd is installed
    run_cli()
