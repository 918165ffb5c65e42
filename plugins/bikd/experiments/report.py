"""An experiment's report: each member's score before and after every method (the layout of
the paper's Tables 2 and 3), the ensemble and the share of its gap each member recovered,
each method against its control paired by seed, the complementarity measured before training,
and the plots (``deltas.png``; from the Bi-KD run's log ``teacher_share.png`` and
``task_losses.png``); several configs (members added one at a time, Table 6) give ``kway.md``.
:func:`run_config` is the whole of one config: plan, run what is not done, report.
"""
import json
import os
import textwrap
from typing import Dict, List, Sequence

import numpy as np

from ..errors import UserError
from ..fileio import save_csv, save_figure, save_json, save_text
from ..step import DISTILL_LOSS, TASK_LOSS, TEACHER_SHARE, log_key
from ..summary import markdown_table, metric_digits
from .plan import ConfigPlan, reported_metrics, summaries_of
from .stats import against_controls, aggregate, collect, columns, printed_difference


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
            'change each method measured:', ''] + markdown_table(
        ['model', 'others right, it wrong %'] + [label for label, _ in cols], body)


def _fmt(x, digits):
    return '-' if x is None else f'{x:.{digits}f}'


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
    lines += markdown_table(['model', 'before'] + [label for label, _ in cols], main)
    if rows[0]['ensemble_before'] is None:  # e.g. PQ: two models' segments have no mean
        lines += ['', f'The ensemble of the members (the mean of their per-pixel '
                  f'distributions) has no {metric}, so no recovered % (Eq. 14); its other '
                  'metrics are in each run\'s summary.json.']
    else:
        lines += ['', f'Ensemble of the initial members: '
                  f'{_fmt(rows[0]["ensemble_before"], digits)}. Recovered % of each member\'s '
                  'gap to it (Eq. 14):', '']
        lines += markdown_table(['model'] + [label for label, _ in cols], [
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
        lines += markdown_table(['model'] + [label for label, _ in cols], [
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
          title: str = '', paired: Sequence[dict] = ()) -> None:
    """``deltas.png`` (the result first: each method minus its control per member, paired by
    seed, with its 95% interval and verdict, from ``paired``; under it each member's change
    per method, as the report's table gives it) and, from the Bi-KD run's log,
    ``teacher_share.png`` and ``task_losses.png``; each says which runs it shows (``title``:
    the experiment) and over how many seeds."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    cols = columns(rows, runs)
    digits = metric_digits(r['before'] for r in rows)
    seeds = max(r.get('n', 1) for r in rows)
    width_in = max(7.5, 2 + 0.8 * len(names) * len(cols))
    if paired:
        fig, (top, ax) = plt.subplots(2, 1, figsize=(width_in, 1.6 + 0.6 * len(paired) + 4.0),
                                      gridspec_kw=dict(height_ratios=[
                                          0.6 + 0.6 * len(paired), 3.4]), layout='constrained')
        _paired_panel(top, paired, digits, rows[0]['metric'], title)
    else:
        fig, ax = plt.subplots(figsize=(width_in, 4.2), layout='constrained')
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
    ax.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.08), ncol=len(cols),
              frameon=False)
    ax.set_title(textwrap.fill(('' if paired else f'{title}: ') + 'change of each member, per '
                               'method, ' + (f'mean ± sd over {seeds} seeds' if seeds > 1 else
                                             'one seed'), 80), fontsize=9)
    save_figure(fig, os.path.join(out, 'deltas.png'))
    if not bikd_dir or not os.path.isdir(bikd_dir):
        return
    records = _scalars(bikd_dir)
    run = os.path.basename(os.path.normpath(bikd_dir))
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
        save_figure(fig, os.path.join(out, name))


def _paired_panel(ax, paired: Sequence[dict], digits: int, metric: str, title: str) -> None:
    """Each (member, method) a row: the mean of the per-seed differences method - control of
    the member's change, its 95% interval (none with one seed) and the verdict beside it."""
    ys = list(range(len(paired)))[::-1]
    labels = []
    for y, r in zip(ys, paired):
        verdict = r['verdict'].split(':')[0].split(' (')[0]
        color = {'better': 'tab:green', 'worse': 'tab:red'}.get(verdict, 'tab:gray')
        mean = printed_difference(r['method_deltas'], r['control_deltas'], digits) \
            if r.get('method_deltas') else r['mean']  # (as the report's line prints it)
        if r.get('low') is not None:
            ax.errorbar(r['mean'], y, xerr=[[r['mean'] - r['low']], [r['high'] - r['mean']]],
                        fmt='o', color=color, capsize=4)
            shown = f'{mean:+.{digits}f} [{r["low"]:+.{digits}f}, {r["high"]:+.{digits}f}]'
        else:
            ax.plot([r['mean']], [y], 'o', color=color)
            shown = f'{mean:+.{digits}f}'
        labels.append((f'{r["member"]}: {r["method"]} - {r["control"]}\n{shown} {verdict}',
                       color))
    ax.axvline(0, color='black', lw=0.8)
    ax.set_yticks(ys, [text for text, _ in labels], fontsize=8)
    for tick, (_, color) in zip(ax.get_yticklabels(), labels):
        tick.set_color(color)
    ax.set_ylim(-0.7, len(paired) - 0.3)
    ax.set_xlabel(f'change of {metric} under the method minus under its control (points)',
                  fontsize=8)
    n = len(paired[0].get('seeds') or [None])
    ax.figure.suptitle(textwrap.fill(
        f'{title}: each method minus its control, paired by seed: ' +
        (f'mean and 95% interval over {n} seeds' if n > 1 else
         'one seed (no interval: --seeds N gives one)'), 90), fontsize=10)


def reading(paired: Sequence[dict]) -> str:
    """What the paired comparison says, in one paragraph of words (the terminal's last)."""
    seeds = len(paired[0].get('seeds') or [None])
    if seeds < 2:
        return ('One seed: each difference above is a single measurement with no estimate of '
                'its noise, so it gives no verdict; run with --seeds 3 (or more) for an '
                'interval.')
    named = {}
    for r in paired:
        kind = r['verdict'] if r['verdict'] in ('better', 'worse') else \
            'same' if r['verdict'].startswith('the same') else 'unclear'
        named.setdefault(kind, []).append(f'{r["member"]} ({r["method"]})')
    text = [f'How to read this: each method and its control fine-tuned the same initial '
            f'members on the same data order, once per seed ({seeds} seeds); a difference is '
            "the method's change minus the control's on the same seed, and the interval is "
            "where their mean lies with 95% confidence (Student's t over the seeds)."]
    if named.get('better'):
        text.append(f'Better than fine-tuning alone: {", ".join(named["better"])} (the whole '
                    'interval is above 0).')
    if named.get('worse'):
        text.append(f'Worse than fine-tuning alone: {", ".join(named["worse"])} (the whole '
                    'interval is below 0).')
    if named.get('unclear'):
        text.append(f'No measurable difference for {", ".join(named["unclear"])}: the '
                    'interval includes 0, so these seeds cannot tell the method from its '
                    'control. On a small, easy task (the digits demo: small members near '
                    'their ceiling) that is the expected, honest outcome; more seeds narrow '
                    'the interval, and the paper measured its gains on ImageNet, ADE20K and '
                    'DHF1K with members of real size.')
    if named.get('same'):
        text.append(f'The same difference on every seed for {", ".join(named["same"])}: a '
                    'metric that moves in steps (one image of a small split) measures no '
                    'noise; run more seeds.')
    return ' '.join(text)


def headline(comparison: Sequence[str], paired: Sequence[dict]) -> str:
    """The result as a person reads it first: the paired comparison with the control and
    its reading (:func:`reading`), for the end of the terminal's output."""
    if not paired:
        return ''
    rule = '=' * 78
    return '\n'.join([rule, 'RESULT', *comparison, '', textwrap.fill(reading(paired), 90),
                      rule])


def report_config(plan: ConfigPlan, quiet: bool = False):
    """The report of a config whose runs are all done (report.md, .csv, .json, plots in its
    folder); returns the report's rows (averaged over seeds), the member names and the run
    order."""
    summaries, runs, out = summaries_of(plan), plan.runs, plan.out
    per_seed = collect(summaries, runs, plan.seed_of, plan.base_of)
    rows = aggregate(per_seed)
    order = list(plan.planned)
    report = markdown(rows, plan.names, order, f'{plan.stem}: {", ".join(plan.classes)}')
    comparison, paired = against_controls(per_seed, order, plan.classes)
    primary_paired = list(paired)
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
    save_csv(per_seed, os.path.join(out, 'report.csv'))
    save_json(dict(config=plan.config, runs=order, seeds=plan.seeds, rows=per_seed,
                   mean_rows=rows, work_dirs={r: plan.work(r) for r in runs},
                   against_controls=comparison, paired=paired, recipes=plan.recipe_of),
              os.path.join(out, 'report.json'))
    plots(rows, plan.names, order, plan.work(bikd_run) if bikd_run else '', out, plan.stem,
          primary_paired)
    if not quiet:  # the report as text: without the Markdown fences around the comparison;
        # the result last, where the eye lands
        print('\n' + '\n'.join(line for line in report.splitlines() if line != '```'))
        print(f'report: {out}/report.md, report.csv, report.json; plots: deltas.png')
        print('\n' + headline(comparison, paired) if paired else '')
    return rows, plan.names, order


def kway(results: Dict[str, tuple], methods: List[str], out: str) -> str:
    """How each member's delta changes as members are added: one table per method, rows the
    members (in order of appearance), columns the configs (K members each)."""
    members = list(dict.fromkeys(n for _, names, _ in results.values() for n in names))
    metric = next(iter(results.values()))[0][0]['metric']
    digits = metric_digits(r['before'] for rows, _, _ in results.values() for r in rows)
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
        lines += [f'## {method}', ''] + markdown_table(head, body) + ['']
    save_csv(flat, os.path.join(out, 'kway.csv'))
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
    save_figure(fig, os.path.join(out, 'kway.png'))
    return text
