"""A grid on a cluster or on this machine: the one path from ``run_experiment --grid`` to a
finished table.

1. :func:`grid_plans`: each cell's plan (:func:`~bikd.experiments.plan.plan_config`: its
   methods x seeds, each run a config and a work_dir of its own).
2. :func:`submit_grid`: every run not done, queued or running (a failed one again) becomes a
   :class:`~bikd.experiments.jobs.TrainJob`, submitted to Slurm (requeueable) or run here one
   after another; :class:`~bikd.experiments.jobs.JobBook` records which job runs which run.
3. :func:`follow_grid` (``--wait``): the status (:func:`grid_status`) whenever it changes,
   until no run is pending or running.
4. :func:`collect_grid`: the table (:func:`~bikd.experiments.grid.grid_table`) of what is
   done, unfinished cells marked, and the report of each finished cell.

:func:`run_grid` is the four in a row, as the command line runs them.
"""
import json
import os
import shlex
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from ..errors import UserError
from ..fileio import save_csv, save_json, save_text
from .grid import Grid, grid_table, load_grid, plot_grid
from .jobs import JobBook, TrainJob, make_executor, parse_time, run_status, slurm_queue
from .methods import select_methods
from .plan import ConfigPlan, plan_config, reported_metrics, summaries_of
from .report import report_config
from .stats import collect


@dataclass
class Launch:
    """Where and how a grid's jobs run (the command line's launcher options)."""
    launcher: str = 'local'
    partition: Optional[str] = None
    account: Optional[str] = None
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: Optional[int] = None
    mem: Optional[str] = None
    time: str = '24:00:00'
    #: times a job stopped at its time limit is requeued (then it ends as 'timed out')
    timeout_requeues: int = 3


def grid_plans(grid: Grid, out: str, opts: List[str], same_recipe: bool,
               write: bool = True) -> Dict[str, ConfigPlan]:
    """Each cell's plan (its runs: methods x seeds), in ``<out>/<cell>`` (``write``: the
    runs' configs written, as a submission needs)."""
    return {cell.name: plan_config(cell.config, grid.methods, os.path.join(out, cell.name),
                                   [*grid.overrides, *cell.overrides, *opts], same_recipe,
                                   grid.seeds, write=write)
            for cell in grid.cells}


def grid_status(plans: Dict[str, ConfigPlan], book: JobBook,
                last: Optional[Dict[tuple, str]] = None) -> List[tuple]:
    """(cell, run, seed, state, detail) of every run of a grid, from one question to Slurm
    for all its jobs. A run Slurm did not answer for is ``unknown``, with the state ``last``
    (cell, run) -> state held for it at the previous look."""
    records = {(cell, run): book.get(f'{cell}/{run}') for cell, plan in plans.items()
               for run in plan.runs}
    queue = slurm_queue([r['job_id'] for r in records.values()
                         if r and r['launcher'] == 'slurm'])
    rows = []
    for (cell, run), record in records.items():
        state, detail = run_status(plans[cell].work(run), record, queue)
        if state == 'unknown' and (last or {}).get((cell, run)) not in (None, 'unknown'):
            detail += f'; last seen {last[cell, run]}'
        rows.append((cell, run, plans[cell].seed_of[run], state, detail))
    return rows


def print_status(rows: List[tuple]) -> None:
    counts: Dict[str, int] = {}
    width = max(len(f'{c} {r}') for c, r, *_ in rows)
    for cell, run, seed, state, detail in rows:
        counts[state] = counts.get(state, 0) + 1
        print(f'{cell + " " + run:<{width}}  {state:<13} {detail}', flush=True)
    print(', '.join(f'{n} {state}' for state, n in counts.items()), flush=True)


def check_paper(grid: Grid, plans: Dict[str, ConfigPlan]) -> None:
    """The paper's numbers of each cell name members its config has (and, where the grid
    lists its metrics, those metrics): a number for another member is a slip in the grid
    file, said before anything runs."""
    problems = []
    for cell in grid.cells:
        names = plans[cell.name].names
        for method, numbers in cell.paper.items():
            for member, value in numbers.items():
                if member not in names:
                    problems.append(f'{cell.name}: paper.{method}.{member}: the config has no '
                                    f'member {member!r} (its members: {", ".join(names)})')
                elif isinstance(value, dict) and grid.metrics:
                    problems += [f'{cell.name}: paper.{method}.{member}.{metric}: not a metric '
                                 f'of the grid ({", ".join(grid.metrics)})'
                                 for metric in value if metric not in grid.metrics]
    if problems:
        raise UserError(f'grid {grid.path}: ' + '\n  '.join(['paper numbers that match '
                                                             'nothing:'] + problems))


def check_inputs(grid: Grid, plans: Dict[str, ConfigPlan]) -> None:
    """Refuse to submit anything while a cell with runs to do names a path that is not there
    (its data folders, its members' weights): one line per path."""
    lines = [f'{cell}: {line}' for cell, plan in plans.items()
             if not all(plan.done(run) for run in plan.runs) for line in plan.missing]
    if lines:
        raise UserError(f'grid {grid.path}: nothing submitted, {len(lines)} path(s) the runs '
                        'read are not there (relative paths are from ' + os.getcwd() + '):\n  '
                        + '\n  '.join(lines))


#: the states of a run that submitting the grid (again) submits
AGAIN = ('not submitted', 'failed', 'cancelled', 'timed out')


