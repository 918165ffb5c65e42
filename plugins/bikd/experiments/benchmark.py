"""What a method costs against its members alone and against other methods, measured side by
side (``tools/benchmark.py`` prints it): every variant built and warmed up first, then timed
round-robin (:func:`measure_interleaved`) so that the machine's drifts fall on all alike; each
variant's memory counted exactly through autograd's saved-tensor hooks (:mod:`bikd.memory`);
the distillation term alone for K members (:func:`distill_table`), the evaluation's peak memory
for K members, and lean mode under a memory cap.
"""
import copy
import gc
import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.multiprocessing as mp
from mmengine.optim import build_optim_wrapper

from ..members.loading import take_weights

BIKD = 'Bi-KD (all members)'  # the variants' names in the table
LEAN = 'Bi-KD lean (member by member)'


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
    """One way of training, built and warmed up, with its memory (see :func:`step_memory`):
    its weights, buffers and optimiser state, the peak of the activations one training step
    holds saved for backward, and on CUDA the allocator's peak over the step."""

    def __init__(self, name: str, build: Callable[[], torch.nn.Module], optim_cfg: dict,
                 batches: list, warmup: int, device: str):
        self.name, self.batches, self.device = name, batches, device
        self.model = build().to(device).train()
        self.wrapper = build_optim_wrapper(self.model, copy.deepcopy(optim_cfg))
        for i in range(max(warmup, 1)):
            self.step(i)
        _sync(device)
        memory = step_memory(lambda: self.step(0), device, self.model)
        self.state_mib = static_bytes(self.model, self.wrapper.optimizer) / 2**20
        self.saved_mib = memory['saved'] / 2**20
        self.step_peak_mib = memory.get('allocated', 0) / 2**20  # CUDA only
        self.times: List[float] = []

    def step(self, i: int) -> None:
        self.model.train_step(self.batches[i % len(self.batches)], self.wrapper)

    def time(self, iters: int, start: int) -> None:
        self.times += time_steps(lambda i: self.step(start + i), iters, 0, self.device)

    def result(self) -> dict:
        med = statistics.median(self.times)
        return dict(name=self.name, seconds=med, samples_per_s=batch_size(self.batches[0]) / med,
                    state_mib=self.state_mib, saved_mib=self.saved_mib,
                    peak_mib=self.state_mib + self.step_peak_mib)


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


def frozen_forward_seconds(member, model, batches: list, iters: int, warmup: int,
                           device: str) -> float:
    """Median seconds of one member's forward in eval mode without gradients."""
    member = copy.deepcopy(member).to(device).eval()
    preprocess = model.data_preprocessor.to(device)

    def step(i):
        with torch.no_grad():
            data = preprocess(batches[i % len(batches)], True)
            member.forward_train(data['inputs'], data['data_samples'])

    return statistics.median(time_steps(step, iters, warmup, device))


