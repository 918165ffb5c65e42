"""``train_net``: detectron2's command line on mmengine's Runner.

``python tools/train_net.py --config-file FILE [--num-gpus N] [--eval-only] [--resume]
[key=value ...]``. Multi-process runs also come from ``torchrun`` (its environment is detected).
"""
import argparse
import glob
import logging
import os
import os.path as osp
import shutil
import socket
import sys
import zipfile
from typing import Callable, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..fileio import save_json
from ..summary import build_evaluation, format_evaluation
from .config import load_config
from .optim import AMP_DTYPES
from .patches import setup_engine


def default_argument_parser(description: str = 'Bi-KD training and evaluation'):
    parser = argparse.ArgumentParser(
        description=description,
        epilog='Trailing key=value pairs override the config, e.g. '
               'train_cfg.max_epochs=2 model.members.0.pretrained=false work_dir=out/run1')
    parser.add_argument('--config-file', required=True, metavar='FILE', help='YAML config')
    parser.add_argument('--num-gpus', type=int, default=1,
                        help='processes to start on this machine (one per GPU; on a CPU-only '
                             'machine, gloo processes)')
    parser.add_argument('--eval-only', action='store_true',
                        help='evaluate every member and the ensemble, no training')
    parser.add_argument('--resume', action='store_true',
                        help='continue from the last checkpoint in the work_dir')
    parser.add_argument('--amp', choices=['bf16', 'fp16'],
                        help='mixed precision: the same as optim_wrapper.type=AmpOptimWrapper '
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
    parser.add_argument('opts', nargs=argparse.REMAINDER, metavar='key=value',
                        help='config overrides')
    return parser


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(local_rank: int, main_func: Callable, world_size: int, port: int, args) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank),
                      WORLD_SIZE=str(world_size), MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    main_func(args)


def launch(main_func: Callable, num_gpus: int, args) -> None:
    """Run ``main_func(args)`` in ``num_gpus`` processes (or in this one when 1 or when
    already started by torchrun)."""
    if num_gpus > 1 and 'WORLD_SIZE' not in os.environ:
        mp.start_processes(_worker, nprocs=num_gpus, start_method='spawn',
                           args=(main_func, num_gpus, _free_port(), args))
    else:
        main_func(args)


def _setup_distributed(cfg) -> str:
    """The launcher for mmengine and its DDP wrapper; on machines without CUDA, start gloo
    here (mmengine's initialisation assumes a GPU per process)."""
    if int(os.environ.get('WORLD_SIZE', '1')) <= 1:
        return 'none'
    cuda = torch.cuda.is_available()
    env = dict(cfg.get('env_cfg') or {})
    env['dist_cfg'] = dict(env.get('dist_cfg') or {}, backend='nccl' if cuda else 'gloo')
    cfg.env_cfg = env
    # the lean step reduces each member's gradients itself (bikd.engine.lean_ddp)
    lean = bool(cfg.model.get('lean', False))
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='LeanDistributedDataParallel' if lean else 'MMDistributedDataParallel',
        broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    if not cuda:
        if not dist.is_initialized():
            dist.init_process_group('gloo')
        # mmengine passes the local rank as a CUDA device id; CPU modules take none.
        wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    return 'pytorch'


def checkpoint_is_complete(path: str) -> bool:
    """Whether a checkpoint file is whole: torch's zip format ends with its directory, which a
    write cut short lacks (checked without reading the tensors)."""
    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def find_last_checkpoint(work_dir: str) -> Tuple[Optional[str], str]:
    """The checkpoint ``--resume`` continues from, and a note when it is not the one the
    ``last_checkpoint`` marker names (empty, missing or truncated: the newest complete
    checkpoint of the folder instead). ``(None, why)`` when there is none."""
    marker = osp.join(work_dir, 'last_checkpoint')
    named = ''
    if osp.isfile(marker):
        with open(marker) as f:
            named = f.read().strip()
        if named and checkpoint_is_complete(named):
            return named, ''
    found = sorted((p for p in glob.glob(osp.join(work_dir, '*.pth'))
                    if checkpoint_is_complete(p)), key=osp.getmtime, reverse=True)
    if not osp.isfile(marker):
        problem = f'no last_checkpoint marker in {work_dir}'
    elif not named:
        problem = f'the last_checkpoint marker in {work_dir} is empty'
    elif not osp.isfile(named):
        problem = f'the last_checkpoint marker names {named}, which does not exist'
    else:
        problem = f'the last checkpoint {named} is incomplete (a write cut short)'
    if not found:
        return None, problem
    return found[0], f'{problem}; resuming from the newest complete checkpoint {found[0]}'


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def remove_stale_temporary_files(work_dir: str) -> List[str]:
    """Remove the temporary files of atomic writes (``.<name>.<pid>.<id>.tmp``, see
    :func:`bikd.fileio.atomic_path`) that a killed process left in ``work_dir``."""
    removed = []
    for path in glob.glob(osp.join(work_dir, '.*.tmp')):
        parts = osp.basename(path).rsplit('.', 3)
        if len(parts) != 4 or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid != os.getpid() and _process_exists(pid):
            continue  # its writer is still running
        os.remove(path)
        removed.append(path)
    # the scratch folders of AtomicCheckpointHook's marker (bikd.engine.hooks)
    for path in glob.glob(osp.join(work_dir, '.marker.*')):
        if osp.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def setup(args):
    """Config from the command line: overrides, work_dir, launcher."""
    cfg = load_config(args.config_file, args.opts)
    if getattr(args, 'amp', None):
        cfg.optim_wrapper.update(type='AmpOptimWrapper', dtype=AMP_DTYPES[args.amp])
    if getattr(args, 'channels_last', False):
        cfg.model.channels_last = True
    if getattr(args, 'lean', False):
        cfg.model.lean = True
    if not cfg.get('work_dir'):
        cfg.work_dir = osp.join('work_dirs', osp.splitext(osp.basename(args.config_file))[0])
    cfg.launcher = _setup_distributed(cfg)
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


