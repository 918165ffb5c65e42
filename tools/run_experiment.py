#!/usr/bin/env python
"""Compare Bi-KD with its baselines on your own members: one command, one report.

    python tools/run_experiment.py --config-file FILE [--config-file FILE ...]
                                   [--methods bikd,kldp,kd,dml,independent]
                                   [--output-dir DIR] [key=value ...]

FILE is a Bi-KD config (its members, data, schedule and seed are kept; only the
meta-architecture changes). A method is a registered meta-architecture: the suite's are
``bikd``, ``kldp``, ``kd``, ``dml`` and ``independent`` (the control), and a config's
``custom_imports`` may register more. Each method declares the runs it needs
(``experiment_runs``), each run goes through tools/train_net.py:

- ``bikd``, ``independent``, ``dml``: one run with every member.
- ``kd``: one run per teacher (each member in turn frozen, the others learn from it).
- ``kldp``: one run per student (two members only): improving both takes two runs.

The report folder (default ``work_dirs/experiments/<config name>``) holds ``report.md`` (the
layout of the paper's Tables 2 and 3: each member's score before, after every method and the
delta, the ensemble of the initial members and the share of it each member recovered),
``report.csv`` (the same numbers, one row per member and run), ``deltas.png``, and, from the
Bi-KD run's log, ``teacher_share.png`` and ``task_losses.png``. Each run keeps its own
work_dir (``runs/<run>``) and config (``configs/<run>.py``); a run that finished with the
same config is reused, one whose config changed is moved aside (``runs/<run>.stale-<time>``)
and run again.

Several ``--config-file`` (the same members plus one more each time, Table 6) give one
report folder per config and ``kway.md`` / ``kway.csv`` / ``kway.png``: each member's delta
per method as members are added.

A grid (a paper table: configs x methods x seeds with the paper's numbers, :mod:`bikd.grid`)::

    python tools/run_experiment.py --grid configs/tables/table2.yaml --launcher slurm \
        --partition P --gpus-per-node 8 --time 24:00:00 [--wait]
    python tools/run_experiment.py --grid FILE --status | --collect
    python tools/run_experiment.py --grid configs/tables/digits.yaml        # here

Each run is a job (:mod:`bikd.jobs`, through submitit) in its own work_dir with ``--resume
auto``, requeueable on Slurm; submitting again submits only what is missing or failed. The
table (``work_dirs/grids/<grid>/table.md``, ``.csv``, ``.json``, ``.png``) has each member's
mean ± sd over seeds, each method against its control paired by seed, the paper's number
beside, and marks the cells not finished.
"""
import copy
import csv
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bikd.errors import UserError  # noqa: E402
from bikd.follow import run_python  # noqa: E402
from bikd.experiment import (against_controls, aggregate, collect, columns,  # noqa: E402
                             plan_runs, select_methods)
from bikd.summary import metric_digits  # noqa: E402


def method_classes(names: Optional[List[str]] = None) -> Dict[str, type]:
    """Method name -> meta-architecture (:func:`bikd.experiment.select_methods`); an unknown
    name ends the tool with the list of registered methods."""
    try:
        return select_methods(names)
    except ValueError as e:
        raise UserError(str(e)) from None


def predicted(rows: List[dict], names: List[str], before_outcomes: Dict[str, np.ndarray],
              runs: List[str]) -> List[str]:
    """Each member's complementarity measured before training (the share of samples another
    member gets right and it gets wrong: what tools/find_partners.py ranks by) next to its
    change under each method (lines of a Markdown table)."""
    if not before_outcomes or not all(m in before_outcomes for m in names):
        return []
    cols = columns(rows, runs)
    digits = metric_digits(r['before'] for r in rows)
    body = []
    for m in names:
        others = np.any([before_outcomes[o] for o in names if o != m], axis=0)
        adds = 100 * float(np.mean(others & ~before_outcomes[m]))
        body.append([m, f'{adds:.1f}'] + [f'{c[m]["delta"]:+.{digits}f}' if m in c else 'frozen'
                                          for _, c in cols])
    return ['', 'Complementarity predicted before training (% of the samples another member '
            'gets right and this one wrong, as tools/find_partners.py measures it) next to the '
            'change each method measured:', ''] + _table(
        ['model', 'others right, it wrong %'] + [label for label, _ in cols], body)


def _fmt(x, digits):
    return '-' if x is None else f'{x:.{digits}f}'


