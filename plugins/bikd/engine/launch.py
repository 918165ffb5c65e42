"""Processes of a run: the ones ``--num-gpus`` starts on this machine (on each of
``--num-machines`` machines, as detectron2's ``launch``), or those torchrun started (its
environment is detected), and the distributed setup mmengine's Runner needs."""
import os
import signal
import socket
import sys
from typing import Callable
from urllib.parse import urlparse

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ..errors import UserError


def free_port() -> int:
    """A TCP port nothing listens on (for a rendezvous on this machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(local_rank: int, main_func: Callable, num_gpus: int, machine_rank: int,
            world_size: int, host: str, port: int, args) -> None:
    os.environ.update(RANK=str(machine_rank * num_gpus + local_rank), LOCAL_RANK=str(local_rank),
                      LOCAL_WORLD_SIZE=str(num_gpus), WORLD_SIZE=str(world_size),
                      MASTER_ADDR=host, MASTER_PORT=str(port))
    main_func(args)


def rendezvous(dist_url: str):
    """``tcp://HOST:PORT`` -> (host, port); ``auto``: this machine and a free port."""
    if dist_url == 'auto':
        return '127.0.0.1', free_port()
    url = urlparse(dist_url)
    if url.scheme != 'tcp' or not url.hostname or not url.port:
        raise UserError(f'--dist-url must be tcp://HOST:PORT (machine 0\'s address and a free '
                        f'port), got {dist_url!r}')
    return url.hostname, url.port


def launch(main_func: Callable, num_gpus: int, args, num_machines: int = 1,
           machine_rank: int = 0, dist_url: str = 'auto') -> None:
    """Run ``main_func(args)`` in ``num_gpus`` processes on each of ``num_machines`` machines
    (this one being ``machine_rank``; they meet at ``dist_url``), or in this process when the
    run has one process or torchrun started it. A process that fails ends the others; this
    one then exits with its status."""
    world_size = num_gpus * num_machines
    if world_size > 1 and 'WORLD_SIZE' not in os.environ:
        host, port = rendezvous(dist_url)
        context = mp.start_processes(_worker, nprocs=num_gpus, start_method='spawn',
                                     args=(main_func, num_gpus, machine_rank, world_size, host,
                                           port, args), join=False)
        previous = _forward_stop_signals(context.processes)
        try:
            while not context.join():
                pass
        except mp.ProcessExitedException as e:  # it said why itself
            sys.exit(e.exit_code if e.exit_code and e.exit_code > 0 else 1)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    else:
        main_func(args)


def _forward_stop_signals(processes) -> dict:
    """While this process waits for the processes it started, a stop signal it receives
    (SIGTERM, SIGINT, SIGUSR2) goes on to them, which stop safely
    (:mod:`bikd.engine.signals`); this process waits for them to end."""
    from .signals import STOP_SIGNALS

    def forward(signum, frame=None):
        for process in processes:
            if process.is_alive():
                try:
                    os.kill(process.pid, signum)
                except ProcessLookupError:
                    pass

    return {signum: signal.signal(signum, forward) for signum in STOP_SIGNALS}


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
    # the suite's wrapper: the step through the model's own update, and the lean step, which
    # reduces each member's gradients itself (bikd.engine.lean_ddp). Named with its scope:
    # mmengine's Runner looks the wrapper's class up in its root registry before building it
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='bikd.BiKDDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    if not dist.is_initialized():  # (mmengine's Runner then leaves it as it is)
        init_process_group(env['dist_cfg']['backend'], env['dist_cfg'].get('timeout'))
    if not cuda:
        # mmengine passes the local rank as a CUDA device id; CPU modules take none.
        wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    return 'pytorch'


def init_process_group(backend: str, timeout_s=None) -> None:
    """Join the process group of ``RANK`` / ``WORLD_SIZE`` at ``MASTER_ADDR:MASTER_PORT``
    (torchrun's or ``launch``'s environment), each process on its own GPU when there are GPUs.

    The keys the processes exchange are kept apart per torchrun restart
    (``TORCHELASTIC_RESTART_COUNT``): torchrun's agent keeps one store for every round of its
    rendezvous, and the processes of a restarted group would otherwise read the addresses the
    dead group left there and fail to connect (seen with ``--max-restarts`` on gloo).
    """
    from datetime import timedelta

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', '0')))
    store, rank, world_size = next(dist.rendezvous('env://'))
    attempt = os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')
    kwargs = dict(timeout=timedelta(seconds=timeout_s)) if timeout_s else {}
    dist.init_process_group(backend, store=dist.PrefixStore(f'bikd/attempt_{attempt}', store),
                            rank=rank, world_size=world_size, **kwargs)