def profile_step(variant: Variant, device: str) -> None:
    """One more step of the (warmed-up) Bi-KD variant under torch.profiler: the parts the
    meta-architecture labels (``bikd.forward.<member>``, ``bikd.distillation``), the backward
    pass and the optimiser step, then the operators with the most self time."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                           if device.startswith('cuda') else [])
    _sync(device)
    with profile(activities=activities) as prof:
        variant.step(0)
        _sync(device)
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
    sort = 'self_cuda_time_total' if device.startswith('cuda') else 'self_cpu_time_total'
    print(events.table(sort_by=sort, row_limit=12, max_name_column_width=40))


def batch_size(batch) -> int:
    inputs = batch['inputs'] if isinstance(batch, dict) else batch[0]
    return len(inputs)


def step_memory(fn: Callable[[], None], device: str,
                model: Optional[torch.nn.Module] = None) -> Dict[str, int]:
    """Memory of a training step ``fn``: ``saved``, the peak bytes of the tensors autograd
    holds saved for backward (activations; ``model``'s weights, which layers save too, left
    out; :func:`bikd.memory.saved_tensors_peak`), exact and alike on every machine; on CUDA
    also ``allocated``, the allocator's peak beyond what was allocated before (gradients,
    workspaces and temporaries included). Two runs of ``fn`` on CUDA, one on CPU."""
    from ..memory import saved_tensors_peak
    weights = [*model.parameters(), *model.buffers()] if model is not None else []
    out = dict(saved=saved_tensors_peak(fn, exclude=weights))
    if device.startswith('cuda'):
        out['allocated'] = cuda_peak_bytes(fn)
    return out


def cuda_peak_bytes(fn: Callable[[], None]) -> int:
    """The CUDA allocator's peak while ``fn`` runs, beyond what was allocated before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def distill_table(shape, ks, iters: int, device: str) -> List[dict]:
    """Partition + masked KL (from the members' raw outputs: softmax, teacher pick, KL),
    forward and backward, for K members of output ``shape``: median time, and the bytes it
    holds saved for its backward (what it adds to a step's activations), also in units of one
    member's output; on CUDA the allocator's peak too."""
    from ..losses import distillation_loss
    from ..memory import saved_tensors_peak
    from ..partition import select_teachers
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
        saved = saved_tensors_peak(step)
        row = dict(k=k, ms=1000 * statistics.median(times), saved_mib=saved / 2**20,
                   outputs=saved / one_output)
        if device.startswith('cuda'):
            for z in logits:
                z.grad = None
            row['peak_mib'] = cuda_peak_bytes(step) / 2**20
        rows.append(row)
    return rows


def lean_copy(model: torch.nn.Module) -> torch.nn.Module:
    model = copy.deepcopy(model)
    model.lean = True
    return model


def _vm_bytes(field: str = 'VmSize') -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f'no {field} in /proc/self/status')


def _capped_steps(config: str, opts: List[str], lean: bool, cap: Optional[float],
                  result) -> None:
    """In a fresh process: build the config's Bi-KD model (lean or not) and its optimiser,
    then take two training steps on the loader's first batch, with the process's address
    space capped at its size before the steps plus ``cap`` bytes (``None``: no cap). Puts
    (outcome, the address space the steps added at their peak, detail) into ``result``."""
    import resource

    from mmengine.runner import Runner, set_random_seed

    from ..engine.build import build_model
    from ..engine import load_config
    cfg = load_config(config, opts)
    set_random_seed(cfg.get('randomness', {}).get('seed', 0))
    model = build_model(dict(cfg.model, type='BiKDMetaArch', lean=lean),
                        cfg.get('default_scope')).train()
    take_weights(model)
    wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg.update(num_workers=0, persistent_workers=False)
    batch = next(iter(Runner.build_dataloader(loader_cfg, seed=0)))
    gc.collect()
    before = _vm_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if cap is not None:
        resource.setrlimit(resource.RLIMIT_AS, (int(before + cap), hard))
    try:
        for _ in range(2):
            logs = model.train_step(batch, wrapper)
        outcome = ('trained', f'loss {float(logs["loss"]):.4f}')
    except (RuntimeError, MemoryError) as e:
        outcome = ('out of memory', str(e).splitlines()[0][:100])
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    result.put((outcome[0], _vm_bytes('VmPeak') - before, outcome[1]))