def _peek_checkpoint(path: str) -> Optional[dict]:
    """A checkpoint's contents, memory-mapped (tensors are not read until used); ``None`` for
    a file that is not a loadable checkpoint (mmengine's loader reports it itself)."""
    try:
        data = torch.load(path, map_location='cpu', mmap=True, weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file: nothing to tell from it here
        return None
    return data if isinstance(data, dict) else None


def checkpoint_iteration(path: str) -> Optional[int]:
    """The training iteration an mmengine checkpoint was saved at (``meta.iter``), if any."""
    meta = (_peek_checkpoint(path) or {}).get('meta', {})
    return int(meta['iter']) if isinstance(meta, dict) and 'iter' in meta else None


def check_checkpoint_fits(model, path: str, allow_partial: bool = False) -> None:
    """``load_from`` must hold every weight of the model and no other (a 2-member run's
    checkpoint in a 3-member config would leave a member with random weights): else a
    ``ValueError`` listing the members and keys at fault, unless ``allow_partial``."""
    if allow_partial:
        return
    state = _peek_checkpoint(path)
    state = state.get('state_dict', state) if state is not None else None
    if not isinstance(state, dict):
        return
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f'{k} {tuple(state[k].shape)} vs {tuple(v.shape)}' for k, v in own.items()
              if k in state and hasattr(state[k], 'shape') and tuple(state[k].shape) !=
              tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return
    names = list(getattr(model, 'member_names', []))

    def by_member(keys):
        out = {}
        for k in keys:
            parts = k.split('.')
            who = names[int(parts[1])] if parts[0] == 'members' and parts[1].isdigit() and \
                int(parts[1]) < len(names) else '.'.join(parts[:2])
            out.setdefault(who, []).append(k)
        return '; '.join(f'{w}: {len(ks)} key(s), e.g. {ks[0]}' for w, ks in out.items())

    problems = ([f'missing from it: {by_member(missing)}'] if missing else []) + \
        ([f'not in the model: {by_member(unexpected)}'] if unexpected else []) + \
        ([f'shapes differ: {"; ".join(shapes[:3])}'] if shapes else [])
    raise ValueError(f'load_from={path} does not fit the model (members {names}): '
                     f'{" | ".join(problems)}. Set load_partial=true to load what fits and keep '
                     'the rest as built.')


class _KeepDumpsInTheLogFile(logging.Filter):
    """Keeps mmengine's environment and config dumps (about 250 lines) off the terminal; the
    log file in the work_dir still has them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ('\nSystem environment:' in message[:100] or message.startswith('Config:\n'))


def build_runner(cfg):
    """mmengine's Runner from the config, its terminal spared the environment and config
    dumps."""
    from mmengine.runner import Runner

    class QuietRunner(Runner):
        def build_logger(self, *args, **kwargs):
            logger = super().build_logger(*args, **kwargs)
            for handler in logger.handlers:
                if type(handler) is logging.StreamHandler:
                    handler.addFilter(_KeepDumpsInTheLogFile())
            return logger

    return QuietRunner.from_cfg(cfg)


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


#: errors of the user's input (config, data, checkpoints, flags): one message, exit status 2
USER_ERRORS = (FileNotFoundError, KeyError, ValueError, PermissionError, IsADirectoryError)


def main(args) -> Optional[dict]:
    from .hooks import primary_metric_of, unwrap

    setup_engine()
    cfg = setup(args)
    allow_partial = bool(cfg.pop('load_partial', False))
    runner = build_runner(cfg)
    if cfg.get('load_from') and not cfg.get('resume'):
        check_checkpoint_fits(unwrap(runner.model), cfg.load_from, allow_partial)
    if args.eval_only:
        metrics = runner.val()
        model = unwrap(runner.model)
        checkpoint = cfg.get('load_from')
        iteration = checkpoint_iteration(checkpoint) if checkpoint else None
        evaluated = (f'the checkpoint {checkpoint}' + (
            f' (iteration {iteration})' if iteration is not None else '')
            if checkpoint else 'the initial members (their configured weights)')
        summary = build_evaluation(metrics, model.member_names, primary_metric_of(runner),
                                   evaluated, type(model).__name__, checkpoint, iteration)
        if runner.rank == 0:
            save_json(summary, osp.join(runner.work_dir, 'eval.json'))
            print(format_evaluation(summary))
        return summary
    runner.train()
    return None


def run_cli(argv: Optional[List[str]] = None) -> None:
    parser = default_argument_parser()
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    if args.num_gpus < 1:
        parser.error(f'--num-gpus must be at least 1, got {args.num_gpus}')
    try:
        launch(main, args.num_gpus, args)
    except USER_ERRORS as e:
        if args.debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if isinstance(e, FileNotFoundError):
            message += _where_relative_paths_go(args.config_file)
        print(f'error: {message}\n(--debug shows where it was raised)', file=sys.stderr)
        sys.exit(2)
