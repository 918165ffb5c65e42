"""An experiment on this machine: every run of a plan not done yet, one after another (each
through the one launcher, :class:`~bikd.experiments.jobs.TrainJob`, followed in a few lines),
then the report; several configs (members added one at a time) end with the K-way report.
"""
import json
import os
from typing import Dict, List, Optional, Sequence

from ..errors import ToolExit, UserError
from .jobs import TrainJob
from .plan import ConfigPlan, plan_config
from .report import kway, report_config


def run_locally(plan: ConfigPlan) -> None:
    """Every run of ``plan`` not done yet, one after another, each with ``--resume auto``: a
    run this was stopped before continues from its last checkpoint (to the weights it would
    have had), not from the start. A run that fails ends the experiment: an input error (exit
    status 2) as a :class:`~bikd.errors.UserError`, a stop on a signal or a bug as a
    :class:`~bikd.errors.ToolExit` with the run's exit status."""
    for method, why in plan.left_out.items():
        print(f'{method} left out: {why}', flush=True)
    for i, run in enumerate(plan.runs, start=1):
        where = f'[{plan.stem} {i}/{len(plan.runs)}] {run}'
        if plan.done(run):
            print(f'{where}: done before ({plan.summary(run)})', flush=True)
            continue
        job = TrainJob(plan.config_path(run), os.getcwd())
        code = job.run_here(os.path.join(plan.out, 'logs', f'{run}.log'),
                            f'\n{where}: tools/train_net.py --config-file {job.config} '
                            '--resume auto')
        if code == 2:  # train_net has said what in the input is wrong, in one line
            raise UserError(f'run {run} stopped on the error above; fix it and run this again '
                            '(the runs already done are reused)')
        if code > 128:  # stopped on a signal (Ctrl-C, SIGTERM) with a checkpoint
            raise ToolExit(f'run {run} stopped with a checkpoint (exit status {code}); the '
                           'same command again continues it, and reuses the runs already done',
                           code)
        if code:  # a bug: train_net has shown its traceback
            raise ToolExit(f'error: run {run} failed (exit status {code}; the traceback '
                           'above)', code)
        with open(plan.summary(run)) as f:
            summary = json.load(f)
        metric = summary['primary_metric']
        print('  ' + ', '.join(
            f'{m} {r["before"][metric]:.2f} -> {r["after"][metric]:.2f}'
            for m, r in summary['members'].items() if r.get('after')) + f' ({metric})',
            flush=True)


def run_config(config: str, methods: Optional[List[str]], out: str, opts: List[str],
               same_recipe: bool = False, seeds: Optional[List[int]] = None,
               metrics: Sequence[str] = (), quiet: bool = False) -> tuple:
    """Every run of ``methods`` on ``config`` (reusing finished ones), once per seed, and its
    report in ``out`` (:func:`~bikd.experiments.plan.plan_config`, :func:`run_locally`,
    :func:`~bikd.experiments.report.report_config`), which compares ``metrics`` with the
    control besides the primary one. Returns the report's (rows, member names, run order)."""
    plan = plan_config(config, methods, out, opts, same_recipe, seeds)
    plan.metrics = list(metrics)
    run_locally(plan)
    return report_config(plan, quiet=quiet)


def run_kway(configs: Dict[str, str], methods: Optional[List[str]], out: str,
             opts: List[str], same_recipe: bool = False, seeds: Optional[List[int]] = None,
             metrics: Sequence[str] = ()) -> str:
    """:func:`run_config` on each config (name -> path; the same members plus one more each
    time, Table 6), each in ``<out>/<name>``, then how each member's change moves as members
    are added (``kway.md``, ``.csv``, ``.png`` in ``out``); returns that report's text."""
    from .methods import select_methods
    results = {name: run_config(path, methods, os.path.join(out, name), opts, same_recipe,
                                seeds, metrics)
               for name, path in configs.items()}
    return kway(results, methods or list(select_methods()), out)