def memory_cap_demo(config_file: str, opts: List[str], ordinary: Variant, lean: Variant,
                    device: str) -> None:
    """Cap the memory between what a lean and an ordinary step need and train under it,
    ordinary and lean: on CUDA with the process's memory fraction, halfway between the two
    steps' tensor peaks measured above; on CPU in fresh processes with an address-space limit
    (``RLIMIT_AS``), halfway between the address space each needs in an uncapped fresh
    process (first steps included: the optimiser's state, the kernels' caches)."""
    print('\nmemory cap: ordinary and lean Bi-KD steps under a cap between their needs')
    if device.startswith('cuda'):
        need = [v.step_peak_mib * 2**20 for v in (ordinary, lean)]
        outcomes = []
        for variant in (ordinary, lean):
            variant.wrapper.zero_grad()
            gc.collect()
            torch.cuda.empty_cache()
            limit = torch.cuda.memory_allocated() + (need[0] + need[1]) / 2
            total = torch.cuda.get_device_properties(torch.device(device)).total_memory
            torch.cuda.set_per_process_memory_fraction(min(limit / total, 1.0))
            try:
                for i in range(2):
                    variant.step(i)
                outcomes.append(('trained', '2 steps'))
            except torch.cuda.OutOfMemoryError as e:
                variant.wrapper.zero_grad()
                outcomes.append(('out of memory', str(e).splitlines()[0][:100]))
            finally:
                torch.cuda.set_per_process_memory_fraction(1.0)
        how = 'tensor memory of a step (CUDA allocator, per-process memory fraction)'
    else:
        ctx = mp.get_context('spawn')

        def fresh(is_lean, cap):
            result = ctx.Queue()
            proc = ctx.Process(target=_capped_steps, args=(config_file, opts, is_lean,
                                                           cap, result))
            # one malloc arena (no 64 MiB reservations per thread in the address space) and a
            # fixed mmap threshold (glibc's moves with what was freed before): every block of
            # 128 KiB or more is mapped when allocated and unmapped when freed, so that the
            # address space follows the tensors alive
            malloc = dict(MALLOC_ARENA_MAX='1', MALLOC_MMAP_THRESHOLD_='131072')
            before = {k: os.environ.get(k) for k in malloc}
            os.environ.update(malloc)
            try:
                proc.start()
            finally:
                for k, v in before.items():
                    if v is None:
                        os.environ.pop(k)
                    else:
                        os.environ[k] = v
            out = result.get()
            proc.join()
            return out

        need = [fresh(is_lean, None)[1] for is_lean in (False, True)]
        if need[0] <= need[1]:
            print(f'  nothing to show: in a fresh process the ordinary steps need no more '
                  f'address space than the lean ones ({need[0] / 2**20:.0f} vs '
                  f'{need[1] / 2**20:.0f} MiB)')
            return
        cap = (need[0] + need[1]) / 2
        outcomes = [fresh(is_lean, cap)[::2] for is_lean in (False, True)]
        how = ('address space two first steps add in a fresh process (RLIMIT_AS), after '
               'building the model')
    print(f'  needs: ordinary {need[0] / 2**20:.0f} MiB, lean {need[1] / 2**20:.0f} MiB of '
          f'{how}; cap {(need[0] + need[1]) / 2 / 2**20:.0f} MiB')
    for name, (outcome, detail) in zip(('ordinary Bi-KD', 'lean Bi-KD'), outcomes):
        print(f'  {name} under the cap: {outcome} ({detail})')


def eval_peak_bytes(fn: Callable[[], None], model: torch.nn.Module, device: str) -> int:
    """Peak memory of an evaluation ``fn`` beyond the model's weights: the CUDA allocator's,
    or on CPU that of the tensors torch functions return (:func:`bikd.memory.live_tensors_peak`,
    the same on every machine)."""
    if device.startswith('cuda'):
        return cuda_peak_bytes(fn)
    from ..memory import live_tensors_peak
    return live_tensors_peak(fn, exclude=[*model.parameters(), *model.buffers()])