def _table(head: List[str], body: List[List[str]]) -> List[str]:
    return ['| ' + ' | '.join(head) + ' |', '|' + '|'.join(['---'] + ['---:'] * (len(head) - 1))
            + '|'] + ['| ' + ' | '.join(line) + ' |' for line in body]


def markdown(rows: List[dict], names: List[str], runs: List[str], title: str) -> str:
    metric = rows[0]['metric']
    digits = metric_digits(r['before'] for r in rows)
    cols = columns(rows, runs)
    before = {r['member']: r['before'] for r in rows}
    def cell(r):
        spread = f' ± {r["delta_sd"]:.{digits}f}' if r.get('n', 1) > 1 else ''
        return f'{_fmt(r["after"], digits)} ({r["delta"]:+.{digits}f}{spread})'

    main = [[m, _fmt(before[m], digits)] + ['frozen' if m not in c else cell(c[m])
                                            for _, c in cols] for m in names]
    seeds = max(r.get('n', 1) for r in rows)
    lines = [f'# {title}', '', f'{metric} of each member before and after each method (delta in '
             'brackets' + (f'; means over {seeds} seeds, ± the standard deviation of the delta'
                           if seeds > 1 else '') +
             '; "frozen": the member only taught in that run).', '']
    lines += _table(['model', 'before'] + [label for label, _ in cols], main)
    if rows[0]['ensemble_before'] is None:  # e.g. PQ: two models' segments have no mean
        lines += ['', f'The ensemble of the members (the mean of their per-pixel '
                  f'distributions) has no {metric}, so no recovered % (Eq. 14); its other '
                  'metrics are in each run\'s summary.json.']
    else:
        lines += ['', f'Ensemble of the initial members: '
                  f'{_fmt(rows[0]["ensemble_before"], digits)}. Recovered % of each member\'s '
                  'gap to it (Eq. 14):', '']
        lines += _table(['model'] + [label for label, _ in cols], [
            [m] + [_fmt(c[m]['recovered'], 1) if m in c else 'frozen' for _, c in cols]
            for m in names])
        withheld = {r['member']: r['recovered_withheld'] for r in rows
                    if r.get('recovered_withheld')}
        if withheld:
            lines += ['', '"-": left out, the gap is too small for a share of it to mean '
                      'anything: ' + '; '.join(f'{m}: {why}' for m, why in withheld.items())]
    if any('positive_flips_vs_self' in r for r in rows):
        lines += ['', 'Flips against the member\'s own initial self, % of the samples '
                  '(positive: wrong -> right / negative: right -> wrong); report.csv has them '
                  'against every initial member:', '']
        lines += _table(['model'] + [label for label, _ in cols], [
            [m] + [f'{c[m]["positive_flips_vs_self"]:.2f} / {c[m]["negative_flips_vs_self"]:.2f}'
                   if m in c and 'positive_flips_vs_self' in c[m] else '-' for _, c in cols]
            for m in names])
    return '\n'.join(lines) + '\n'


def _scalars(work_dir: str) -> List[dict]:
    """The training log's scalars (mmengine's vis_data/scalars.json of the latest start)."""
    stamps = sorted(d for d in os.listdir(work_dir)
                    if os.path.isfile(os.path.join(work_dir, d, 'vis_data', 'scalars.json')))
    records = []
    for stamp in stamps:  # a resumed run continues in a new folder
        with open(os.path.join(work_dir, stamp, 'vis_data', 'scalars.json')) as f:
            records += [json.loads(line) for line in f if line.strip()]
    return [r for r in records if 'loss' in r]


