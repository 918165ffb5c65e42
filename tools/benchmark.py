#!/usr/bin/env python
"""What Bi-KD costs against its members alone and against other methods, measured side by side.

    python tools/benchmark.py --config-file FILE [--iters N] [--warmup W] [--rounds R]
                              [--methods kldp,...] [--device cpu|cuda] [--pretrained]
                              [--profile] [--memory-cap] [--eval-k 2,3,4] [key=value ...]

On the same batches (drawn once from the config's training loader) and the same initial
members (random weights unless --pretrained), it times full training steps (forward, backward,
optimiser) of: each member trained alone, BiKDMetaArch with all members, the same in lean mode
(``model.lean=true``: member by member, one member's activations alive at a time), and every
run that the --methods (default: KL+DP, one run per student: a trainable student plus its
frozen teacher and frozen initial copy) declare to improve the members. Every variant is built and
warmed up first, then all are timed round-robin in --rounds rounds, so that the machine's
drifts fall on all alike. For each: median seconds per iteration, samples/s and its memory:
weights, buffers and optimiser state, and the peak of the activations a training step holds
saved for backward (counted exactly through autograd's saved-tensor hooks, the same on every
machine: :mod:`bikd.memory`), plus on CUDA the allocator's peak. Then the ratios measured in
this one run: Bi-KD / sum of the members alone (time); ordinary Bi-KD's saved activations / the
members' summed, lean Bi-KD's / the largest member's and its time / ordinary Bi-KD's; each
method's runs for every member / Bi-KD, and the bound on the latter that the members'
frozen-forward cost sets. Then the data loader's throughput against what a Bi-KD step
consumes, and the distillation term alone (partition + masked KL, forward and backward) for
K = 2..8 members on the members' real output shape: time, and what it holds saved for its
backward in units of one member's output, both linear in K. --profile adds a torch.profiler
breakdown of one Bi-KD step's time. --memory-cap caps the memory between what a lean and an
ordinary step need (on CPU: the address space two steps add in a fresh process) and takes
both under it; --eval-k measures the evaluation's peak memory for K members (on CPU: the
tensors torch functions return, alive at once), member by member against all outputs held
at once.

Timings are medians over --iters steps after --warmup steps; on a shared or small machine
compare ratios from one run, not absolute figures across runs. Mixed precision and
channels-last are the configs' own switches, e.g. ``optim_wrapper.type=BiKDAmpOptimWrapper
optim_wrapper.dtype=bfloat16 model.channels_last=true``; every variant runs under them.
"""
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def make_parser():
    from bikd.engine.cli import config_parser
    parser = config_parser(__doc__)
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
    parser.add_argument('--memory-cap', action='store_true',
                        help='show lean mode at work: cap the memory (on CPU the process\'s '
                             'address space, on CUDA its memory fraction) between the lean and '
                             'the ordinary step\'s needs, then take an ordinary and a lean step')
    parser.add_argument('--eval-k', default='', metavar='K,K,...',
                        help='also measure the peak memory of evaluating one validation batch '
                             'with K members (the config\'s, repeated), member by member '
                             'against all outputs held at once, e.g. 2,3,4')
    return parser


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    for name in ('iters', 'rounds'):
        if getattr(args, name) < 1:
            parser.error(f'--{name} must be at least 1, got {getattr(args, name)}')
    if args.warmup < 0:
        parser.error(f'--warmup must be at least 0, got {args.warmup}')
    from bikd.experiments import benchmark as b
    bench = b.prepare(args.config_file, args.opts, args.iters, args.warmup, args.pretrained)
    cfg, members, names = bench.cfg, bench.members, bench.names
    amp = cfg.optim_wrapper.get('type') == 'BiKDAmpOptimWrapper'
    precision = f'AMP {cfg.optim_wrapper.get("dtype") or "default dtype"}' if amp else 'float32'
    print(f'{args.config_file}: members {names}, {len(bench.batches)} distinct batches of '
          f'{b.batch_size(bench.batches[0])}, {args.iters} timed steps after {args.warmup}, '
          f'device {args.device}, {precision}'
          f'{", channels-last" if bench.bikd.channels_last else ""}', flush=True)
    variants, planned = b.variants_of(bench, [m for m in args.methods.split(',') if m])
    built = b.measure_interleaved(variants, cfg.optim_wrapper, bench.batches, args.iters,
                                  args.warmup, args.rounds, args.device)
    results = {name: v.result() for name, v in built.items()}
    print('\n' + '\n'.join(b.results_lines(results, args.device.startswith('cuda'))))
    print('\n' + '\n'.join(b.ratio_lines(results, names)))
    for line in b.method_lines(results, names, planned, lambda n: b.frozen_forward_seconds(
            members[names.index(n)], bench.bikd, bench.batches, args.iters, args.warmup,
            args.device)):
        print(line)
    if args.profile:
        b.profile_step(built[b.BIKD], args.device)
    if args.memory_cap:
        b.memory_cap_demo(args.config_file, bench.opts, built[b.BIKD], built[b.LEAN],
                          args.device)
    if args.eval_k:
        b.eval_memory_table(cfg, members, [int(k) for k in args.eval_k.split(',')],
                            args.device)
    # the data pipeline: the loader alone against what a Bi-KD step consumes
    n_load = max(min(len(bench.loader) - 1, 2 * (args.iters + args.warmup)), 1)
    load = b.loader_throughput(cfg.train_dataloader, n_load)
    print(f'\ndata loader alone ({cfg.train_dataloader.get("num_workers", 0)} workers, '
          f'{n_load} batches): {load:.1f} samples/s = '
          f'{load / results[b.BIKD]["samples_per_s"]:.1f}x what a Bi-KD step consumes '
          '(target >= 2)')
    print('\n' + '\n'.join(b.distill_lines(built[b.BIKD].model, bench.batches[0],
                                            len(members), results[b.BIKD], args.iters,
                                            args.device)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
