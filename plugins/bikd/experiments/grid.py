"""Grids: a paper table as one file of configs x methods x seeds, with the paper's numbers.

A grid file (YAML; ``configs/tables/table2.yaml`` and its siblings) names::

    title: "Table 2: change of ImageNet top-1 after transfer between two pretrained models"
    metric: top1             # optional: the configs' primary metric by default; a list gives
                             # one table per metric (paper numbers then per metric)
    paper_reports: delta     # what the paper's numbers are: the change (delta), or the
                             # score after training (after)
    methods: [bikd, kldp, independent]
    seeds: [0, 1, 2]
    overrides: []            # key=value overrides for every config (as on the command line)
    cells:                   # one per config: a pair, or a K-member set
      - config: configs/imagenet/dinov2_mae_bikd.yaml
        overrides: []        # this config's own
        paper: {bikd: {dinov2: 1.39, mae: 0.396}, kldp: {dinov2: 0.582, mae: 0.306}}
        # with several metrics: {bikd: {tmfinet: {cc: 0.558, nss: 3.216}}}

Config paths are read from the current directory, then from the grid file's folder and its
parents (a grid in ``configs/tables`` names ``configs/imagenet/...`` from the repository).
:func:`grid_table` turns the per-seed rows of every cell (:func:`bikd.experiments.stats.collect`)
into the collected table: each member's mean change (or score after) ± its standard
deviation over seeds, each method against its control paired by seed with its 95% interval
and verdict, and the paper's number beside; cells that are not finished are marked, not
dropped.
"""
import os
import textwrap
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import UserError
from ..fileio import save_figure
from ..summary import markdown_table, metric_digits
from .stats import paired_difference

GRID_KEYS = {'title', 'metric', 'paper_reports', 'methods', 'seeds', 'overrides', 'cells'}
CELL_KEYS = {'config', 'overrides', 'paper', 'name'}
PAPER_REPORTS = ('delta', 'after')


@dataclass
class GridCell:
    """One config of a grid: its path, overrides and the paper's numbers (method -> member
    -> number, or -> metric -> number)."""
    config: str
    name: str
    overrides: List[str] = field(default_factory=list)
    paper: Dict[str, Dict[str, object]] = field(default_factory=dict)

    def paper_number(self, method: str, member: str, metric: Optional[str]) -> Optional[float]:
        """The paper's number for a member under a method, in ``metric``."""
        value = self.paper.get(method, {}).get(member)
        if isinstance(value, dict):
            return value.get(metric)
        return value


@dataclass
class Grid:
    """A grid file, read (see the module's description)."""
    path: str
    name: str
    title: str
    methods: List[str]
    seeds: List[int]
    cells: List[GridCell]
    metrics: List[str] = field(default_factory=list)  # empty: the configs' primary metric
    paper_reports: str = 'delta'
    overrides: List[str] = field(default_factory=list)


def _find_config(path: str, grid_path: str) -> str:
    if os.path.isabs(path) or os.path.isfile(path):
        return os.path.abspath(path)
    folder = os.path.dirname(os.path.abspath(grid_path))
    while True:
        candidate = os.path.join(folder, path)
        if os.path.isfile(candidate):
            return candidate
        if os.path.dirname(folder) == folder:
            raise FileNotFoundError(f'grid {grid_path}: config {path} not found (read from '
                                    f'{os.getcwd()}, then from the grid\'s folder and its '
                                    'parents)')
        folder = os.path.dirname(folder)


def _strings(value, where: str) -> List[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and '=' in v for v in value):
        raise UserError(f'{where} must be a list of key=value overrides, got {value!r}')
    return list(value)