def plots(rows: List[dict], names: List[str], runs: List[str], bikd_dir: str, out: str,
          title: str = '') -> None:
    """``deltas.png`` (each member's change per method, as the report's table gives it) and,
    from the Bi-KD run's log, ``teacher_share.png`` and ``task_losses.png``; each says which
    runs it shows (``title``: the experiment) and over how many seeds."""
    import textwrap

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    cols = columns(rows, runs)
    digits = metric_digits(r['before'] for r in rows)
    seeds = max(r.get('n', 1) for r in rows)
    fig, ax = plt.subplots(figsize=(max(5.0, 2 + 0.7 * len(names) * len(cols)), 3.8))
    width = 0.8 / len(cols)
    for i, (label, cells) in enumerate(cols):
        xs = [k + i * width for k, m in enumerate(names) if m in cells]
        errors = [cells[m].get('delta_sd', 0.0) for m in names if m in cells]
        bars = ax.bar(xs, [cells[m]['delta'] for m in names if m in cells], width, label=label,
                      yerr=errors if any(errors) else None, capsize=3)
        ax.bar_label(bars, fmt=f'%+.{digits}f', fontsize=7)  # as the table prints them
    ax.axhline(0, color='black', lw=0.8)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(names))], names)
    ax.set_ylabel(f'change of {rows[0]["metric"]}')
    ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(textwrap.fill(f'{title}: change of each member, per method, '
                               + (f'mean ± sd over {seeds} seeds' if seeds > 1 else 'one seed'),
                               60), fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out, 'deltas.png'), dpi=120)
    plt.close(fig)
    if not bikd_dir or not os.path.isdir(bikd_dir):
        return
    records = _scalars(bikd_dir)
    run = os.path.basename(os.path.normpath(bikd_dir))
    from bikd.step import DISTILL_LOSS, TASK_LOSS, TEACHER_SHARE, log_key
    # the distillation term on an axis of its own: it is often a hundredth of the task losses
    for panels, name in ((([log_key(TEACHER_SHARE, m) for m in names],
                           'share of the batch taught'), ), 'teacher_share.png'), \
            ((([log_key(TASK_LOSS, m) for m in names], 'task loss'),
              ([log_key(DISTILL_LOSS)], 'distillation loss')), 'task_losses.png'):
        fig, axes = plt.subplots(len(panels), 1, sharex=True, squeeze=False,
                                 figsize=(6.4, 2.2 + 1.6 * len(panels)))
        for ax, (keys, ylabel) in zip(axes[:, 0], panels):
            for key in keys:
                pts = [(r['iter'], r[key]) for r in records if key in r]
                if pts:
                    ax.plot(*zip(*pts), label=key.split('/')[-1] if '/' in key else key)
            ax.set_ylabel(ylabel, fontsize=8)
            if ax.lines:
                ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0),
                          frameon=False)
            else:  # a run shorter than the logging interval
                ax.text(0.5, 0.5, 'no training iterations logged', ha='center',
                        transform=ax.transAxes)
        axes[-1, 0].set_xlabel('iteration')
        axes[0, 0].set_title(textwrap.fill(f'{title}: run {run} (the first Bi-KD run; one '
                                           'seed)', 60), fontsize=9)
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=120)
        plt.close(fig)