def eval_memory_table(cfg, members: list, ks: List[int], device: str) -> None:
    """Peak tensor memory of evaluating one validation batch with K members, member by member
    (as the meta-architectures evaluate) and with all K + 1 outputs held at once (stacked)."""
    from mmengine.registry import METRICS
    from mmengine.runner import Runner

    from ..method.meta_arch import IndependentMetaArch
    loader_cfg = copy.deepcopy(cfg.val_dataloader)
    loader_cfg.update(num_workers=0, persistent_workers=False)
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    data_batch = next(iter(loader))
    evaluator = METRICS.build(copy.deepcopy(cfg.val_evaluator))
    evaluator.dataset_meta = getattr(loader.dataset, 'metainfo', None)
    rows = []
    for k in ks:
        copies = []
        for i in range(k):
            m = copy.deepcopy(members[i % len(members)])
            m.name = f'{m.name}_{i}'
            copies.append(m)
        model = IndependentMetaArch(copies, data_preprocessor=cfg.model.get(
            'data_preprocessor')).to(device).eval()

        def memberwise():
            with torch.no_grad():
                evaluator.process(data_batch, model.val_step(data_batch))
            evaluator.results.clear()

        def stacked():
            with torch.no_grad():
                out = model.val_step(data_batch)[0]
                evaluator.results.extend(evaluator.sample_stats(out['preds'].stacked(),
                                                                data_batch))
            evaluator.results.clear()

        memberwise()  # warm-up
        with torch.no_grad():
            data = model.data_preprocessor(data_batch, False)
            one = copies[0].predict(data['inputs'], data['data_samples'])
        rows.append((k, eval_peak_bytes(memberwise, model, device),
                     eval_peak_bytes(stacked, model, device), one.numel() * 4))
        model = copies = None  # (freed before the next k is built)
    how = ('the CUDA allocator\'s peak' if device.startswith('cuda') else
           'the tensors torch functions return, alive at once')
    print(f'\nevaluation of one validation batch, peak memory ({how}; one member\'s '
          f'prediction: {tuple(one.shape)}, {rows[0][3] / 2**20:.1f} MiB)')
    print(f'{"K":>3}{"member by member MiB":>22}{"x prediction":>14}{"all held MiB":>14}'
          f'{"x prediction":>14}')
    for k, lazy, held, size in rows:
        print(f'{k:>3}{lazy / 2**20:>22.1f}{lazy / size:>14.1f}{held / 2**20:>14.1f}'
              f'{held / size:>14.1f}')
    print('(member by member, as the meta-architectures evaluate: flat in K; all K + 1 '
          'outputs held at once grows by one prediction per member)')


def loader_throughput(loader_cfg: dict, batches: int) -> float:
    """Samples/s of the training data loader alone, as configured (workers included), after
    its first batch (worker start-up)."""
    from mmengine.runner import Runner
    loader = Runner.build_dataloader(copy.deepcopy(loader_cfg), seed=0)
    it = iter(loader)
    next(it)
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        n += batch_size(next(it))
    return n / (time.perf_counter() - start)


@dataclass
class Bench:
    """What every variant of a benchmark shares: the config, the Bi-KD model its members come
    from (built once, random weights unless ``pretrained``), and the batches drawn once."""
    cfg: object
    opts: List[str]
    bikd: torch.nn.Module
    loader: object
    batches: list

    @property
    def members(self) -> list:
        return list(self.bikd.members)

    @property
    def names(self) -> List[str]:
        return [m.name for m in self.bikd.members]


def prepare(config_file: str, opts: List[str], iters: int, warmup: int,
            pretrained: bool = False) -> Bench:
    """Build the config's members (the same on every run of the tool: every generator is
    seeded, so the memory figures repeat exactly) and draw the batches every variant takes."""
    from mmengine.runner import Runner, set_random_seed

    from ..engine import load_config
    from ..engine.build import build_model
    opts = list(opts) + ([] if pretrained else ['model.random_init=true'])
    cfg = load_config(config_file, opts)
    set_random_seed(cfg.get('randomness', {}).get('seed', 0))
    bikd = build_model(dict(cfg.model, type='BiKDMetaArch'), cfg.get('default_scope'))
    take_weights(bikd)  # random_init (the default here) takes none
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg['num_workers'] = min(loader_cfg.get('num_workers', 0), 2)
    loader_cfg['persistent_workers'] = False
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    n_batches = min(iters + warmup, len(loader), 8)
    batches, it = [], iter(loader)
    for _ in range(n_batches):
        batches.append(next(it))
    return Bench(cfg, opts, bikd, loader, batches)


