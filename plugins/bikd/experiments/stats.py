"""What the runs of an experiment say: one row per (member, run, seed) from the runs'
summaries, their mean over seeds, and each method against its control paired by seed, with
Student's t interval of the mean difference and the verdict it gives.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..summary import metric_digits


def collect(summaries: Dict[str, dict], runs: Dict[str, object],
            seeds: Dict[str, Optional[int]], bases: Dict[str, str],
            metric: Optional[str] = None) -> List[dict]:
    """One row per (member, run, seed) in which the member learned; ``run`` is the run's name
    without its seed. ``metric``: the one reported (default: each summary's primary one)."""
    rows = []
    for name, s in summaries.items():
        shown = metric or s['primary_metric']
        for m in runs[name].trains:
            r = s['members'][m]
            row = dict(member=m, method=runs[name].method, run=bases[name], seed=seeds[name],
                       metric=shown, before=r['before'][shown], after=r['after'][shown],
                       delta=r['delta'][shown],
                       recovered=r.get('recovered') if shown == s['primary_metric'] else None,
                       recovered_withheld=r.get('recovered_withheld')
                       if shown == s['primary_metric'] else None,
                       ensemble_before=s['ensemble']['before'].get(shown))
            for j, f in s.get('flips', {}).get(m, {}).items():
                who = 'self' if j == m else j
                row[f'positive_flips_vs_{who}'] = f['positive']
                row[f'negative_flips_vs_{who}'] = f['negative']
            rows.append(row)
    return rows


def aggregate(rows: List[dict]) -> List[dict]:
    """One row per (member, run): the mean over seeds of every number, with ``delta_sd`` (the
    standard deviation of the delta over seeds, 0 for one seed), ``n`` and ``deltas``."""
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault((r['member'], r['run']), []).append(r)
    out = []
    for group in groups.values():
        row = dict(group[0])
        row.pop('seed', None)
        for key, value in group[0].items():
            if isinstance(value, float) and key != 'before':
                values = [g[key] for g in group if g.get(key) is not None]
                row[key] = float(np.mean(values)) if values else None
        deltas = [g['delta'] for g in group]
        row.update(n=len(group), deltas=deltas,
                   delta_sd=float(np.std(deltas, ddof=1)) if len(deltas) > 1 else 0.0)
        out.append(row)
    return out


def paired_difference(diffs: List[float], confidence: float = 0.95) -> dict:
    """Mean of per-seed differences, its standard deviation and the confidence interval of
    the mean from Student's t distribution, and the verdict the interval gives."""
    from scipy import stats
    n = len(diffs)
    mean = float(np.mean(diffs))
    if n < 2:
        return dict(n=n, mean=mean, sd=None, low=None, high=None,
                    verdict='one seed: no interval (run more with --seeds)')
    sd = float(np.std(diffs, ddof=1))
    if sd <= 1e-9 * max(1.0, abs(mean)):  # the same difference on every seed (up to
        # rounding): no spread to measure noise with
        return dict(n=n, mean=mean, sd=sd, low=mean, high=mean,
                    verdict=f'the same on all {n} seeds: no spread to measure noise with '
                            '(a metric that moves in steps, e.g. one image of the split; run '
                            'more seeds)')
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / np.sqrt(n)
    low, high = mean - half, mean + half
    verdict = 'better' if low > 0 else 'worse' if high < 0 else 'no measurable difference'
    return dict(n=n, mean=mean, sd=sd, low=low, high=high, verdict=verdict)


def columns(rows: List[dict], runs: List[str]) -> List[tuple]:
    """(label, {member: row}) per table column: one per method where every member learned in
    at most one of its runs (KL+DP's two runs, KD with two members), else one per run."""
    method_of = {r['run']: r['method'] for r in rows}
    out, seen = [], set()
    for run in runs:
        method = method_of[run]
        if method in seen:
            continue
        seen.add(method)
        mine = [r for r in rows if r['method'] == method]
        members = [r['member'] for r in mine]
        if len(members) == len(set(members)):
            out.append((method, {r['member']: r for r in mine}))
        else:
            out += [(r_, {r['member']: r for r in mine if r['run'] == r_})
                    for r_ in runs if method_of[r_] == method]
    return out


def printed_difference(method_deltas: Sequence[float], control_deltas: Sequence[float],
                       digits: int) -> float:
    """The difference the report prints: that of the printed means (1.48 - 1.30 reads
    +0.18, though the mean of the per-seed differences may round to +0.17)."""
    return round(float(np.mean(method_deltas)), digits) - round(float(np.mean(control_deltas)),
                                                                digits)


def against_controls(rows: List[dict], runs: List[str], methods: Dict[str, type]) -> tuple:
    """Per method whose control also ran, each member's change under the method minus under
    the control, paired by seed (the same data order): the mean, and with several seeds its
    95% confidence interval and the verdict it gives. Returns (lines of text, records)."""
    digits = metric_digits(r['before'] for r in rows)
    seeds = sorted({r['seed'] for r in rows}, key=lambda x: (x is None, x))
    per_seed = {seed: dict(columns([r for r in rows if r['seed'] == seed], runs))
                for seed in seeds}
    lines, records = [], []
    first = per_seed[seeds[0]]
    for method, cls in methods.items():
        if method not in first or cls.control not in first:
            continue
        lines.append(f'{method} vs {cls.control}, change of {rows[0]["metric"]}'
                     + (f' over {len(seeds)} seeds, paired by seed (95% interval of the mean):'
                        if len(seeds) > 1 else
                        ', one seed (a difference that measures no noise; --seeds N gives '
                        'its interval):'))
        for m in (m for m in first[method] if m in first[cls.control]):
            a = [per_seed[s][method][m]['delta'] for s in seeds]
            b = [per_seed[s][cls.control][m]['delta'] for s in seeds]
            stat = paired_difference([x - y for x, y in zip(a, b)])
            records.append(dict(member=m, method=method, control=cls.control, seeds=seeds,
                                method_deltas=a, control_deltas=b, **stat))
            ra, rb = round(float(np.mean(a)), digits), round(float(np.mean(b)), digits)
            shown = f'  {m:<12} {method} {ra:+.{digits}f}   {cls.control} {rb:+.{digits}f}   ' \
                f'difference {printed_difference(a, b, digits):+.{digits}f}'
            if len(seeds) == 1:
                lines.append(shown)
            else:
                lines.append(f'{shown} [{stat["low"]:+.{digits}f}, {stat["high"]:+.{digits}f}]: '
                             f'{stat["verdict"]}')
    return lines, records
