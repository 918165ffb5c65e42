"""The result of a run: per member before, after, delta and recovered % (paper Tables 2-3)."""
import math
from typing import Dict, List, Optional, Tuple

import numpy as np

from .metrics import recovered, split_metrics


#: a recovered % (Eq. 14) is left out when the ensemble's gap to the member is under this many
#: steps of the metric (samples, for accuracy): one sample more or less would move it by at
#: least 100 / RECOVERED_MIN_STEPS = 20 points
RECOVERED_MIN_STEPS = 5


def build_summary(before: Dict[str, float], after: Optional[Dict[str, float]],
                  members: List[str], primary_metric: str, method: str = '',
                  extra: Optional[dict] = None, metric_step: Optional[float] = None) -> dict:
    """Assemble ``summary.json``.

    Args:
        before, after: flat evaluator outputs (``<model>/<metric>``) at iteration 0 and at the
            end; ``after`` may be ``None`` (evaluation only).
        members: member names in order.
        primary_metric: the metric of the table (e.g. ``top1``).
        metric_step: the change of the primary metric one sample makes (``100 / N`` for
            accuracy), if it has one: a recovered % whose ensemble gap is under
            :data:`RECOVERED_MIN_STEPS` of them is left out (``recovered`` None), with
            ``recovered_withheld`` saying why.
    """
    b = split_metrics(before)
    a = split_metrics(after) if after is not None else {}
    ensemble_before = b.get('ensemble', {}).get(primary_metric, float('nan'))
    out = dict(method=method, primary_metric=primary_metric, members={},
               ensemble=dict(before=b.get('ensemble', {}), after=a.get('ensemble')))
    for name in members:
        mb, ma = b.get(name, {}), a.get(name)
        entry = dict(before=mb, after=ma)
        if ma is not None:
            entry['delta'] = {k: ma[k] - mb[k] for k in mb if k in ma}
            pb, pa = mb.get(primary_metric, float('nan')), ma.get(primary_metric, float('nan'))
            rec = recovered(pb, pa, ensemble_before)
            entry['recovered'] = None if math.isnan(rec) else rec  # JSON has no NaN
            gap = ensemble_before - pb
            if metric_step and entry['recovered'] is not None and \
                    abs(gap) < RECOVERED_MIN_STEPS * metric_step:
                entry['recovered'] = None
                entry['recovered_withheld'] = (
                    f'the ensemble is {gap:+.2f} from it: {abs(gap) / metric_step:.0f} '
                    f'sample(s), under {RECOVERED_MIN_STEPS}, so one sample would move the '
                    f'share by {100 * metric_step / max(abs(gap), metric_step):.0f} points')
        out['members'][name] = entry
    if extra:
        out.update(extra)
    return out


def build_evaluation(metrics: Dict[str, float], members: List[str], primary_metric: str,
                     evaluated: str, method: str = '', checkpoint: Optional[str] = None,
                     iteration: Optional[int] = None) -> dict:
    """``eval.json`` of ``train_net --eval-only``: every member's and the ensemble's metrics,
    and what was evaluated (``evaluated``: the initial members, or a checkpoint at an
    iteration)."""
    by_model = split_metrics(metrics)
    return dict(method=method, primary_metric=primary_metric, evaluated=evaluated,
                checkpoint=checkpoint, iteration=iteration,
                members={name: by_model.get(name, {}) for name in members},
                ensemble=by_model.get('ensemble', {}))


def format_evaluation(evaluation: dict) -> str:
    """Plain-text table of an evaluation: one row per member, then their ensemble."""
    metric = evaluation['primary_metric']
    digits = metric_digits(m.get(metric, 0.0) for m in evaluation['members'].values())
    rows = [(name, _fmt(m.get(metric), digits)) for name, m in evaluation['members'].items()]
    if len(rows) > 1:
        rows.append(('ensemble (these members)', _fmt(evaluation['ensemble'].get(metric),
                                                      digits)))
    width = max(len(r[0]) for r in rows + [('model', '')])
    value_width = max(len(metric), *(len(r[1]) for r in rows))
    text = [f'Evaluation of {evaluation["evaluated"]}',
            f'{"model".ljust(width)}  {metric.rjust(value_width)}',
            f'{"-" * width}  {"-" * value_width}']
    text += [f'{n.ljust(width)}  {v.rjust(value_width)}' for n, v in rows]
    return '\n'.join(text)


