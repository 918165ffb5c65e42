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
"""
import copy
import csv
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bikd.experiment import (against_controls, aggregate, collect, columns,  # noqa: E402
                             plan_runs, select_methods)
from bikd.summary import metric_digits  # noqa: E402


def method_classes(names: Optional[List[str]] = None) -> Dict[str, type]:
    """Method name -> meta-architecture (:func:`bikd.experiment.select_methods`); an unknown
    name ends the tool with the list of registered methods."""
    try:
        return select_methods(names)
    except ValueError as e:
        raise SystemExit(str(e)) from None


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


def plots(rows: List[dict], names: List[str], runs: List[str], bikd_dir: str, out: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    cols = columns(rows, runs)
    fig, ax = plt.subplots(figsize=(2 + 0.6 * len(names) * len(cols), 3.6))
    width = 0.8 / len(cols)
    for i, (label, cells) in enumerate(cols):
        xs = [k + i * width for k, m in enumerate(names) if m in cells]
        errors = [cells[m].get('delta_sd', 0.0) for m in names if m in cells]
        bars = ax.bar(xs, [cells[m]['delta'] for m in names if m in cells], width, label=label,
                      yerr=errors if any(errors) else None, capsize=3)
        ax.bar_label(bars, fmt='%+.3g', fontsize=7)
    ax.axhline(0, color='black', lw=0.8)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(names))], names)
    ax.set_ylabel(f'delta {rows[0]["metric"]}')
    ax.legend(fontsize=8)
    ax.set_title('change of each member, per method'
                 + (' (mean ± sd over seeds)' if any(r.get('n', 1) > 1 for r in rows) else ''))
    fig.tight_layout()
    fig.savefig(os.path.join(out, 'deltas.png'), dpi=120)
    plt.close(fig)
    if not bikd_dir or not os.path.isdir(bikd_dir):
        return
    records = _scalars(bikd_dir)
    from bikd.step import DISTILL_LOSS, TASK_LOSS, TEACHER_SHARE, log_key
    for keys, ylabel, name in (([log_key(TEACHER_SHARE, m) for m in names],
                                'share of the batch taught', 'teacher_share.png'),
                               ([log_key(TASK_LOSS, m) for m in names] + [log_key(DISTILL_LOSS)],
                                'loss', 'task_losses.png')):
        fig, ax = plt.subplots(figsize=(6, 3.4))
        for key in keys:
            pts = [(r['iter'], r[key]) for r in records if key in r]
            if pts:
                ax.plot(*zip(*pts), label=key)
        ax.set_xlabel('iteration')
        ax.set_ylabel(ylabel)
        if ax.lines:
            ax.legend(fontsize=8)
        else:  # a run shorter than the logging interval
            ax.text(0.5, 0.5, 'no training iterations logged', ha='center',
                    transform=ax.transAxes)
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=120)
        plt.close(fig)


def _write_csv(rows: List[dict], path: str) -> None:
    from bikd.fileio import atomic_path
    with atomic_path(path) as tmp, open(tmp, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


def run_config(config: str, methods: Optional[List[str]], out: str, opts: List[str],
               same_recipe: bool = False, seeds: Optional[List[int]] = None):
    """Every run of ``methods`` (default: every registered method) on ``config`` (reusing
    finished ones), once per seed of ``seeds`` (default: the config's), and its report in
    ``out``; returns the report's rows (averaged over seeds), the member names and the run
    order. A method's runs take the config's ``method_recipes.<method>`` (its own optimiser or
    schedule), unless ``same_recipe``."""
    from bikd.engine import load_config
    from bikd.fileio import save_json, save_text
    from bikd.meta_arch import member_names

    stem = os.path.splitext(os.path.basename(config))[0]
    cfg = load_config(config, opts)  # imports custom_imports: methods of the user's own
    classes = method_classes(methods)
    planned_runs, left_out = plan_runs(cfg.model.to_dict(), classes)
    for method, why in left_out.items():
        print(f'{method} left out: {why}', flush=True)
    names = member_names(cfg.model)
    recipes = {} if same_recipe else (cfg.get('method_recipes') or {})
    # one run per (planned run, seed); with several seeds the names carry the seed
    runs, seed_of, base_of = {}, {}, {}
    for seed in seeds or [None]:
        for base, planned in planned_runs.items():
            name = base if seeds is None or len(seeds) == 1 else f'{base}.seed{seed}'
            runs[name], seed_of[name], base_of[name] = planned, seed, base
    summaries, recipe_of = {}, {}
    for i, (run, planned) in enumerate(runs.items(), start=1):
        work = os.path.join(out, 'runs', run)
        summary_path = os.path.join(work, 'summary.json')
        run_cfg = cfg.copy()
        run_cfg.pop('method_recipes', None)  # the experiment's business, not the run's
        recipe = recipes.get(planned.method)
        if recipe:
            run_cfg.merge_from_dict(copy.deepcopy(recipe.to_dict()))
        recipe_of[planned.method] = 'its own (method_recipes.' + planned.method + ')' \
            if recipe else 'the config\'s'
        if seed_of[run] is not None:  # data order, augmentation, dropout; the same members
            run_cfg.merge_from_dict({'randomness.seed': seed_of[run]})
        run_cfg.model = planned.model
        run_cfg.work_dir = work
        path = os.path.join(out, 'configs', f'{run}.py')
        text = run_cfg.pretty_text
        same = os.path.isfile(path) and open(path).read() == text
        if os.path.isfile(summary_path) and same:
            print(f'[{stem} {i}/{len(runs)}] {run}: done before ({summary_path})', flush=True)
        else:
            if os.path.isdir(work) and not same:  # another config ran here: keep it aside
                stale = f'{work}.stale-{time.strftime("%Y%m%d_%H%M%S")}'
                os.replace(work, stale)
                print(f'{run}: the config changed; the earlier run moved to {stale}')
            save_text(text, path)
            print(f'\n[{stem} {i}/{len(runs)}] {run}: tools/train_net.py --config-file {path}',
                  flush=True)
            subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'train_net.py'),
                            '--config-file', path], check=True)
        with open(summary_path) as f:
            summaries[run] = json.load(f)

    per_seed = collect(summaries, runs, seed_of, base_of)
    rows = aggregate(per_seed)
    order = list(planned_runs)
    report = markdown(rows, names, order, f'{stem}: {", ".join(classes)}')
    comparison, paired = against_controls(per_seed, order, classes)
    if comparison:
        report += '\n' + '\n'.join(['```'] + comparison + ['```']) + '\n'
    bikd_run = next((r for r in runs if runs[r].method == 'bikd'), '')
    before = {}
    if bikd_run and os.path.isfile(os.path.join(out, 'runs', bikd_run, 'per_sample_before.npz')):
        with np.load(os.path.join(out, 'runs', bikd_run, 'per_sample_before.npz')) as data:
            before = {k: data[k] for k in data.files}
    report += '\n'.join(predicted(rows, names, before, order)) + '\n'
    report += '\nOptimiser and schedule of each method: ' + ', '.join(
        f'{m}: {r}' for m, r in recipe_of.items()) + '.\n'
    save_text(report, os.path.join(out, 'report.md'))
    _write_csv(per_seed, os.path.join(out, 'report.csv'))
    save_json(dict(config=os.path.abspath(config), runs=order, seeds=seeds, rows=per_seed,
                   mean_rows=rows, work_dirs={r: os.path.join(out, 'runs', r) for r in runs},
                   against_controls=comparison, paired=paired, recipes=recipe_of),
              os.path.join(out, 'report.json'))
    plots(rows, names, order, os.path.join(out, 'runs', bikd_run) if bikd_run else '', out)
    print('\n' + report)
    print(f'report: {out}/report.md, report.csv, deltas.png')
    return rows, names, order


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
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, 'kway.png'), dpi=120)
    plt.close(fig)
    return text


def parse_seeds(text: str, config: str, opts: List[str]) -> Optional[List[int]]:
    """``--seeds``: '' (the config's seed), a number N (the config's and the N - 1 after it)
    or a comma-separated list."""
    if not text:
        return None
    if ',' in text:
        return [int(s) for s in text.split(',') if s.strip()]
    from bikd.engine import load_config
    base = int(load_config(config, opts, import_modules=False).get('randomness', {}).get(
        'seed', 0))
    return list(range(base, base + int(text)))


def main(argv=None):
    from bikd.engine.cli import config_parser
    parser = config_parser(__doc__, many=True)
    parser.add_argument('--methods', default='',
                        help='comma-separated methods (default: every registered method: '
                             'bikd,kldp,kd,dml,independent and any the config registers)')
    parser.add_argument('--output-dir', help='default: work_dirs/experiments/<config name>')
    parser.add_argument('--seeds', default='',
                        help='run every method with several seeds (data order, augmentation, '
                             'dropout; the same initial members): a number N (the config\'s '
                             'seed and the N - 1 after it) or a comma-separated list')
    parser.add_argument('--same-recipe', action='store_true',
                        help="every method with the config's optimiser and schedule, also those "
                             'the config gives a recipe of their own (method_recipes)')
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(',') if m.strip()] or None
    seeds = parse_seeds(args.seeds, args.config_file[0], args.opts)
    stems = [os.path.splitext(os.path.basename(c))[0] for c in args.config_file]
    if len(set(stems)) != len(stems):
        raise SystemExit(f'config files need distinct names, got {stems}')
    default = stems[0] if len(stems) == 1 else f'kway_{stems[0]}'
    out = os.path.abspath(args.output_dir or os.path.join('work_dirs', 'experiments', default))
    if len(stems) == 1:
        run_config(args.config_file[0], methods, out, args.opts, args.same_recipe, seeds)
        return 0
    results = {stem: run_config(c, methods, os.path.join(out, stem), args.opts,
                                args.same_recipe, seeds)
               for stem, c in zip(stems, args.config_file)}
    print('\n' + kway(results, methods or list(method_classes()), out))
    print(f'K-way report: {out}/kway.md, kway.csv, kway.png')
    return 0


if __name__ == '__main__':
    sys.exit(main())
