"""Processes of a run: the ones ``--num-gpus`` starts on this machine, or those torchrun
started (its environment is detected), and the distributed setup mmengine's Runner needs."""
import os
import socket
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port nothing listens on (for a rendezvous on this machine)."""
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
                           args=(main_func, num_gpus, free_port(), args))
    else:
        main_func(args)


def setup_distributed(cfg) -> str:
    """The launcher for mmengine and its DDP wrapper (``cfg`` is completed in place); on
    machines without CUDA, start gloo here (mmengine's initialisation assumes a GPU per
    process)."""
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
