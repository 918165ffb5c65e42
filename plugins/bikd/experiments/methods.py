"""The methods an experiment compares: every registered meta-architecture that declares
itself a method (:mod:`bikd.experiment_runs`), and the runs each needs on a config's members.
"""
from typing import Dict, Optional, Sequence, Tuple

from ..errors import UserError
from ..experiment_runs import ExperimentRun, MethodNotApplicable
from ..registry import META_ARCH


def registered_methods() -> Dict[str, type]:
    """Method name -> meta-architecture, for every registered class that is a method (the
    suite's and those a config's ``custom_imports`` registered), in registration order."""
    return {cls.method: cls for cls in META_ARCH.module_dict.values()
            if isinstance(cls, type) and getattr(cls, 'method', '') and
            callable(getattr(cls, 'experiment_runs', None))}


def select_methods(names: Optional[Sequence[str]] = None) -> Dict[str, type]:
    """The methods ``names`` (default: every registered one, controls last so that a table
    reads each method against a control that follows it), or a ``ValueError`` that lists the
    registered ones."""
    known = registered_methods()
    if names is None:
        names = [m for m, cls in known.items() if cls.control] + \
            [m for m, cls in known.items() if not cls.control]
    unknown = [m for m in names if m not in known]
    if unknown:
        raise UserError(f'unknown method(s) {unknown}; registered methods: {list(known)} (a '
                        'method of your own is registered by a module the config lists in '
                        'custom_imports)')
    return {m: known[m] for m in names}


def plan_runs(model: dict, methods: Dict[str, type]
              ) -> Tuple[Dict[str, ExperimentRun], Dict[str, str]]:
    """The runs each method declares for the members of ``model`` (run name ->
    :class:`ExperimentRun`), and the methods that cannot run on them (method -> why)."""
    runs, left_out = {}, {}
    for method, cls in methods.items():
        try:
            planned = cls.experiment_runs(model)
        except MethodNotApplicable as e:
            left_out[method] = str(e)
            continue
        for run in planned:
            if run.name in runs:
                raise ValueError(f'two methods plan a run named {run.name!r}')
            runs[run.name] = run
    return runs, left_out