def _write_csv(rows: List[dict], path: str) -> None:
    from bikd.fileio import atomic_path
    with atomic_path(path) as tmp, open(tmp, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


@dataclass
class ConfigPlan:
    """The runs of one config in an experiment: each planned run once per seed, its config
    written to ``<out>/configs/<run>.py`` and its work_dir ``<out>/runs/<run>``."""
    config: str
    stem: str
    out: str
    classes: Dict[str, type]
    planned: Dict[str, object]  # base run name -> bikd.experiment.ExperimentRun
    names: List[str]
    seeds: Optional[List[int]]
    runs: Dict[str, object] = field(default_factory=dict)
    seed_of: Dict[str, Optional[int]] = field(default_factory=dict)
    base_of: Dict[str, str] = field(default_factory=dict)
    recipe_of: Dict[str, str] = field(default_factory=dict)
    left_out: Dict[str, str] = field(default_factory=dict)
    #: metrics compared with the control besides the primary one (--metrics)
    metrics: List[str] = field(default_factory=list)

    def work(self, run: str) -> str:
        return os.path.join(self.out, 'runs', run)

    def config_path(self, run: str) -> str:
        return os.path.join(self.out, 'configs', f'{run}.py')

    def summary(self, run: str) -> str:
        return os.path.join(self.work(run), 'summary.json')

    def done(self, run: str) -> bool:
        return os.path.isfile(self.summary(run))


def plan_config(config: str, methods: Optional[List[str]], out: str, opts: List[str],
                same_recipe: bool = False, seeds: Optional[List[int]] = None) -> ConfigPlan:
    """Every run of ``methods`` (default: every registered method) on ``config``, once per
    seed of ``seeds`` (default: the config's), each written as a config of its own. A run's
    work_dir that another config ran in is moved aside. A method's runs take the config's
    ``method_recipes.<method>`` (its own optimiser or schedule), unless ``same_recipe``."""
    from bikd.engine import load_config
    from bikd.fileio import save_text
    from bikd.meta_arch import member_names

    stem = os.path.splitext(os.path.basename(config))[0]
    cfg = load_config(config, opts)  # imports custom_imports: methods of the user's own
    classes = method_classes(methods)
    planned_runs, left_out = plan_runs(cfg.model.to_dict(), classes)
    plan = ConfigPlan(os.path.abspath(config), stem, out, classes, planned_runs,
                      member_names(cfg.model), seeds, left_out=left_out)
    recipes = {} if same_recipe else (cfg.get('method_recipes') or {})
    # one run per (planned run, seed); with several seeds the names carry the seed
    for seed in seeds or [None]:
        for base, planned in planned_runs.items():
            name = base if seeds is None or len(seeds) == 1 else f'{base}.seed{seed}'
            plan.runs[name], plan.seed_of[name], plan.base_of[name] = planned, seed, base
    for run, planned in plan.runs.items():
        run_cfg = cfg.copy()
        run_cfg.pop('method_recipes', None)  # the experiment's business, not the run's
        recipe = recipes.get(planned.method)
        if recipe:
            run_cfg.merge_from_dict(copy.deepcopy(recipe.to_dict()))
        plan.recipe_of[planned.method] = 'its own (method_recipes.' + planned.method + ')' \
            if recipe else 'the config\'s'
        if plan.seed_of[run] is not None:  # data order, augmentation, dropout; same members
            run_cfg.merge_from_dict({'randomness.seed': plan.seed_of[run]})
        run_cfg.model = planned.model
        run_cfg.work_dir = plan.work(run)
        path, text = plan.config_path(run), run_cfg.pretty_text
        if os.path.isfile(path) and open(path).read() == text:
            continue
        if os.path.isdir(plan.work(run)):  # another config ran here: keep it aside
            stale = f'{plan.work(run)}.stale-{time.strftime("%Y%m%d_%H%M%S")}'
            os.replace(plan.work(run), stale)
            print(f'{run}: the config changed; the earlier run moved to {stale}')
        save_text(text, path)
    return plan


def run_locally(plan: ConfigPlan) -> None:
    """Every run of ``plan`` not done yet, one after another, through tools/train_net.py."""
    for method, why in plan.left_out.items():
        print(f'{method} left out: {why}', flush=True)
    for i, run in enumerate(plan.runs, start=1):
        if plan.done(run):
            print(f'[{plan.stem} {i}/{len(plan.runs)}] {run}: done before '
                  f'({plan.summary(run)})', flush=True)
            continue
        path = plan.config_path(run)
        # --resume auto: a run this tool started before and that was stopped continues from
        # its last checkpoint (to the weights it would have had), not from the start
        code = run_python([os.path.join(ROOT, 'tools', 'train_net.py'), '--config-file', path,
                           '--resume', 'auto'],
                          os.path.join(plan.out, 'logs', f'{run}.log'),
                          f'\n[{plan.stem} {i}/{len(plan.runs)}] {run}: tools/train_net.py '
                          f'--config-file {path} --resume auto')
        if code == 2:  # train_net has said what in the input is wrong, in one line
            raise UserError(f'run {run} stopped on the error above; fix it and run this again '
                            '(the runs already done are reused)')
        if code > 128:  # stopped on a signal (Ctrl-C, SIGTERM) with a checkpoint
            print(f'run {run} stopped with a checkpoint (exit status {code}); the same command '
                  'again continues it, and reuses the runs already done', file=sys.stderr,
                  flush=True)
            sys.exit(code)
        if code:  # a bug: train_net has shown its traceback
            print(f'error: run {run} failed (exit status {code}; the traceback above)',
                  file=sys.stderr, flush=True)
            sys.exit(code)
        with open(plan.summary(run)) as f:
            summary = json.load(f)
        metric = summary['primary_metric']
        print('  ' + ', '.join(
            f'{m} {r["before"][metric]:.2f} -> {r["after"][metric]:.2f}'
            for m, r in summary['members'].items() if r.get('after')) + f' ({metric})',
            flush=True)


def summaries_of(plan: ConfigPlan) -> Dict[str, dict]:
    """The summaries of the runs of ``plan`` that are done."""
    out = {}
    for run in plan.runs:
        if plan.done(run):
            with open(plan.summary(run)) as f:
                out[run] = json.load(f)
    return out


def reported_metrics(plan: ConfigPlan, summaries: Dict[str, dict]) -> List[str]:
    """The metrics the finished runs of ``plan`` report (their first member's), sorted."""
    return sorted({m for s in summaries.values() for m in s['members'][plan.names[0]]['before']})


def report_config(plan: ConfigPlan, quiet: bool = False):
    """The report of a config whose runs are all done (report.md, .csv, .json, plots in its
    folder); returns the report's rows (averaged over seeds), the member names and the run
    order."""
    from bikd.fileio import save_json, save_text

    summaries, runs, out = summaries_of(plan), plan.runs, plan.out
    per_seed = collect(summaries, runs, plan.seed_of, plan.base_of)
    rows = aggregate(per_seed)
    order = list(plan.planned)
    report = markdown(rows, plan.names, order, f'{plan.stem}: {", ".join(plan.classes)}')
    comparison, paired = against_controls(per_seed, order, plan.classes)
    primary = per_seed[0]['metric'] if per_seed else ''
    known = reported_metrics(plan, summaries)
    for metric in (m for m in plan.metrics if m != primary):  # every metric asked for
        if metric not in known:
            raise UserError(f'--metrics {metric}: the runs of {plan.stem} report {known}')
        lines, records = against_controls(
            collect(summaries, runs, plan.seed_of, plan.base_of, metric=metric), order,
            plan.classes)
        comparison += [''] + lines
        paired += records
    if comparison:
        report += '\n' + '\n'.join(['```'] + comparison + ['```']) + '\n'
    bikd_run = next((r for r in runs if runs[r].method == 'bikd'), '')
    before = {}
    if bikd_run and os.path.isfile(os.path.join(out, 'runs', bikd_run, 'per_sample_before.npz')):
        with np.load(os.path.join(out, 'runs', bikd_run, 'per_sample_before.npz')) as data:
            before = {k: data[k] for k in data.files}
    report += '\n'.join(predicted(rows, plan.names, before, order)) + '\n'
    report += '\nOptimiser and schedule of each method: ' + ', '.join(
        f'{m}: {r}' for m, r in plan.recipe_of.items()) + '.\n'
    save_text(report, os.path.join(out, 'report.md'))
    _write_csv(per_seed, os.path.join(out, 'report.csv'))
    save_json(dict(config=plan.config, runs=order, seeds=plan.seeds, rows=per_seed,
                   mean_rows=rows, work_dirs={r: plan.work(r) for r in runs},
                   against_controls=comparison, paired=paired, recipes=plan.recipe_of),
              os.path.join(out, 'report.json'))
    plots(rows, plan.names, order, plan.work(bikd_run) if bikd_run else '', out, plan.stem)
    if not quiet:  # the report as text: without the Markdown fences around the comparison
        print('\n' + '\n'.join(line for line in report.splitlines() if line != '```'))
        print(f'report: {out}/report.md, report.csv, deltas.png')
    return rows, plan.names, order


def run_config(config: str, methods: Optional[List[str]], out: str, opts: List[str],
               same_recipe: bool = False, seeds: Optional[List[int]] = None,
               metrics: Sequence[str] = ()):
    """Every run of ``methods`` on ``config`` (reusing finished ones), once per seed, and its
    report in ``out`` (:func:`plan_config`, :func:`run_locally`, :func:`report_config`), which
    compares ``metrics`` with the control besides the primary one."""
    plan = plan_config(config, methods, out, opts, same_recipe, seeds)
    plan.metrics = list(metrics)
    run_locally(plan)
    return report_config(plan)


def kway(results: Dict[str, tuple], methods: List[str], out: str) -> str:
    """How each member's delta changes as members are added: one table per method, rows the
    members (in order of appearance), columns the configs (K members each)."""
    members = list(dict.fromkeys(n for _, names, _ in results.values() for n in names))
    metric = next(iter(results.values()))[0][0]['metric']
    digits = metric_digits(r['before'] for rows, _, _ in results.values() for r in rows)
    from bikd.fileio import save_text
    lines, flat = [f'# Members added one at a time: change of {metric}', ''], []
    for method in methods:
        head = ['model'] + [f'K={len(names)} ({stem})' for stem, (_, names, _) in results.items()]
        body = []
        for m in members:
            line = [m]
            for stem, (rows, names, _) in results.items():
                mine = [r for r in rows if r['member'] == m and r['method'] == method]
                line.append(', '.join(f'{r["delta"]:+.{digits}f}' for r in mine) or '')
                flat += [dict(r, config=stem, members=len(names)) for r in mine]
            body.append(line)
        lines += [f'## {method}', ''] + _table(head, body) + ['']
    _write_csv(flat, os.path.join(out, 'kway.csv'))
    text = '\n'.join(lines)
    save_text(text, os.path.join(out, 'kway.md'))

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6))
    styles = ['-', '--', ':', '-.']
    for k, method in enumerate(methods):  # one colour per member, one line style per method
        for c, m in enumerate(members):
            pts = [(r['members'], r['delta']) for r in flat if r['member'] == m
                   and r['method'] == method]
            if pts:
                ax.plot(*zip(*sorted(pts)), marker='o', color=f'C{c}',
                        linestyle=styles[k % len(styles)], label=f'{m} ({method})')
    ax.axhline(0, color='black', lw=0.8)
    ax.set_xlabel('members trained together (K)')
    ax.set_ylabel(f'delta {metric}')
    ax.set_xticks(sorted({r['members'] for r in flat}))
    ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(os.path.join(out, 'kway.png'), dpi=120)
    plt.close(fig)
    return text