def submit_grid(grid: Grid, plans: Dict[str, ConfigPlan], book: JobBook,
                launch: 'Launch', out: str) -> List[tuple]:
    """Submit every run that is not done, queued or running (a failed, cancelled or timed-out
    one again: it continues from its last checkpoint); with the
    local launcher, run them here one after another. Returns the jobs submitted."""
    executor = make_executor(launch.launcher, os.path.join(out, 'logs', '%j'),
                             launch.partition, launch.nodes, launch.gpus_per_node,
                             launch.cpus_per_task, parse_time(launch.time), launch.mem,
                             launch.account, launch.timeout_requeues)
    submitted = []
    for cell, run, _, state, _ in grid_status(plans, book):
        if state not in AGAIN:
            continue
        plan = plans[cell]
        if launch.launcher == 'slurm':
            executor.update_parameters(job_name=f'bikd-{grid.name}-{cell}-{run}')
        job = executor.submit(TrainJob(plan.config_path(run), os.getcwd(), launch.nodes,
                                       launch.gpus_per_node))
        book.record(f'{cell}/{run}', launch.launcher, job.job_id,
                    os.path.join(out, 'logs', '%j'))
        how = 'submitted' if state == 'not submitted' else f'{state} before, submitted again'
        print(f'{cell} {run}: {how} as {launch.launcher} job {job.job_id}', flush=True)
        submitted.append((cell, run, job))
        if launch.launcher == 'local':  # one at a time: this machine's cores
            try:
                job.result()
            except Exception:  # noqa: BLE001 - its cause is in its log, said here
                _, detail = run_status(plan.work(run), book.get(f'{cell}/{run}'))
                print(f'{cell} {run}: failed: {detail}', flush=True)
    return submitted


def follow_grid(plans: Dict[str, ConfigPlan], book: JobBook, interval: float) -> List[tuple]:
    """Print the status whenever it changes, until no run is pending, running or unknown
    (Slurm did not answer: asked again)."""
    printed, known = None, {}
    while True:
        rows = grid_status(plans, book, known)
        states = {(c, r): s for c, r, _, s, _ in rows}
        if states != printed:
            print(time.strftime('%H:%M:%S'), flush=True)
            print_status(rows)
            printed = states
        known.update({k: s for k, s in states.items() if s != 'unknown'})
        if not any(s in ('pending', 'running', 'unknown') for _, _, _, s, _ in rows):
            return rows
        time.sleep(interval)


def collect_grid(grid: Grid, plans: Dict[str, ConfigPlan], out: str) -> str:
    """The grid's table (``table.md``, ``.csv``, ``.json``, ``table.png``; one set per metric
    when the grid names several), and each finished cell's own report."""
    controls = {m: cls.control for m, cls in select_methods(grid.methods).items()}
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
        save_csv([dict(r, values=json.dumps(r.get('values')),
                       difference=json.dumps(r.get('difference'))) for r in records],
                 os.path.join(out, f'table{suffix}.csv'))
        plot_grid(grid, records, os.path.join(out, f'table{suffix}.png'),
                  {cell: info['runs'] for cell, info in cells.items()})
        texts.append(text)
        everything += records
    save_json(dict(grid=grid.path, title=grid.title, records=everything),
              os.path.join(out, 'table.json'))
    return '\n'.join(texts)


def follow_up(path: str, out: str, opts: List[str], same_recipe: bool) -> str:
    """The command that looks at this grid again: its file, its output folder and every
    override and option it was given (a flag is added to it)."""
    parts = ['python', 'tools/run_experiment.py', '--grid', path, '--output-dir', out]
    parts += ['--same-recipe'] * bool(same_recipe) + list(opts)
    return ' '.join(shlex.quote(str(p)) for p in parts)


def run_grid(path: str, out: Optional[str] = None, opts: Optional[List[str]] = None,
             launch: Optional[Launch] = None, same_recipe: bool = False, wait: bool = False,
             poll: float = 30.0, status: bool = False, collect_only: bool = False) -> int:
    """A grid file from plan to table (the steps of the module's description): ``status``
    prints each run's state, ``collect_only`` writes the table of what is done; otherwise the
    runs not done are submitted (``launch``), followed where they run here or with ``wait``,
    and collected. Returns how many runs ended unfinished: failed, cancelled or timed out (the
    command line then ends with exit status 1 and a line that says so)."""
    launch = launch or Launch()
    grid = load_grid(path)
    out = os.path.abspath(out or os.path.join('work_dirs', 'grids', grid.name))
    plans = grid_plans(grid, out, list(opts or []), same_recipe,
                       write=not (status or collect_only))
    check_paper(grid, plans)
    book = JobBook(os.path.join(out, 'jobs.json'))
    n = sum(len(p.runs) for p in plans.values())
    print(f'{grid.title}: {len(plans)} config(s) x {len(grid.methods)} method(s) x '
          f'{len(grid.seeds)} seed(s): {n} runs in {out}', flush=True)
    if status:
        print_status(grid_status(plans, book))
        return 0
    failed = []
    if not collect_only:
        check_inputs(grid, plans)
        submitted = submit_grid(grid, plans, book, launch, out)
        if launch.launcher == 'slurm' and not wait:
            again = follow_up(path, out, list(opts or []), same_recipe)
            print(('submitted' if submitted else 'nothing to submit: every run is done, '
                   'queued or running') + f'; follow with\n  {again} --status\ncollect with\n'
                  f'  {again} --collect\nor wait and collect with --wait', flush=True)
            return 0
        failed = [r for r in follow_grid(plans, book, poll) if r[3] in AGAIN]
    text = collect_grid(grid, plans, out)
    print('\n' + text)
    print(f'table: {out}/table.md, table.csv, table.json, table.png')
    return len(failed)
