#!/usr/bin/env python
"""What Bi-KD costs against its members alone and against KL+DP, measured side by side.

    python tools/benchmark.py --config-file FILE [--iters N] [--warmup W] [--device cpu|cuda]
                              [--pretrained] [key=value ...]

On the same batches (drawn once from the config's training loader) and the same initial
members (random weights unless --pretrained), it times full training steps (forward, backward,
optimiser) of: each member trained alone, BiKDMetaArch with all members, and one KLDPMetaArch
run per student (a trainable student plus its frozen teacher and frozen initial copy). For
each: median seconds per iteration, samples/s and peak memory (the CUDA allocator's peak, or
the process's peak resident set on CPU, reset before each variant). Then the ratios measured
in this one run: Bi-KD / sum of the members alone, and KL+DP's runs for every member / Bi-KD.
Last, the distillation term alone (partition + masked KL, forward and backward) for K = 2..8
members on the members' real output shape: its cost should grow linearly in K.

Timings are medians over --iters steps after --warmup steps; on a shared or small machine
compare ratios from one run, not absolute figures across runs.
"""
import argparse
import copy
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux: writing 5 resets the process's peak RSS (VmHWM) to its current RSS
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass


def _peak_mib(device: str) -> float:
    if device.startswith('cuda'):
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(step: Callable[[int], None], iters: int, warmup: int, device: str) -> List[float]:
    for i in range(warmup):
        step(i)
    _sync(device)
    times = []
    for i in range(warmup, warmup + iters):
        start = time.perf_counter()
        step(i)
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def measure(name: str, model, optim_cfg: dict, batches: list, iters: int, warmup: int,
            device: str) -> dict:
    from mmengine.optim import build_optim_wrapper
    model = model.to(device)
    model.train()
    wrapper = build_optim_wrapper(model, copy.deepcopy(optim_cfg))
    _reset_peak(device)

    def step(i):
        model.train_step(batches[i % len(batches)], wrapper)

    times = time_steps(step, iters, warmup, device)
    n = _batch_size(batches[0])
    med = statistics.median(times)
    return dict(name=name, seconds=med, samples_per_s=n / med, peak_mib=_peak_mib(device))


def _batch_size(batch) -> int:
    inputs = batch['inputs'] if isinstance(batch, dict) else batch[0]
    return len(inputs)


def distill_table(shape, ks, iters: int, device: str) -> List[dict]:
    """Partition + masked KL, forward and backward, for K members of output ``shape``."""
    from bikd.losses import distillation_loss
    from bikd.partition import select_teachers
    rows = []
    for k in ks:
        logits = [torch.randn(shape, device=device, requires_grad=True) for _ in range(k)]
        scores = torch.rand(k, shape[0], device=device)

        def step(_):
            loss = distillation_loss(logits, select_teachers(scores))
            loss.backward()

        _reset_peak(device)
        times = time_steps(step, iters, 2, device)
        rows.append(dict(k=k, ms=1000 * statistics.median(times), peak_mib=_peak_mib(device)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config-file', required=True, metavar='FILE')
    parser.add_argument('--iters', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--pretrained', action='store_true',
                        help="load the members' weights (default: random, same for all variants)")
    parser.add_argument('opts', nargs=argparse.REMAINDER, metavar='key=value')
    args = parser.parse_args(argv)

    from mmengine.registry import MODELS, init_default_scope
    from mmengine.runner import Runner

    from bikd import IndependentMetaArch, KLDPMetaArch
    from bikd.engine import load_config

    opts = list(args.opts) + ([] if args.pretrained else ['model.random_init=true'])
    cfg = load_config(args.config_file, opts)
    init_default_scope(cfg.get('default_scope', 'bikd'))
    torch.manual_seed(cfg.get('randomness', {}).get('seed', 0))
    bikd = MODELS.build(dict(cfg.model, type='BiKDMetaArch'))
    members = list(bikd.members)
    names = [m.name for m in members]
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg['num_workers'] = min(loader_cfg.get('num_workers', 0), 2)
    loader_cfg['persistent_workers'] = False
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    n_batches = min(args.iters + args.warmup, len(loader), 8)
    batches, it = [], iter(loader)
    for _ in range(n_batches):
        batches.append(next(it))
    print(f'{args.config_file}: members {names}, {n_batches} distinct batches of '
          f'{_batch_size(batches[0])}, {args.iters} timed steps after {args.warmup}, '
          f'device {args.device}', flush=True)

    variants: Dict[str, Callable[[], torch.nn.Module]] = {}
    for m in members:
        variants[f'{m.name} alone'] = lambda m=m: IndependentMetaArch([copy.deepcopy(m)])
    variants['Bi-KD (all members)'] = lambda: copy.deepcopy(bikd)
    if len(members) == 2:
        for m in members:
            variants[f'KL+DP, student {m.name}'] = lambda m=m: KLDPMetaArch(
                [copy.deepcopy(x) for x in members], student=m.name,
                partition=getattr(bikd, 'partition', 'confidence'))
    results = {}
    for i, (name, build) in enumerate(variants.items(), start=1):
        print(f'[{i}/{len(variants)}] {name} ...', flush=True)
        results[name] = measure(name, build(), cfg.optim_wrapper, batches, args.iters,
                                args.warmup, args.device)

    width = max(len(n) for n in results) + 2
    print(f'\n{"variant":<{width}}{"s/iter":>10}{"samples/s":>12}{"peak MiB":>11}')
    for r in results.values():
        print(f'{r["name"]:<{width}}{r["seconds"]:>10.4f}{r["samples_per_s"]:>12.1f}'
              f'{r["peak_mib"]:>11.0f}')
    alone = sum(results[f'{n} alone']['seconds'] for n in names)
    ours = results['Bi-KD (all members)']['seconds']
    print(f'\nBi-KD / sum of the members alone: {ours / alone:.3f}  (time per iteration)')
    if len(members) == 2:
        kldp = sum(results[f'KL+DP, student {n}']['seconds'] for n in names)
        print(f'KL+DP for both members (two runs) / Bi-KD: {kldp / ours:.3f}  '
              f'(Bi-KD costs {ours / kldp:.2f}x KL+DP)')

    # the distillation term alone, on the members' real output shape
    with torch.no_grad():
        data = bikd.to(args.device).data_preprocessor(batches[0], True)
        out = bikd.members[0].forward_train(data['inputs'], data['data_samples'])
    shape = tuple(out.distill.shape)
    rows = distill_table(shape, range(2, 9), max(args.iters // 2, 5), args.device)
    print(f'\ndistillation term alone (partition + masked KL, forward + backward), output {shape}')
    print(f'{"K":>3}{"ms":>10}{"ms / (K-1)":>12}{"peak MiB":>11}')
    for r in rows:
        print(f'{r["k"]:>3}{r["ms"]:>10.3f}{r["ms"] / (r["k"] - 1):>12.3f}{r["peak_mib"]:>11.0f}')
    share = rows[len(members) - 2]['ms'] / 1000 / ours if len(members) <= 8 else float('nan')
    print(f'its share of a Bi-KD step at K = {len(members)}: {100 * share:.1f}%')
    return 0


if __name__ == '__main__':
    sys.exit(main())
