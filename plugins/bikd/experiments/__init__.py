"""Experiments: the runs each method needs on a config's members, run here or as jobs on a
cluster, and what their results say. Everything ``tools/run_experiment.py`` does, as
functions (the tool parses arguments and prints):

- :mod:`.methods`: the registered methods and the runs each declares.
- :mod:`.plan`: a config's plan, each run a config and a work_dir of its own, per seed.
- :mod:`.jobs`: :class:`~.jobs.TrainJob`, the one launcher of a run (a Slurm or local
  submitit job, or followed in this terminal), the job book and each run's state.
- :mod:`.follow`: a run's output in a file, its progress in a few lines.
- :mod:`.run`: an experiment here (:func:`~.run.run_config`, :func:`~.run.run_kway`).
- :mod:`.stats`: rows per member, run and seed; means over seeds; paired intervals.
- :mod:`.report`: ``report.md`` / ``.csv`` / ``.json`` and the plots; ``kway.md``.
- :mod:`.grid`: a grid file (a paper table) and its collected table.
- :mod:`.run_grid`: a grid from plan to table (:func:`~.run_grid.run_grid`).
- :mod:`.partners`: ranking candidate members by complementarity (``find_partners``).
- :mod:`.benchmark`: the cost of a method measured side by side (``benchmark``).
"""
from .methods import plan_runs, registered_methods, select_methods
from .plan import ConfigPlan, parse_seeds, plan_config
from .run import run_config, run_kway, run_locally
from .run_grid import Launch, run_grid

__all__ = ['ConfigPlan', 'Launch', 'parse_seeds', 'plan_config', 'plan_runs',
           'registered_methods', 'run_config', 'run_grid', 'run_kway', 'run_locally',
           'select_methods']