def load_grid(path: str) -> Grid:
    """Read and check a grid file; an error names the file and the key at fault."""
    import yaml
    if not os.path.isfile(path):
        raise FileNotFoundError(f'grid file not found: {path}')
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise UserError(f'cannot parse grid {path}: {e}') from e
    if not isinstance(data, dict):
        raise UserError(f'grid {path} must hold a mapping (title, methods, seeds, cells)')
    unknown = sorted(set(data) - GRID_KEYS)
    if unknown:
        raise UserError(f'grid {path}: unknown key(s) {unknown}; a grid has '
                        f'{sorted(GRID_KEYS)}')
    methods = data.get('methods')
    if not methods or not isinstance(methods, list) or \
            not all(isinstance(m, str) for m in methods):
        raise UserError(f'grid {path}: methods must name at least one method, e.g. '
                        '[bikd, independent]')
    seeds = data.get('seeds', [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise UserError(f'grid {path}: seeds must be a list of integers (or how many, from 0), '
                        f'got {seeds!r}')
    reports = data.get('paper_reports', 'delta')
    if reports not in PAPER_REPORTS:
        raise UserError(f'grid {path}: paper_reports must be one of {PAPER_REPORTS}, got '
                        f'{reports!r}')
    cells, names = [], set()
    for i, cell in enumerate(data.get('cells') or []):
        where = f'grid {path}: cells[{i}]'
        if not isinstance(cell, dict) or 'config' not in cell:
            raise UserError(f'{where} must be a mapping with config: PATH')
        unknown = sorted(set(cell) - CELL_KEYS)
        if unknown:
            raise UserError(f'{where}: unknown key(s) {unknown}; a cell has {sorted(CELL_KEYS)}')
        config = _find_config(cell['config'], path)
        name = cell.get('name') or os.path.splitext(os.path.basename(config))[0]
        if name in names:
            raise UserError(f'{where}: a second cell named {name!r}; give one a name: ...')
        names.add(name)
        paper = cell.get('paper') or {}

        def number(x):
            return isinstance(x, (int, float)) and not isinstance(x, bool)

        if not isinstance(paper, dict) or not all(
                isinstance(v, dict) and all(number(x) or (isinstance(x, dict) and all(
                    number(y) for y in x.values())) for x in v.values())
                for v in paper.values()):
            raise UserError(f'{where}: paper must map method -> member -> number (or -> '
                            f'metric -> number), got {paper!r}')
        unknown = sorted(set(paper) - set(methods))
        if unknown:
            raise UserError(f'{where}: paper numbers for method(s) {unknown} the grid does not '
                            f'run ({methods})')
        cells.append(GridCell(config, name, _strings(cell.get('overrides'), f'{where}.overrides'),
                              {m: {k: ({a: float(b) for a, b in v.items()} if isinstance(v, dict)
                                       else float(v)) for k, v in nums.items()}
                               for m, nums in paper.items()}))
    if not cells:
        raise UserError(f'grid {path} has no cells (configs)')
    metrics = data.get('metric') or []
    metrics = [metrics] if isinstance(metrics, str) else metrics
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise UserError(f'grid {path}: metric must be a metric\'s name or a list of them, got '
                        f'{metrics!r}')
    name = os.path.splitext(os.path.basename(path))[0]
    return Grid(os.path.abspath(path), name, str(data.get('title') or name), list(methods),
                list(seeds), cells, list(metrics), reports,
                _strings(data.get('overrides'), f'grid {path}: overrides'))


# ----------------------------------------------------------------------------- the table
def _value(row: dict, reports: str) -> float:
    return row['delta'] if reports == 'delta' else row['after']


def grid_table(grid: Grid, cells: Dict[str, dict], controls: Dict[str, str],
               metric: Optional[str] = None) -> tuple:
    """The collected table of a grid, for one metric.

    Args:
        grid: the grid.
        cells: cell name -> ``dict(rows=[per-seed rows of the runs done], members=[names],
            runs={method: {'done': n, 'planned': n}})``; rows as
            :func:`bikd.experiments.stats.collect` gives them (in ``metric``), with ``seed``.
        controls: method -> the method it is compared against.
        metric: the metric of the rows (default: the rows' own).

    Returns ``(markdown, records)``: the table as Markdown, and one record per (cell, member,
    method) with what it shows (for the CSV, the JSON and the plot).
    """
    rows_all = [r for c in cells.values() for r in c['rows']]
    digits = metric_digits(r['before'] for r in rows_all) if rows_all else 2
    what = 'change' if grid.paper_reports == 'delta' else 'score after training'
    metric = metric or next((r['metric'] for r in rows_all), 'the primary metric')
    compared = [m for m in grid.methods if controls.get(m) in grid.methods]
    head = ['config', 'member']
    for m in grid.methods:
        head += [f'{m}: {what} (mean ± sd, seeds)', 'paper']
    head += [f'{m} - {controls[m]} [95% interval]: verdict' for m in compared]
    lines = [f'# {grid.title}', '',
             f'{metric}: each member\'s {what} under each method, mean ± standard deviation '
             f'over the seeds done (of {len(grid.seeds)}); "paper": the paper\'s number where '
             'it has one; each method against its control paired by seed. A cell not finished '
             'says how many of its runs are done.', '']
    body, records = [], []
    for cell in grid.cells:
        info = cells.get(cell.name) or dict(rows=[], members=[], runs={})
        members = info['members'] or sorted({m for p in cell.paper.values() for m in p})
        for member in members:
            line = [cell.name, member]
            per_method = {}
            for method in grid.methods:
                mine = [r for r in info['rows'] if r['member'] == member and
                        r['method'] == method]
                by_seed = {r['seed']: _value(r, grid.paper_reports) for r in mine}
                per_method[method] = by_seed
                count = info['runs'].get(method, {})
                unfinished = count.get('done', 0) < count.get('planned', 0)
                paper = cell.paper_number(method, member, metric)
                if by_seed:
                    values = list(by_seed.values())
                    sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
                    text = f'{np.mean(values):+.{digits}f}' if grid.paper_reports == 'delta' \
                        else f'{np.mean(values):.{digits}f}'
                    text += (f' ± {sd:.{digits}f}' if sd is not None else '') + \
                        f' ({len(values)})'
                elif count.get('planned'):
                    text = 'frozen' if not unfinished and count.get('done') else ''
                else:
                    text = 'not applicable'
                if unfinished:
                    text = (text + ' ' if text else '') + \
                        f'[not finished: {count.get("done", 0)}/{count["planned"]} runs done]'
                line += [text, '' if paper is None else f'{paper:g}']
                mean = float(np.mean(list(by_seed.values()))) if by_seed else None
                records.append(dict(cell=cell.name, member=member, method=method,
                                    metric=metric, values=by_seed, mean=mean, paper=paper,
                                    finished=not unfinished))
            for method in compared:
                a, b = per_method.get(method, {}), per_method.get(controls[method], {})
                seeds = sorted(set(a) & set(b), key=lambda s: (s is None, s))
                if not seeds:
                    line.append('')
                    continue
                stat = paired_difference([a[s] - b[s] for s in seeds])
                text = f'{stat["mean"]:+.{digits}f}'
                if stat['low'] is not None:
                    text += f' [{stat["low"]:+.{digits}f}, {stat["high"]:+.{digits}f}]: ' \
                        f'{stat["verdict"]}'
                else:
                    text += ': one seed, no interval (one seed measures no noise)'
                line.append(text)
                records.append(dict(cell=cell.name, member=member, method=method,
                                    metric=metric, control=controls[method],
                                    difference=stat))
            body.append(line)
    return '\n'.join(lines + markdown_table(head, body, text_columns=2)) + '\n', records


def plot_grid(grid: Grid, records: Sequence[dict], path: str,
              runs: Optional[Dict[str, Dict[str, dict]]] = None) -> None:
    """Each member's mean per method (error bars: sd over seeds; pale: not finished), the
    paper's number as a black mark on its bar; the members of a cell side by side under the
    cell's name. A slot without a bar says why: not finished (runs done of planned, from
    ``runs``: cell -> method -> counts) or not applicable."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    shown = [r for r in records if 'values' in r]
    groups = list(dict.fromkeys((r['cell'], r['member']) for r in shown))
    fig, ax = plt.subplots(figsize=(max(7.0, 2 + 0.45 * len(groups) * len(grid.methods)), 4.6),
                           layout='constrained')
    width = 0.8 / len(grid.methods)
    labelled = set()
    for i, method in enumerate(grid.methods):
        for k, group in enumerate(groups):
            r = next((r for r in shown if (r['cell'], r['member']) == group and
                      r['method'] == method), None)
            if r is None:
                continue
            x, values = k + i * width, list(r['values'].values())
            if values:
                ax.bar(x, np.mean(values), width, color=f'C{i}', capsize=2,
                       yerr=np.std(values, ddof=1) if len(values) > 1 else None,
                       alpha=1.0 if r['finished'] else 0.4,
                       label=None if method in labelled else method)
                labelled.add(method)
            else:  # an empty slot says why
                count = ((runs or {}).get(r['cell']) or {}).get(method) or {}
                why = (f'not finished ({count.get("done", 0)}/{count["planned"]})'
                       if not r['finished'] and count.get('planned') else
                       'not finished' if not r['finished'] else 'not applicable')
                ax.text(x, 0, ' ' + why, rotation=90, ha='center', va='bottom', fontsize=7,
                        color=f'C{i}')
            if r['paper'] is not None:
                ax.plot([x - width / 2, x + width / 2], [r['paper']] * 2, color='black', lw=2,
                        label=None if 'paper' in labelled else "the paper's number")
                labelled.add('paper')
    ax.axhline(0, color='grey', lw=0.8)
    ax.set_xlim(-width, len(groups) - 0.2)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(groups))], [m for _, m in groups],
                  fontsize=8)
    cells = list(dict.fromkeys(c for c, _ in groups))
    for cell in cells:  # the cell's name under its members, a line between cells
        ks = [k for k, (c, _) in enumerate(groups) if c == cell]
        ax.annotate(cell, ((ks[0] + ks[-1]) / 2 + 0.4 - width / 2, 0), xytext=(0, -24),
                    xycoords=('data', 'axes fraction'), textcoords='offset points',
                    ha='center', va='top', fontsize=8, annotation_clip=False)
        if ks[0]:
            ax.axvline(ks[0] - 0.1 - width / 2, color='lightgrey', lw=0.8, ls='--')
    metric = next((r['metric'] for r in shown), '')
    ax.set_ylabel(f'change of {metric}' if grid.paper_reports == 'delta'
                  else f'{metric} after training')
    seeds = len(grid.seeds or [None])
    ax.set_title(textwrap.fill(f'{grid.title}: mean ± sd over {seeds} seed(s)', 90),
                 fontsize=9)
    if labelled:
        fig.legend(fontsize=8, loc='outside right upper', frameon=False)
    save_figure(fig, path)


__all__ = ['Grid', 'GridCell', 'grid_table', 'load_grid', 'plot_grid']
