#!/usr/bin/env python
"""What Bi-KD costs against its members alone and against other methods, measured side by side.

    python tools/benchmark.py --config-file FILE [--iters N] [--warmup W] [--rounds R]
                              [--methods kldp,...] [--device cpu|cuda] [--pretrained]
                              [--profile] [key=value ...]

On the same batches (drawn once from the config's training loader) and the same initial
members (random weights unless --pretrained), it times full training steps (forward, backward,
optimiser) of: each member trained alone, BiKDMetaArch with all members, and every run that
the --methods (default: KL+DP, one run per student: a trainable student plus its frozen
teacher and frozen initial copy) declare to improve the members. Every variant is built and
warmed up first, then all are timed round-robin in --rounds rounds, so that the machine's
drifts fall on all alike. For each: median seconds per iteration, samples/s and its own memory
(weights, buffers and optimiser state plus the peak of the tensors a training step allocates:
the CUDA allocator's peak, or torch's memory profile on CPU). Then the ratios measured in this
one run: Bi-KD / sum of the members alone, each method's runs for every member / Bi-KD, and
the bound on the latter that the members' frozen-forward cost sets. Then the data loader's
throughput against what a Bi-KD step consumes, and the distillation term alone (partition +
masked KL, forward and backward) for K = 2..8 members on the members' real output shape: time,
and the memory it allocates in units of one member's output, both linear in K. --profile adds
a torch.profiler breakdown of one Bi-KD step.

Timings are medians over --iters steps after --warmup steps; on a shared or small machine
compare ratios from one run, not absolute figures across runs. Mixed precision and
channels-last are the configs' own switches, e.g. ``optim_wrapper.type=AmpOptimWrapper
optim_wrapper.dtype=bfloat16 model.channels_last=true``; every variant runs under them.
"""
import argparse
import copy
import math
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
from mmengine.optim import build_optim_wrapper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIKD = 'Bi-KD (all members)'  # the variant's name in the table
sys.path.insert(0, ROOT)


def _sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


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


def static_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the weights, buffers and optimiser state (each tensor once)."""
    seen, total = set(), 0
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    for t in [*model.parameters(), *model.buffers(), *state]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


class Variant:
    """One way of training, built and warmed up. Its own memory: weights, buffers and
    optimiser state, plus the peak of the tensors one training step allocates (activations,
    gradients, temporaries; the allocator's peak on CUDA, torch's memory profile on CPU)."""

    def __init__(self, name: str, build: Callable[[], torch.nn.Module], optim_cfg: dict,
                 batches: list, warmup: int, device: str):
        self.name, self.batches, self.device = name, batches, device
        self.model = build().to(device).train()
        self.wrapper = build_optim_wrapper(self.model, copy.deepcopy(optim_cfg))
        for i in range(max(warmup, 1)):
            self.step(i)
        _sync(device)
        self.step_peak_mib = tensor_peak_bytes(lambda: self.step(0), device) / 2**20
        self.peak_mib = static_bytes(self.model, self.wrapper.optimizer) / 2**20 + \
            self.step_peak_mib
        self.times: List[float] = []

    def step(self, i: int) -> None:
        self.model.train_step(self.batches[i % len(self.batches)], self.wrapper)

    def time(self, iters: int, start: int) -> None:
        self.times += time_steps(lambda i: self.step(start + i), iters, 0, self.device)

    def result(self) -> dict:
        med = statistics.median(self.times)
        return dict(name=self.name, seconds=med, samples_per_s=_batch_size(self.batches[0]) / med,
                    peak_mib=self.peak_mib)


def measure_interleaved(variants: Dict[str, Callable[[], torch.nn.Module]], optim_cfg: dict,
                        batches: list, iters: int, warmup: int, rounds: int,
                        device: str) -> Dict[str, Variant]:
    """Build and warm up every variant, then time them in ``rounds`` round-robin rounds of
    ``iters / rounds`` steps each: slow drifts of the machine (clock, other tenants) fall on
    all variants alike instead of on whichever ran last."""
    built = []
    for i, (name, build) in enumerate(variants.items(), start=1):
        print(f'[{i}/{len(variants)}] building and warming up {name} ...', flush=True)
        built.append(Variant(name, build, optim_cfg, batches, warmup, device))
    rounds = max(1, min(rounds, iters))
    per_round = [iters // rounds + (r < iters % rounds) for r in range(rounds)]
    for r, n in enumerate(per_round):
        print(f'timing round {r + 1}/{rounds}: {n} steps of each variant', flush=True)
        for v in built:
            v.time(n, warmup + sum(per_round[:r]))
    return {v.name: v for v in built}


def frozen_forward_seconds(member, model, batches: list, args) -> float:
    """Median seconds of one member's forward in eval mode without gradients."""
    member = copy.deepcopy(member).to(args.device).eval()
    preprocess = model.data_preprocessor.to(args.device)

    def step(i):
        with torch.no_grad():
            data = preprocess(batches[i % len(batches)], True)
            member.forward_train(data['inputs'], data['data_samples'])

    return statistics.median(time_steps(step, args.iters, args.warmup, args.device))