def parse_seeds(text: str, config: str, opts: List[str]) -> Optional[List[int]]:
    """``--seeds``: '' (the config's seed), a number N (the config's and the N - 1 after it)
    or a comma-separated list."""
    if not text:
        return None
    try:
        numbers = [int(s) for s in text.split(',') if s.strip()]
    except ValueError:
        raise UserError(f'--seeds {text!r}: give a number of seeds (3) or a comma-separated '
                        'list of seeds (0,1,2)') from None
    if ',' in text:
        return numbers
    from bikd.engine import load_config
    base = int(load_config(config, opts, import_modules=False).get('randomness', {}).get(
        'seed', 0))
    return list(range(base, base + numbers[0]))


# ----------------------------------------------------------------------------- grids
def grid_plans(grid, out: str, opts: List[str], same_recipe: bool) -> Dict[str, ConfigPlan]:
    """Each cell's plan (its runs: methods x seeds), in ``<out>/<cell>``."""
    return {cell.name: plan_config(cell.config, grid.methods, os.path.join(out, cell.name),
                                   [*grid.overrides, *cell.overrides, *opts], same_recipe,
                                   grid.seeds)
            for cell in grid.cells}


def grid_status(plans: Dict[str, ConfigPlan], book) -> List[tuple]:
    """(cell, run, seed, state, detail) of every run of a grid."""
    from bikd.jobs import run_status
    return [(cell, run, plan.seed_of[run],
             *run_status(plan.work(run), book.get(f'{cell}/{run}')))
            for cell, plan in plans.items() for run in plan.runs]


