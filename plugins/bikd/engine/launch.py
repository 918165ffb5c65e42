"""``train_net``: detectron2's command line on mmengine's Runner.

``python tools/train_net.py --config-file FILE [--num-gpus N] [--eval-only] [--resume]
[key=value ...]``. Multi-process runs also come from ``torchrun`` (its environment is detected).
"""
import argparse
import os
import os.path as osp
import socket
import sys
from typing import Callable, List, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..fileio import save_json
from ..summary import build_summary, format_table
from .config import load_config
from .optim import AMP_DTYPES
from .patches import setup_engine


def default_argument_parser(description: str = 'Bi-KD training and evaluation'):
    parser = argparse.ArgumentParser(
        description=description,
        epilog='Trailing key=value pairs override the config, e.g. '
               'train_cfg.max_iters=100 model.members.0.pretrained=false work_dir=out/run1')
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


def find_last_checkpoint(work_dir: str) -> Optional[str]:
    marker = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(marker):
        with open(marker) as f:
            path = f.read().strip()
        if osp.isfile(path):
            return path
    return None


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
    cfg.resume = bool(args.resume) and not args.eval_only
    if args.eval_only and args.resume and not cfg.get('load_from'):
        last = find_last_checkpoint(cfg.work_dir)
        if last is None:
            raise FileNotFoundError(f'--resume: no checkpoint in {cfg.work_dir}')
        cfg.load_from = last
    return cfg


def main(args) -> Optional[dict]:
    from mmengine.runner import Runner

    from .hooks import primary_metric_of, unwrap

    setup_engine()
    cfg = setup(args)
    runner = Runner.from_cfg(cfg)
    if args.eval_only:
        metrics = runner.val()
        model = unwrap(runner.model)
        summary = build_summary(metrics, None, model.member_names, primary_metric_of(runner),
                                method=type(model).__name__)
        if runner.rank == 0:
            save_json(summary, osp.join(runner.work_dir, 'eval.json'))
            print(format_table(summary, f'Evaluation of {cfg.get("load_from") or "the members"}'))
        return summary
    runner.train()
    return None


def run_cli(argv: Optional[List[str]] = None) -> None:
    args = default_argument_parser().parse_args(argv if argv is not None else sys.argv[1:])
    launch(main, args.num_gpus, args)