def flips(before: Dict[str, np.ndarray], after: Dict[str, np.ndarray],
          members: List[str]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Positive and negative flips (Roth et al.) in percent of the samples, of every trained
    member against every initial member: ``out[m][j]['positive']`` is the share of samples
    initial member ``j`` got wrong and trained member ``m`` gets right, ``negative`` the
    reverse. ``out[m][m]`` compares a member with its own initial self."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for m in members:
        if m not in after:
            continue
        a = after[m].astype(bool)
        out[m] = {}
        for j in members:
            if j not in before or len(before[j]) != len(a):
                continue
            b = before[j].astype(bool)
            out[m][j] = dict(positive=100.0 * float((~b & a).mean()),
                             negative=100.0 * float((b & ~a).mean()))
    return out


def metric_digits(values) -> int:
    """Decimals to print a metric with: 3 for metrics in [0, 1] (CC, AUC), 2 for percentages."""
    values = [abs(v) for v in values]
    return 3 if values and max(values) <= 1.0 else 2


def markdown_table(head: List[str], body: List[List[str]], text_columns: int = 1) -> List[str]:
    """The lines of a Markdown table: the first ``text_columns`` columns left-aligned (names),
    the others right-aligned (numbers)."""
    align = ['---'] * text_columns + ['---:'] * (len(head) - text_columns)
    return ['| ' + ' | '.join(head) + ' |', '|' + '|'.join(align) + '|'] + \
        ['| ' + ' | '.join(line) + ' |' for line in body]


def _fmt(x, digits=2, sign=False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return '-'
    return f'{x:+.{digits}f}' if sign else f'{x:.{digits}f}'


def format_table(summary: dict, title: str = '') -> str:
    """Plain-text table of a summary: one row per member, then the ensemble, then what the
    table cannot show (:func:`_summary_notes`)."""
    metric = summary['primary_metric']
    digits = metric_digits(m['before'].get(metric, 0.0) for m in summary['members'].values())

    def fmt(x, sign=False):
        return _fmt(x, digits, sign)

    header, rows, note = _summary_rows(summary, metric, fmt)
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    text = [title] if title else []
    text.append('  '.join(h.ljust(w) if i == 0 else h.rjust(w)
                          for i, (h, w) in enumerate(zip(header, widths))))
    text.append('  '.join('-' * w for w in widths))
    for r in rows:
        text.append('  '.join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                              for i, (c, w) in enumerate(zip(r, widths))))
    if note:
        text.append(note)
    return '\n'.join(text + _summary_notes(summary, metric, fmt))


def _summary_rows(summary: dict, metric: str, fmt) -> Tuple[List[str], List[list],
                                                               Optional[str]]:
    """The table's header, a row per member and one for the ensemble, and the note that
    replaces the ensemble's row when it has no value of the table's metric."""
    has_after = any(m.get('after') is not None for m in summary['members'].values())
    best = {name: r.get(metric) for name, r in (summary.get('best') or {}).items()
            if r.get(metric)}
    header = ['model', f'{metric} before']
    if has_after:
        header += [f'{metric} after', 'delta', 'recovered %']
    if best:
        header += ['best (iteration)']
    rows = []
    for name, m in summary['members'].items():
        row = [name, fmt(m['before'].get(metric))]
        if has_after:
            after = (m.get('after') or {}).get(metric)
            row += [fmt(after), fmt(m.get('delta', {}).get(metric), sign=True),
                    _fmt(m.get('recovered'), 1)]
        if best:
            b = best.get(name)
            row += [f'{fmt(b["value"])} ({b["iteration"]})' if b else '-']
        rows.append(row)
    ens = summary['ensemble']
    note = None
    if len(summary['members']) > 1 and metric not in ens['before'] and ens['before']:
        # an ensemble without the table's metric (the mean distribution of panoptic members
        # has mIoU, no PQ): its own first metric, beside the members'
        other = next(iter(ens['before']))
        trained = (ens.get('after') or {}).get(other)
        note = (f'the ensemble (mean of the members\' distributions) has no {metric}; its '
                f'{other}: {fmt(ens["before"][other])} initial' +
                (f', {fmt(trained)} trained' if trained is not None else '') +
                '; the members\': ' + ', '.join(
                    f'{n} {fmt(m["before"].get(other))}' +
                    (f' -> {fmt(m["after"].get(other))}' if m.get('after') else '')
                    for n, m in summary['members'].items()))
    elif len(summary['members']) > 1:  # the "ensemble" of one member is that member
        row = ['ensemble (initial members)', fmt(ens['before'].get(metric))]
        if has_after:
            after = (ens.get('after') or {}).get(metric)
            row += [f'({fmt(after)} trained)', '', '']
        if best:
            row += ['']
        rows.append(row)
    return header, rows, note


def _summary_notes(summary: dict, metric: str, fmt) -> List[str]:
    """The lines under a summary's table: recovered % withheld and why, the teacher shares,
    the test split's numbers, the steps dropped."""
    text = []
    withheld = {n: m['recovered_withheld'] for n, m in summary['members'].items()
                if m.get('recovered_withheld')}
    if withheld:
        text.append('recovered % left out for ' + '; '.join(
            f'{n} ({why})' for n, why in withheld.items()))
    share = summary.get('teacher_share')
    if share:
        # the control computes the partition too, but nobody is taught by it
        label = ('share of samples taught' if summary.get('partition_teaches', True) else
                 'share of samples the partition picked (the control does not use it)')
        text.append(f'{label}: ' +
                    ', '.join(f'{k} {100 * v:.1f}%' for k, v in share.items()))
    test = summary.get('test')
    if test and test.get('best'):
        last, chosen = split_metrics(test['last']), split_metrics(test['best'])
        text.append(f'on the {test["split"]} split, last / best weights (chosen on the '
                    f'validation {test["selected_on"]}): ' + ', '.join(
                        f'{name} {fmt(last.get(name, {}).get(metric))} / '
                        f'{fmt(chosen.get(name, {}).get(metric))}'
                        for name in summary['members']))
    if summary.get('skipped_steps'):
        text.append(f'steps dropped for a non-finite loss: {summary["skipped_steps"]} of '
                    f'{summary.get("iterations", "?")} (see the log for members and iterations)')
    return text