def print_status(rows: List[tuple]) -> None:
    counts: Dict[str, int] = {}
    width = max(len(f'{c} {r}') for c, r, *_ in rows)
    for cell, run, seed, state, detail in rows:
        counts[state] = counts.get(state, 0) + 1
        print(f'{cell + " " + run:<{width}}  {state:<13} {detail}', flush=True)
    print(', '.join(f'{n} {state}' for state, n in counts.items()), flush=True)


def submit_grid(grid, plans: Dict[str, ConfigPlan], book, args, out: str) -> List[tuple]:
    """Submit every run that is not done, queued or running (a failed one again); with the
    local launcher, run them here one after another. Returns the jobs submitted."""
    from bikd.jobs import TrainJob, make_executor, parse_time
    executor = make_executor(args.launcher, os.path.join(out, 'logs', '%j'), args.partition,
                             args.nodes, args.gpus_per_node, args.cpus_per_task,
                             parse_time(args.time), args.mem, args.account)
    submitted = []
    for cell, run, _, state, _ in grid_status(plans, book):
        if state not in ('not submitted', 'failed'):
            continue
        plan = plans[cell]
        if args.launcher == 'slurm':
            executor.update_parameters(job_name=f'bikd-{grid.name}-{cell}-{run}')
        job = executor.submit(TrainJob(plan.config_path(run), os.getcwd(), args.nodes,
                                       args.gpus_per_node))
        book.record(f'{cell}/{run}', args.launcher, job.job_id,
                    os.path.join(out, 'logs', '%j'))
        how = 'submitted' if state == 'not submitted' else 'failed before, submitted again'
        print(f'{cell} {run}: {how} as {args.launcher} job {job.job_id}', flush=True)
        submitted.append((cell, run, job))
        if args.launcher == 'local':  # one at a time: this machine's cores
            try:
                job.result()
            except Exception as e:  # noqa: BLE001 - reported by the status view
                print(f'{cell} {run}: failed ({type(e).__name__})', flush=True)
    return submitted