def profile_step(variant: Variant, args) -> None:
    """One more step of the (warmed-up) Bi-KD variant under torch.profiler: the parts the
    meta-architecture labels (``bikd.forward.<member>``, ``bikd.distillation``), the backward
    pass and the optimiser step, then the operators with the most self time."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                           if args.device.startswith('cuda') else [])
    _sync(args.device)
    with profile(activities=activities) as prof:
        variant.step(0)
        _sync(args.device)
    events = prof.key_averages()
    parts = [(e.key, e.cpu_time_total) for e in events
             if e.key.startswith('bikd.') or e.key.startswith('Optimizer.step')]
    # every autograd node runs as one (non-nested) evaluate_function event
    parts.append(('backward (autograd)', sum(e.cpu_time_total for e in events if e.key.startswith(
        'autograd::engine::evaluate_function'))))
    total = sum(e.self_cpu_time_total for e in events)
    parts.append(('other (batch preparation, loss sum, logging)',
                  total - sum(us for _, us in parts)))
    print(f'\nprofile of one Bi-KD step ({total / 1e3:.1f} ms of operator time on the CPU side)')
    for key, us in parts:
        print(f'  {key:<46}{us / 1e3:>10.2f} ms {100 * us / max(total, 1):>6.1f}%')
    sort = 'self_cuda_time_total' if args.device.startswith('cuda') else 'self_cpu_time_total'
    print(events.table(sort_by=sort, row_limit=12, max_name_column_width=40))


def _batch_size(batch) -> int:
    inputs = batch['inputs'] if isinstance(batch, dict) else batch[0]
    return len(inputs)


def tensor_peak_bytes(fn: Callable[[], None], device: str) -> int:
    """Peak bytes of the tensors ``fn`` allocates beyond those alive before it: the CUDA
    allocator's peak, or on CPU the peak of the live tensors in torch's memory profile."""
    if device.startswith('cuda'):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        fn()
    live = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return peak


def distill_table(shape, ks, iters: int, device: str) -> List[dict]:
    """Partition + masked KL (from the members' raw outputs: softmax, teacher pick, KL),
    forward and backward, for K members of output ``shape``: median time, and the peak of the
    tensors it allocates in units of one member's output."""
    from bikd.losses import distillation_loss
    from bikd.partition import select_teachers
    rows = []
    one_output = math.prod(shape) * 4
    for k in ks:
        logits = [torch.randn(shape, device=device, requires_grad=True) for _ in range(k)]
        scores = torch.rand(k, shape[0], device=device)

        def step(_=None):
            for z in logits:
                z.grad = None
            loss = distillation_loss(logits, select_teachers(scores))
            loss.backward()

        times = time_steps(step, iters, 2, device)
        for z in logits:
            z.grad = None
        peak = tensor_peak_bytes(step, device)
        rows.append(dict(k=k, ms=1000 * statistics.median(times), peak_mib=peak / 2**20,
                         outputs=peak / one_output))
    return rows


def loader_throughput(loader_cfg: dict, batches: int) -> float:
    """Samples/s of the training data loader alone, as configured (workers included), after
    its first batch (worker start-up)."""
    from mmengine.runner import Runner
    loader = Runner.build_dataloader(copy.deepcopy(loader_cfg), seed=0)
    it = iter(loader)
    next(it)
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        n += _batch_size(next(it))
    return n / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config-file', required=True, metavar='FILE')
    parser.add_argument('--iters', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--rounds', type=int, default=5,
                        help='round-robin rounds the timed steps are split into')
    parser.add_argument('--methods', default='kldp',
                        help='methods timed beside Bi-KD, comma-separated (each with the runs '
                             'it needs for every member); "" for none')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--pretrained', action='store_true',
                        help="load the members' weights (default: random, same for all variants)")
    parser.add_argument('--profile', action='store_true',
                        help='also profile one Bi-KD step with torch.profiler: time per part '
                             '(each member\'s forward, partition + KL, backward, optimiser) '
                             'and the top operators')
    parser.add_argument('opts', nargs=argparse.REMAINDER, metavar='key=value')
    args = parser.parse_args(argv)

    from mmengine.registry import MODELS, init_default_scope
    from mmengine.runner import Runner

    from bikd import IndependentMetaArch, MethodNotApplicable, select_methods
    from bikd.engine import load_config, setup_engine
    from bikd.registry import META_ARCH

    setup_engine()
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
    amp = cfg.optim_wrapper.get('type') == 'AmpOptimWrapper'
    precision = f'AMP {cfg.optim_wrapper.get("dtype") or "default dtype"}' if amp else 'float32'
    print(f'{args.config_file}: members {names}, {n_batches} distinct batches of '
          f'{_batch_size(batches[0])}, {args.iters} timed steps after {args.warmup}, '
          f'device {args.device}, {precision}'
          f'{", channels-last" if bikd.channels_last else ""}', flush=True)

    variants: Dict[str, Callable[[], torch.nn.Module]] = {}
    fmt = dict(channels_last=bikd.channels_last)
    for m in members:
        variants[f'{m.name} alone'] = lambda m=m: IndependentMetaArch([copy.deepcopy(m)], **fmt)
    variants[BIKD] = lambda: copy.deepcopy(bikd)
    planned = {}  # method -> its runs, each timed as a variant named by the run's label
    for method, cls in select_methods([m for m in args.methods.split(',') if m]).items():
        try:
            planned[method] = cls.experiment_runs(cfg.model.to_dict())
        except MethodNotApplicable as e:
            print(f'{method} left out: {e}')
            continue
        for run in planned[method]:
            arguments = {k: v for k, v in run.model.items() if k not in ('type', 'members')}
            variants[run.label] = lambda run=run, arguments=arguments: META_ARCH.get(
                run.model['type'])([copy.deepcopy(x) for x in members], **arguments)
    built = measure_interleaved(variants, cfg.optim_wrapper, batches, args.iters, args.warmup,
                                args.rounds, args.device)
    results = {name: v.result() for name, v in built.items()}

    width = max(len(n) for n in results) + 2
    print(f'\n{"variant":<{width}}{"s/iter":>10}{"samples/s":>12}{"own MiB":>11}')
    for r in results.values():
        print(f'{r["name"]:<{width}}{r["seconds"]:>10.4f}{r["samples_per_s"]:>12.1f}'
              f'{r["peak_mib"]:>11.0f}')
    step = {n: results[f'{n} alone']['seconds'] for n in names}
    alone = sum(step.values())
    ours = results[BIKD]['seconds']
    print(f'\nBi-KD / sum of the members alone: {ours / alone:.3f}  (time per iteration)')
    frozen = {}  # member -> seconds of its forward without gradient
    for method, runs in planned.items():
        total = sum(results[run.label]['seconds'] for run in runs)
        print(f'{method} for every member ({len(runs)} runs) / Bi-KD: {total / ours:.3f}  '
              f'(Bi-KD costs {ours / total:.2f}x {method})')
        # A run costs at least the training steps of the members it trains plus the frozen
        # forwards it computes, while Bi-KD costs at least the members' training steps.
        for n in {n for run in runs for n in run.frozen_forwards} - set(frozen):
            frozen[n] = frozen_forward_seconds(members[names.index(n)], bikd, batches, args)
        floor = sum(sum(step[n] for n in run.trains) + sum(frozen[n] for n in run.frozen_forwards)
                    for run in runs)
        print(f'at the physical limit (Bi-KD = sum of the members alone) Bi-KD would cost '
              f'{alone / floor:.2f}x {method}: the sum of its runs\' training steps (T) and '
              'frozen forwards (F) bounds it from below')
    if frozen:
        print('frozen forward (no grad, as a frozen teacher runs): ' +
              ', '.join(f'{n} {t:.4f} s = {t / step[n]:.2f}x its training step'
                        for n, t in frozen.items()))

    if args.profile:
        profile_step(built[BIKD], args)

    # the data pipeline: the loader alone against what a Bi-KD step consumes
    n_load = max(min(len(loader) - 1, 2 * (args.iters + args.warmup)), 1)
    load = loader_throughput(cfg.train_dataloader, n_load)
    consumed = results[BIKD]['samples_per_s']
    print(f'\ndata loader alone ({cfg.train_dataloader.get("num_workers", 0)} workers, '
          f'{n_load} batches): {load:.1f} samples/s = {load / consumed:.1f}x what a Bi-KD step '
          'consumes (target >= 2)')

    # the distillation term alone, on the members' real output shape
    trained = built[BIKD].model
    with torch.no_grad():
        data = trained.data_preprocessor(batches[0], True)
        out = trained.members[0].forward_train(data['inputs'], data['data_samples'])
    shape = tuple(out.logits.shape)
    rows = distill_table(shape, range(2, 9), max(args.iters // 2, 5), args.device)
    print(f'\ndistillation term alone (partition + masked KL, forward + backward), output {shape}')
    print(f'{"K":>3}{"ms":>10}{"ms / (K-1)":>12}{"peak MiB":>11}{"x output":>10}')
    for r in rows:
        print(f'{r["k"]:>3}{r["ms"]:>10.3f}{r["ms"] / (r["k"] - 1):>12.3f}{r["peak_mib"]:>11.2f}'
              f'{r["outputs"]:>10.1f}')
    print('(peak MiB: tensors the term allocates; x output: that peak in units of one member\'s '
          'output; both grow linearly in K, never as K x K)')
    if len(members) <= 8:
        term = rows[len(members) - 2]
        step_peak = built[BIKD].step_peak_mib
        print(f'its share of a Bi-KD step at K = {len(members)}: '
              f'{100 * term["ms"] / 1000 / ours:.1f}% of the time, '
              f'{100 * term["peak_mib"] / step_peak:.1f}% of the peak tensor memory '
              f'({term["peak_mib"]:.2f} of {step_peak:.1f} MiB)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
