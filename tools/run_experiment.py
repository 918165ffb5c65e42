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

A grid (a paper table: configs x methods x seeds with the paper's numbers,
:mod:`bikd.experiments.grid`)::

    python tools/run_experiment.py --grid configs/tables/table2.yaml --launcher slurm \
        --partition P --gpus-per-node 8 --time 24:00:00 [--wait]
    python tools/run_experiment.py --grid FILE --status | --collect
    python tools/run_experiment.py --grid configs/tables/digits.yaml        # here

Each run is a job (:mod:`bikd.experiments.jobs`, through submitit) in its own work_dir with
``--resume auto``, requeueable on Slurm; submitting again submits only what is missing or
failed. The table (``work_dirs/grids/<grid>/table.md``, ``.csv``, ``.json``, ``.png``) has
each member's mean ± sd over seeds, each method against its control paired by seed, the
paper's number beside, and marks the cells not finished.
"""
import os
import sys
from typing import List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bikd.engine.cli import add_debug_flag, config_parser, run_tool  # noqa: E402
from bikd.errors import ToolExit  # noqa: E402
from bikd.experiments import (Launch, parse_seeds, run_config, run_grid,  # noqa: E402
                              run_kway)


def _names(text: str) -> List[str]:
    return [m.strip() for m in text.split(',') if m.strip()]


def grid_main(args) -> None:
    """``--grid``: plan, submit (or run here), follow, collect; ``--status``, ``--collect``.
    Runs that did not finish end it with exit status 1."""
    failed = run_grid(args.grid, args.output_dir, args.opts,
                      Launch(args.launcher, args.partition, args.account, args.nodes,
                             args.gpus_per_node, args.cpus_per_task, args.mem, args.time,
                             args.timeout_requeues),
                      args.same_recipe, args.wait, args.poll, args.status, args.collect)
    if failed:
        raise ToolExit(f'{failed} run(s) of the grid did not finish (failed, cancelled or timed '
                       'out: each with its cause above); fix what they say and submit the grid '
                       'again: only what is missing or unfinished is submitted', 1)


def experiment_main(args, stems: List[str]) -> None:
    """``--config-file``: every method (and seed) of one config, or of several (K-way)."""
    methods = _names(args.methods) or None
    seeds = parse_seeds(args.seeds, args.config_file[0], args.opts)
    default = stems[0] if len(stems) == 1 else f'kway_{stems[0]}'
    out = os.path.abspath(args.output_dir or os.path.join('work_dirs', 'experiments', default))
    if len(stems) == 1:
        run_config(args.config_file[0], methods, out, args.opts, args.same_recipe, seeds,
                   _names(args.metrics))
        return
    print('\n' + run_kway(dict(zip(stems, args.config_file)), methods, out, args.opts,
                          args.same_recipe, seeds, _names(args.metrics)))
    print(f'K-way report: {out}/kway.md, kway.csv, kway.png')


def make_parser():
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
    grid.add_argument('--timeout-requeues', type=int, default=3,
                      help='how many times a job stopped by its time limit is requeued before '
                           'it ends as "timed out" (submitit\'s limit; preemptions are not '
                           'counted); submitting the grid again continues it')
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
    return parser


def main(argv=None):
    parser = make_parser()
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


if __name__ == '__main__':
    sys.exit(main())
