"""Each member's best weights: members of one run peak at different times, and the paper
authors keep every model's best epoch.

At every evaluation during training, :class:`BestMembersHook` compares each member's
selection metrics (the evaluator's ``selection_metrics``: its primary metric, and for
saliency also the validation loss the authors select on) with that member's best so far, and
when one improves, exports the member into ``<work_dir>/best/`` in its native format, the same
files :func:`bikd.engine.export.export_members` writes (``<member>.<metric>.pth`` and its JSON for a
timm member, a ``save_pretrained`` folder for a Hugging Face one, a detectron2 checkpoint and
its config for the official Mask2Former, ...), so that a best file can be given as that
member's ``checkpoint:``. ``best/best.json`` lists every best (iteration, value, file). Every
file is written atomically. The records are part of the run state
(:class:`~bikd.engine.run_state.RunState`), so a resumed run continues from them; the
evaluation its checkpoint owed runs again and rewrites what it wrote, so ``best/`` ends as in a
run that was never interrupted.

Selecting on the split that then reports the result is optimistic. With a ``test_dataloader``
and ``test_evaluator`` in the config, the hook scores, after training, every member's last
weights and its best weights (selected on the validation split) on that other split; the
summary and the table report both.
"""
import copy
import json
import math
import os.path as osp
from typing import Any, Dict, Optional

from mmengine.dist import is_main_process
from mmengine.hooks import Hook

from ..fileio import save_json
from ..metrics import memberwise_metric
from ..registry import HOOKS
from .run_state import run_state_of
from .build import unwrap
from .stops import save_failed

#: the sub-folder of the work_dir that holds the best weights
BEST_FOLDER = 'best'


def best_stem(member: str, metric: str) -> str:
    """The name (without suffix) of a member's best export for ``metric``."""
    return f'{member}.{metric}'


def read_best(work_dir: str) -> Dict[str, Dict[str, dict]]:
    """``best/best.json`` of a run: member -> metric -> ``{iteration, value, file}``."""
    path = osp.join(work_dir, BEST_FOLDER, 'best.json')
    if not osp.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def load_best_members(model, work_dir: str, metric: str) -> Dict[str, int]:
    """Load every member's best weights for ``metric`` into ``model`` (a meta-architecture),
    each read as that member's ``checkpoint`` is; returns member -> the iteration they come
    from. An error names what is missing."""
    records = read_best(work_dir)
    iterations = {}
    for member in model.members:
        record = records.get(member.name, {}).get(metric)
        if record is None:
            known = sorted({m for r in records.values() for m in r})
            raise FileNotFoundError(f'no best weights of member {member.name!r} for {metric!r} in '
                                    f'{osp.join(work_dir, BEST_FOLDER)} (metrics recorded there: '
                                    f'{known or "none"})')
        member.load_export(osp.join(work_dir, BEST_FOLDER), best_stem(member.name, metric))
        iterations[member.name] = int(record['iteration'])
    return iterations


@HOOKS.register_module()
class BestMembersHook(Hook):
    """Keeps each member's best weights per selection metric (see the module's description)."""
    priority = 'BELOW_NORMAL'  # after the evaluation's own hooks, before the summary's

    def __init__(self):
        self.test_results: Dict[str, Any] = {}
        self._training = False  # evaluations of a training run count, --eval-only does not

    def before_train(self, runner) -> None:
        self._training = True

    # ----------------------------------------------------------------------------- selection
    def after_val_epoch(self, runner, metrics=None) -> None:
        # the evaluation before training scores the initial weights ("before"), not a
        # checkpoint of the run: as the authors, the best is chosen among the trained ones
        if not metrics or not self._training or runner.iter == 0:
            return
        records = run_state_of(runner).best
        model = unwrap(runner.model)
        folder = osp.join(runner.work_dir, BEST_FOLDER)
        changed = False
        for name, higher in memberwise_metric(runner.val_evaluator).selection_metrics().items():
            for member in model.members:
                value = metrics.get(f'{member.name}/{name}')
                if value is None or math.isnan(value):
                    continue
                old = records.get(member.name, {}).get(name)
                if old is not None and not (value > old['value'] if higher
                                            else value < old['value']):
                    continue
                file = best_stem(member.name, name)
                if is_main_process():
                    try:  # the member's export: its files replace the earlier best's whole
                        file = member.export(folder, file).get('checkpoint', file)
                    except OSError as e:  # the files it would replace are intact
                        save_failed(runner, f'best weights of {member.name} ({name}) not saved '
                                            f'at iteration {runner.iter}: {e}; best/ is as it '
                                            'was', e)
                        continue
                records.setdefault(member.name, {})[name] = dict(
                    iteration=int(runner.iter), value=float(value), file=file)
                changed = True
        if changed and is_main_process():
            try:
                save_json(records, osp.join(folder, 'best.json'))
            except OSError as e:
                save_failed(runner, f'best/best.json not updated at iteration {runner.iter}: '
                                    f'{e}; it lists the best weights saved before', e)

    # ----------------------------------------------------------------------------- report
    def after_train(self, runner) -> None:
        """With a test split, score every member's last and best weights on it."""
        if not run_state_of(runner).best or any(runner.cfg.get(k) is None for k in (
                'test_dataloader', 'test_evaluator', 'test_cfg')):
            return
        model = unwrap(runner.model)
        primary = memberwise_metric(runner.val_evaluator).primary_metric
        last = copy.deepcopy(model.state_dict())
        self.test_results = dict(split='test', last=dict(runner.test_loop.run()))
        try:
            iterations = load_best_members(model, runner.work_dir, primary)
            self.test_results.update(best=dict(runner.test_loop.run()),
                                     best_iterations=iterations, selected_on=primary)
        finally:
            model.load_state_dict(last)

    def summary(self, runner) -> Dict[str, Any]:
        """The records for ``summary.json``: member -> metric -> best iteration and value."""
        out: Dict[str, Any] = dict(best=copy.deepcopy(run_state_of(runner).best))
        if self.test_results:
            out['test'] = self.test_results
        return out


def find_best_hook(runner) -> Optional[BestMembersHook]:
    return next((h for h in runner.hooks if isinstance(h, BestMembersHook)), None)


__all__ = ['BestMembersHook', 'best_stem', 'find_best_hook', 'load_best_members', 'read_best']