def follow(plans, book, interval: float) -> List[tuple]:
    """Print the status whenever it changes, until no run is pending or running."""
    last = None
    while True:
        rows = grid_status(plans, book)
        states = [(c, r, s) for c, r, _, s, _ in rows]
        if states != last:
            print(time.strftime('%H:%M:%S'), flush=True)
            print_status(rows)
            last = states
        if not any(s in ('pending', 'running') for _, _, _, s, _ in rows):
            return rows
        time.sleep(interval)


def collect_grid(grid, plans: Dict[str, ConfigPlan], out: str) -> str:
    """The grid's table (``table.md``, ``.csv``, ``.json``, ``table.png``; one set per metric
    when the grid names several), and each finished cell's own report."""
    from bikd.fileio import save_json, save_text
    from bikd.grid import grid_table, plot_grid
    controls = {m: cls.control for m, cls in method_classes(grid.methods).items()}
    metrics = grid.metrics or [None]
    texts, everything = [], []
    summaries_of_cell = {cell: summaries_of(plan) for cell, plan in plans.items()}
    for k, metric in enumerate(metrics):
        cells = {}
        for cell, plan in plans.items():
            summaries = summaries_of_cell[cell]
            known = reported_metrics(plan, summaries)
            if metric and summaries and metric not in known:
                raise UserError(f'grid {grid.path}: metric {metric!r} is not reported by '
                                f'{cell} (its metrics: {known})')
            rows = collect(summaries, plan.runs, plan.seed_of, plan.base_of, metric)
            counts = {}
            for run, planned in plan.runs.items():
                c = counts.setdefault(planned.method, dict(done=0, planned=0))
                c['planned'] += 1
                c['done'] += plan.done(run)
            cells[cell] = dict(rows=rows, members=plan.names, runs=counts)
            if k == 0 and all(plan.done(r) for r in plan.runs):
                report_config(plan, quiet=True)
        text, records = grid_table(grid, cells, controls, metric)
        suffix = f'_{metric}' if len(metrics) > 1 else ''
        save_text(text, os.path.join(out, f'table{suffix}.md'))
        _write_csv([dict(r, values=json.dumps(r.get('values')),
                         difference=json.dumps(r.get('difference'))) for r in records],
                   os.path.join(out, f'table{suffix}.csv'))
        plot_grid(grid, records, os.path.join(out, f'table{suffix}.png'))
        texts.append(text)
        everything += records
    save_json(dict(grid=grid.path, title=grid.title, records=everything),
              os.path.join(out, 'table.json'))
    return '\n'.join(texts)


def grid_main(args) -> int:
    """``--grid``: plan, submit (or run here), follow, collect; ``--status``, ``--collect``."""
    from bikd.grid import load_grid
    from bikd.jobs import JobBook
    grid = load_grid(args.grid)
    out = os.path.abspath(args.output_dir or os.path.join('work_dirs', 'grids', grid.name))
    plans = grid_plans(grid, out, args.opts, args.same_recipe)
    book = JobBook(os.path.join(out, 'jobs.json'))
    n = sum(len(p.runs) for p in plans.values())
    print(f'{grid.title}: {len(plans)} config(s) x {len(grid.methods)} method(s) x '
          f'{len(grid.seeds)} seed(s): {n} runs in {out}', flush=True)
    if args.status:
        print_status(grid_status(plans, book))
        return 0
    if not args.collect:
        submit_grid(grid, plans, book, args, out)
        if args.launcher == 'slurm' and not args.wait:
            print(f'submitted; follow with --status, collect with --collect (or wait with '
                  f'--wait): python tools/run_experiment.py --grid {args.grid} --status',
                  flush=True)
            return 0
        rows = follow(plans, book, args.poll)
        failed = [r for r in rows if r[3] == 'failed']
        if failed:
            print(f'{len(failed)} run(s) failed; fix what they say and submit the grid again '
                  '(only what is missing or failed is submitted)', flush=True)
    text = collect_grid(grid, plans, out)
    print('\n' + text)
    print(f'table: {out}/table.md, table.csv, table.json, table.png')
    return 0


