"""An experiment's plan: every run each method needs on a config's members, once per seed,
each written as a config of its own (``<out>/configs/<run>.py``) with its own work_dir
(``<out>/runs/<run>``); a run whose config changed is moved aside before it runs again.
"""
import copy
import json
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ..errors import UserError
from ..experiment_runs import member_names
from ..fileio import save_text
from .inputs import missing_inputs
from .methods import plan_runs, select_methods


@dataclass
class ConfigPlan:
    """The runs of one config in an experiment: each planned run once per seed, its config
    written to ``<out>/configs/<run>.py`` and its work_dir ``<out>/runs/<run>``."""
    config: str
    stem: str
    out: str
    classes: Dict[str, type]
    planned: Dict[str, object]  # base run name -> bikd.experiment_runs.ExperimentRun
    names: List[str]
    seeds: Optional[List[int]]
    runs: Dict[str, object] = field(default_factory=dict)
    seed_of: Dict[str, Optional[int]] = field(default_factory=dict)
    base_of: Dict[str, str] = field(default_factory=dict)
    recipe_of: Dict[str, str] = field(default_factory=dict)
    left_out: Dict[str, str] = field(default_factory=dict)
    #: metrics compared with the control besides the primary one (--metrics)
    metrics: List[str] = field(default_factory=list)
    #: the paths the runs read that are not there (:func:`~bikd.experiments.inputs.missing_inputs`)
    missing: List[str] = field(default_factory=list)

    def work(self, run: str) -> str:
        return os.path.join(self.out, 'runs', run)

    def config_path(self, run: str) -> str:
        return os.path.join(self.out, 'configs', f'{run}.py')

    def summary(self, run: str) -> str:
        return os.path.join(self.work(run), 'summary.json')

    def done(self, run: str) -> bool:
        return os.path.isfile(self.summary(run))


def plan_config(config: str, methods: Optional[List[str]], out: str, opts: List[str],
                same_recipe: bool = False, seeds: Optional[List[int]] = None,
                write: bool = True) -> ConfigPlan:
    """Every run of ``methods`` (default: every registered method) on ``config``, once per
    seed of ``seeds`` (default: the config's), each written as a config of its own. A run's
    work_dir that another config ran in is moved aside. A method's runs take the config's
    ``method_recipes.<method>`` (its own optimiser or schedule), unless ``same_recipe``.
    ``write=False`` plans without touching the disk (a grid's ``--status`` and ``--collect``:
    no config written, no work_dir moved)."""
    from ..engine import load_config
    stem = os.path.splitext(os.path.basename(config))[0]
    cfg = load_config(config, opts)  # imports custom_imports: methods of the user's own
    classes = select_methods(methods)
    planned_runs, left_out = plan_runs(cfg.model.to_dict(), classes)
    plan = ConfigPlan(os.path.abspath(config), stem, out, classes, planned_runs,
                      member_names(cfg.model), seeds, left_out=left_out,
                      missing=missing_inputs(cfg))
    recipes = {} if same_recipe else (cfg.get('method_recipes') or {})
    # one run per (planned run, seed); with several seeds the names carry the seed
    for seed in seeds or [None]:
        for base, planned in planned_runs.items():
            name = base if seeds is None or len(seeds) == 1 else f'{base}.seed{seed}'
            plan.runs[name], plan.seed_of[name], plan.base_of[name] = planned, seed, base
    for run, planned in plan.runs.items():
        recipe = recipes.get(planned.method)
        plan.recipe_of[planned.method] = 'its own (method_recipes.' + planned.method + ')' \
            if recipe else 'the config\'s'
        if not write:
            continue
        run_cfg = cfg.copy()
        run_cfg.pop('method_recipes', None)  # the experiment's business, not the run's
        if recipe:
            run_cfg.merge_from_dict(copy.deepcopy(recipe.to_dict()))
        if plan.seed_of[run] is not None:  # data order, augmentation, dropout; same members
            run_cfg.merge_from_dict({'randomness.seed': plan.seed_of[run]})
        run_cfg.model = planned.model
        run_cfg.work_dir = plan.work(run)
        path, text = plan.config_path(run), run_cfg.pretty_text
        if os.path.isfile(path) and open(path).read() == text:
            continue
        if os.path.isdir(plan.work(run)):  # another config ran here: keep it aside
            stale = f'{plan.work(run)}.stale-{time.strftime("%Y%m%d_%H%M%S")}'
            os.replace(plan.work(run), stale)
            print(f'{run}: the config changed; the earlier run moved to {stale}')
        save_text(text, path)
    return plan


def parse_seeds(text: str, config: str, opts: List[str]) -> Optional[List[int]]:
    """``--seeds``: '' (the config's seed), a number N (the config's and the N - 1 after it)
    or a comma-separated list."""
    if not text:
        return None
    try:
        numbers = [int(s) for s in text.split(',') if s.strip()]
    except ValueError:
        raise UserError(f'--seeds {text!r}: give a number of seeds (3) or a comma-separated '
                        'list of seeds (0,1,2)') from None
    if ',' in text:
        return numbers
    from ..engine import load_config
    base = int(load_config(config, opts, import_modules=False).get('randomness', {}).get(
        'seed', 0))
    return list(range(base, base + numbers[0]))


def summaries_of(plan: ConfigPlan) -> Dict[str, dict]:
    """The summaries of the runs of ``plan`` that are done."""
    out = {}
    for run in plan.runs:
        if plan.done(run):
            with open(plan.summary(run)) as f:
                out[run] = json.load(f)
    return out


def reported_metrics(plan: ConfigPlan, summaries: Dict[str, dict]) -> List[str]:
    """The metrics the finished runs of ``plan`` report (their first member's), sorted."""
    return sorted({m for s in summaries.values() for m in s['members'][plan.names[0]]['before']})
