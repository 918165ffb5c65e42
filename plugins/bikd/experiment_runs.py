"""What a method declares about the runs an experiment needs: the small leaf a
meta-architecture imports (it imports nothing of the suite but its errors).

A *method* is a registered meta-architecture that names itself (``method``), its control
(``control``) and the runs it needs (``experiment_runs``, returning :class:`ExperimentRun`);
:mod:`bikd.experiments` plans, runs and reports them, ``tools/benchmark.py`` times them. A new
method is one registered class.
"""
from dataclasses import dataclass
from typing import List, Tuple

from .errors import UserError


class MethodNotApplicable(UserError):
    """A method cannot run on the members of a config (e.g. KL+DP with three members)."""


@dataclass(frozen=True)
class ExperimentRun:
    """One training run a method needs in an experiment (:mod:`bikd.experiments`).

    Attributes:
        name: unique within an experiment: the method's name, or e.g. ``kd_from_resnet``.
        method: the method's name.
        model: the run's model config (``type``, ``members`` and the method's arguments).
        trains: the members that learn in the run; the others only teach.
        frozen_forwards: members whose forward the run also computes without gradient every
            step (KL+DP: its teacher and the initial copy of its student); the benchmark
            bounds a run's cost with them.
        label: the run in words (``KL+DP, student resnet``); default: its name.
    """
    name: str
    method: str
    model: dict
    trains: Tuple[str, ...]
    frozen_forwards: Tuple[str, ...] = ()
    label: str = ''

    def __post_init__(self):
        if not self.label:
            object.__setattr__(self, 'label', self.name)


def member_names(model: dict) -> List[str]:
    """The names of the members of a model config (each member config must name it)."""
    names = [m.get('name') if isinstance(m, dict) else m.name for m in model['members']]
    missing = [i for i, n in enumerate(names) if not n]
    if missing:
        raise UserError(f'model.members {missing} have no name; an experiment needs every '
                        'member named (name: ...)')
    return names