def variants_of(bench: Bench, methods: List[str]) -> tuple:
    """The variants to time (name -> a function that builds one): each member alone, Bi-KD,
    Bi-KD lean, and every run the ``methods`` declare; and method -> its runs."""
    from ..method.meta_arch import IndependentMetaArch
    from ..registry import META_ARCH
    from .methods import plan_runs, select_methods
    members, bikd = bench.members, bench.bikd
    variants: Dict[str, Callable[[], torch.nn.Module]] = {}
    fmt = dict(channels_last=bikd.channels_last)
    for m in members:
        variants[f'{m.name} alone'] = lambda m=m: IndependentMetaArch([copy.deepcopy(m)], **fmt)
    variants[BIKD] = lambda: copy.deepcopy(bikd)
    variants[LEAN] = lambda: lean_copy(bikd)
    planned: Dict[str, list] = {}  # method -> its runs, each timed as a variant (its label)
    # the members as built, named (a member config may leave its name to the member's default)
    model_cfg = dict(bench.cfg.model.to_dict(), members=[
        dict(spec, name=m.name) for spec, m in zip(bench.cfg.model.to_dict()['members'],
                                                   members)])
    runs, left_out = plan_runs(model_cfg, select_methods(methods))
    for method, why in left_out.items():
        print(f'{method} left out: {why}')
    for run in runs.values():
        planned.setdefault(run.method, []).append(run)
        arguments = {k: v for k, v in run.model.items() if k not in ('type', 'members')}
        variants[run.label] = lambda run=run, arguments=arguments: META_ARCH.get(
            run.model['type'])([copy.deepcopy(x) for x in members], **arguments)
    return variants, planned


def results_lines(results: Dict[str, dict], cuda: bool) -> List[str]:
    """The variants' table: seconds per iteration, samples/s, state and saved memory."""
    width = max(len(n) for n in results) + 2
    columns = [('variant', -width, '', 'name'), ('s/iter', 10, '.4f', 'seconds'),
               ('samples/s', 12, '.1f', 'samples_per_s'), ('state MiB', 11, '.1f', 'state_mib'),
               ('saved MiB', 11, '.1f', 'saved_mib')] + \
        ([('peak MiB', 11, '.0f', 'peak_mib')] if cuda else [])
    return fixed_width(columns, list(results.values())) + [
        '(state MiB: weights, buffers and optimiser state; saved MiB: the peak of the '
        'activations a training step holds saved for backward, weights left out, counted '
        'exactly and alike on every machine' + (
            '; peak MiB: state plus the CUDA allocator\'s peak over a step)' if cuda
            else '; a whole process\'s need on CPU: --memory-cap)')]


def fixed_width(columns: List[tuple], rows: List[dict]) -> List[str]:
    """A plain-text table: ``columns`` as (heading, width (negative: left-aligned), format,
    the row's key or a function of the row), a line per row."""
    def cell(text, width, fmt=''):
        return format(text, f'{"<" if width < 0 else ">"}{abs(width)}{fmt}')

    return [''.join(cell(head, width) for head, width, _, _ in columns)] + [
        ''.join(cell(value(r) if callable(value) else r[value], width, fmt)
                for _, width, fmt, value in columns) for r in rows]


def ratio_lines(results: Dict[str, dict], names: List[str]) -> List[str]:
    """Bi-KD against its members alone, and lean Bi-KD against the ordinary, in time and in
    saved activations (ratios measured in this one run)."""
    step = {n: results[f'{n} alone']['seconds'] for n in names}
    ours = results[BIKD]['seconds']
    saved = {n: results[f'{n} alone']['saved_mib'] for n in names}
    largest = max(names, key=lambda n: saved[n])
    return [
        f'Bi-KD / sum of the members alone: {ours / sum(step.values()):.3f}  (time per '
        'iteration)',
        f'ordinary Bi-KD: saved activations / the members alone\'s summed: '
        f'{results[BIKD]["saved_mib"] / sum(saved.values()):.3f}  (about 1: every member\'s '
        'activations are alive until the one backward)',
        f'lean Bi-KD: saved activations / the largest member alone\'s ({largest}): '
        f'{results[LEAN]["saved_mib"] / saved[largest]:.3f}  (target <= 1.15; ordinary Bi-KD: '
        f'{results[BIKD]["saved_mib"] / saved[largest]:.3f})',
        f'lean Bi-KD / ordinary Bi-KD: {results[LEAN]["seconds"] / ours:.3f}  (time per '
        'iteration; one more forward per member)']