def main(argv=None):
    from bikd.engine.cli import add_debug_flag, config_parser, run_tool
    parser = config_parser(__doc__, many=True, required=False)  # (--grid names its configs)
    grid = parser.add_argument_group('grids: a paper table on a cluster or on this machine')
    grid.add_argument('--grid', metavar='FILE',
                      help='a grid of configs x methods x seeds (configs/tables/*.yaml): each '
                           'run a job in its own work_dir with --resume auto')
    grid.add_argument('--launcher', choices=['slurm', 'local'], default='local',
                      help='slurm: submit through submitit (requeueable jobs); local: run here, '
                           'one after another (default)')
    grid.add_argument('--status', action='store_true',
                      help='print each run of the grid: done, running, pending, failed (with '
                           'its last error line), not submitted')
    grid.add_argument('--collect', action='store_true',
                      help='write the table of what is done (unfinished cells are marked)')
    grid.add_argument('--wait', action='store_true',
                      help='with slurm: follow the jobs until they end, then collect')
    grid.add_argument('--poll', type=float, default=30.0, help='seconds between looks (--wait)')
    grid.add_argument('--partition', help='Slurm partition')
    grid.add_argument('--account', help='Slurm account')
    grid.add_argument('--nodes', type=int, default=1, help='machines per run')
    grid.add_argument('--gpus-per-node', type=int, default=0,
                      help='processes per machine, one per GPU (0: one process on CPU)')
    grid.add_argument('--cpus-per-task', type=int, help='CPUs per machine of a run')
    grid.add_argument('--mem', help='memory per machine, as Slurm takes it (e.g. 64G)')
    grid.add_argument('--time', default='24:00:00',
                      help='time limit of a job ([D-]HH:MM[:SS] or minutes); a job stopped '
                           'by it is requeued and resumes')
    parser.add_argument('--methods', default='',
                        help='comma-separated methods (default: every registered method: '
                             'bikd,kldp,kd,dml,independent and any the config registers)')
    parser.add_argument('--output-dir', help='default: work_dirs/experiments/<config name>')
    parser.add_argument('--seeds', default='',
                        help='run every method with several seeds (data order, augmentation, '
                             'dropout; the same initial members): a number N (the config\'s '
                             'seed and the N - 1 after it) or a comma-separated list')
    parser.add_argument('--metrics', default='',
                        help='comma-separated metrics to compare with the control besides the '
                             'primary one (e.g. PQ,AP,mIoU for panoptic runs)')
    parser.add_argument('--same-recipe', action='store_true',
                        help="every method with the config's optimiser and schedule, also those "
                             'the config gives a recipe of their own (method_recipes)')
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if bool(args.grid) == bool(args.config_file):
        parser.error('give --config-file FILE (an experiment) or --grid FILE (a grid), one')
    if args.grid:
        if args.methods or args.seeds or args.metrics:
            parser.error('--methods, --seeds and --metrics are the grid file\'s (methods:, '
                         'seeds:, metric:)')
        run_tool(lambda: grid_main(args), args.grid, args.debug)
        return 0
    stems = [os.path.splitext(os.path.basename(c))[0] for c in args.config_file]
    if len(set(stems)) != len(stems):
        parser.error(f'config files need distinct names, got {stems}')
    run_tool(lambda: experiment_main(args, stems), args.config_file[0], args.debug)
    return 0


def experiment_main(args, stems: List[str]) -> None:
    """``--config-file``: every method (and seed) of one config, or of several (K-way)."""
    methods = [m.strip() for m in args.methods.split(',') if m.strip()] or None
    seeds = parse_seeds(args.seeds, args.config_file[0], args.opts)
    default = stems[0] if len(stems) == 1 else f'kway_{stems[0]}'
    out = os.path.abspath(args.output_dir or os.path.join('work_dirs', 'experiments', default))
    metrics = [m.strip() for m in args.metrics.split(',') if m.strip()]
    if len(stems) == 1:
        run_config(args.config_file[0], methods, out, args.opts, args.same_recipe, seeds,
                   metrics)
        return
    results = {stem: run_config(c, methods, os.path.join(out, stem), args.opts,
                                args.same_recipe, seeds, metrics)
               for stem, c in zip(stems, args.config_file)}
    print('\n' + kway(results, methods or list(method_classes()), out))
    print(f'K-way report: {out}/kway.md, kway.csv, kway.png')


if __name__ == '__main__':
    sys.exit(main())