def method_lines(results: Dict[str, dict], names: List[str], planned: Dict[str, list],
                 frozen_seconds: Callable[[str], float]) -> List[str]:
    """Each method's runs for every member against Bi-KD, and the bound the members' frozen
    forwards (``frozen_seconds(member)``) set on that ratio."""
    step = {n: results[f'{n} alone']['seconds'] for n in names}
    alone, ours = sum(step.values()), results[BIKD]['seconds']
    frozen: Dict[str, float] = {}  # member -> seconds of its forward without gradient
    lines = []
    for method, runs in planned.items():
        total = sum(results[run.label]['seconds'] for run in runs)
        lines.append(f'{method} for every member ({len(runs)} runs) / Bi-KD: {total / ours:.3f}'
                     f'  (Bi-KD costs {ours / total:.2f}x {method})')
        # A run costs at least the training steps of the members it trains plus the frozen
        # forwards it computes, while Bi-KD costs at least the members' training steps.
        for n in {n for run in runs for n in run.frozen_forwards} - set(frozen):
            frozen[n] = frozen_seconds(n)
        floor = sum(sum(step[n] for n in run.trains) + sum(frozen[n] for n in run.frozen_forwards)
                    for run in runs)
        lines.append(f'at the physical limit (Bi-KD = sum of the members alone) Bi-KD would '
                     f'cost {alone / floor:.2f}x {method}: the sum of its runs\' training steps '
                     '(T) and frozen forwards (F) bounds it from below')
    if frozen:
        lines.append('frozen forward (no grad, as a frozen teacher runs): ' +
                     ', '.join(f'{n} {t:.4f} s = {t / step[n]:.2f}x its training step'
                               for n, t in frozen.items()))
    return lines


def distill_lines(trained: torch.nn.Module, batch, k_members: int, step_result: dict,
                  iters: int, device: str) -> List[str]:
    """The distillation term alone for K = 2..8 on the members' real output shape
    (:func:`distill_table`), and its share of a Bi-KD step at the config's K."""
    cuda = device.startswith('cuda')
    with torch.no_grad():
        data = trained.data_preprocessor(batch, True)
        out = trained.members[0].forward_train(data['inputs'], data['data_samples'])
    shape = tuple(out.logits.shape)
    rows = distill_table(shape, range(2, 9), max(iters // 2, 5), device)
    columns = [('K', 3, 'd', 'k'), ('ms', 10, '.3f', 'ms'),
               ('ms / (K-1)', 12, '.3f', lambda r: r['ms'] / (r['k'] - 1)),
               ('saved MiB', 11, '.2f', 'saved_mib'), ('x output', 10, '.2f', 'outputs')] + \
        ([('peak MiB', 11, '.2f', 'peak_mib')] if cuda else [])
    lines = [f'distillation term alone (partition + masked KL, forward + backward), output '
             f'{shape}'] + fixed_width(columns, rows)
    lines.append('(saved MiB: what the term holds for its backward, on top of the members\' '
                 'own activations; x output: in units of one member\'s output; both grow '
                 'linearly in K, never as K x K' + (
                     '; peak MiB: the CUDA allocator\'s peak, gradients included)' if cuda
                     else ')'))
    if k_members <= 8:
        term = rows[k_members - 2]
        ours, step_saved = step_result['seconds'], step_result['saved_mib']
        lines.append(f'its share of a Bi-KD step at K = {k_members}: '
                     f'{100 * term["ms"] / 1000 / ours:.1f}% of the time, '
                     f'{100 * term["saved_mib"] / step_saved:.1f}% of the saved activations '
                     f'({term["saved_mib"]:.2f} of {step_saved:.1f} MiB)')
    return lines
