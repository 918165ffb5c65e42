"""Each member's best weights: members of one run peak at different times, and the paper
authors keep every model's best epoch.

At every evaluation during training, :class:`BestMembersHook` compares each
member's selection metrics (the evaluator's ``selection_metrics``: its primary metric, and for
saliency also the validation loss the authors select on) with that member's best so far, and
when one improves, writes the member's weights to ``<work_dir>/best/<member>.<metric>.pth``
(atomically) and the record of every best to ``<work_dir>/best/best.json``. The records travel in
the runner's checkpoints, so a resumed run continues from them (and adopts a best that was
written after the checkpoint it resumes from, by an evaluation it will not repeat).

Selecting on the split that then reports the result is optimistic. With a ``test_dataloader``
and ``test_evaluator`` in the config, the hook scores, after training, every member's last
weights and its best weights (selected on the validation split) on that other split; the
summary and the table report both.
"""
import copy
import math
import os.path as osp
from typing import Any, Dict, Optional

from mmengine.dist import is_main_process
from mmengine.hooks import Hook

from ..checkpoint import load_weights_file
from ..fileio import save_json, save_torch
from ..metrics import memberwise_metric
from ..registry import HOOKS
from .runner import save_failed, unwrap


def best_file(work_dir: str, member: str, metric: str) -> str:
    return osp.join(work_dir, 'best', f'{member}.{metric}.pth')


def read_best(work_dir: str) -> Dict[str, Dict[str, dict]]:
    """``best/best.json`` of a run: member -> metric -> ``{iteration, value, file}``."""
    import json
    path = osp.join(work_dir, 'best', 'best.json')
    if not osp.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def load_best_members(model, work_dir: str, metric: str) -> Dict[str, int]:
    """Load every member's best weights for ``metric`` into ``model`` (a meta-architecture);
    returns member -> the iteration they come from. An error names what is missing."""
    records = read_best(work_dir)
    iterations = {}
    for member in model.members:
        record = records.get(member.name, {}).get(metric)
        if record is None:
            known = sorted({m for r in records.values() for m in r})
            raise FileNotFoundError(f'no best weights of member {member.name!r} for {metric!r} in '
                                    f'{osp.join(work_dir, "best")} (metrics recorded there: '
                                    f'{known or "none"})')
        path = osp.join(work_dir, 'best', record['file'])
        member.load_state_dict(load_weights_file(path))
        iterations[member.name] = int(record['iteration'])
    return iterations


@HOOKS.register_module()
class BestMembersHook(Hook):
    """Keeps each member's best weights per selection metric (see the module's description).

    Args:
        folder: the sub-folder of the work dir the best weights go to.
    """
    priority = 'BELOW_NORMAL'  # after the evaluation's own hooks, before the summary's

    def __init__(self, folder: str = 'best'):
        self.folder = folder
        self.records: Dict[str, Dict[str, dict]] = {}
        self.test_results: Dict[str, Any] = {}
        self._resumed: Optional[dict] = None
        self._training = False  # evaluations of a training run count, --eval-only does not

    # ----------------------------------------------------------------------------- selection
    def after_val_epoch(self, runner, metrics=None) -> None:
        # the evaluation before training scores the initial weights ("before"), not a
        # checkpoint of the run: as the authors, the best is chosen among the trained ones
        if not metrics or not self._training or runner.iter == 0:
            return
        model = unwrap(runner.model)
        changed = False
        for name, higher in memberwise_metric(runner.val_evaluator).selection_metrics().items():
            for index, member in enumerate(model.members):
                value = metrics.get(f'{member.name}/{name}')
                if value is None or math.isnan(value):
                    continue
                old = self.records.get(member.name, {}).get(name)
                if old is not None and not (value > old['value'] if higher
                                            else value < old['value']):
                    continue
                record = dict(iteration=int(runner.iter), value=float(value),
                              file=osp.basename(best_file('', member.name, name)))
                self.records.setdefault(member.name, {})[name] = record
                changed = True
                if is_main_process():
                    state = {k: v.detach().cpu() for k, v in member.state_dict().items()}
                    try:
                        save_torch(state, best_file(runner.work_dir, member.name, name))
                    except OSError as e:  # the file it would replace is intact
                        if old is None:
                            del self.records[member.name][name]
                        else:
                            self.records[member.name][name] = old
                        save_failed(runner, f'best weights of {member.name} ({name}) not saved '
                                            f'at iteration {runner.iter}: {e}; best/ is as it '
                                            'was', e)
        if changed and is_main_process():
            try:
                save_json(self.records, osp.join(runner.work_dir, self.folder, 'best.json'))
            except OSError as e:
                save_failed(runner, f'best/best.json not updated at iteration {runner.iter}: '
                                    f'{e}; it lists the best weights saved before', e)

    # ----------------------------------------------------------------------------- resume
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint.setdefault('meta', {})['bikd_best'] = copy.deepcopy(self.records)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._resumed = checkpoint.get('meta', {}).get('bikd_best')

    def before_train(self, runner) -> None:
        self._training = True
        resumed, self._resumed = self._resumed, None
        if runner.iter == 0 or resumed is None:
            return
        self.records = copy.deepcopy(resumed)
        # an evaluation after the last checkpoint (at the iteration training resumes from) is
        # not repeated: take what it found from disk
        for member, metrics in read_best(runner.work_dir).items():
            for name, record in metrics.items():
                mine = self.records.get(member, {}).get(name)
                if record['iteration'] <= runner.iter and (
                        mine is None or record['iteration'] > mine['iteration']):
                    self.records.setdefault(member, {})[name] = record

    # ----------------------------------------------------------------------------- report
    def after_train(self, runner) -> None:
        """With a test split, score every member's last and best weights on it."""
        if not self.records or any(runner.cfg.get(k) is None for k in (
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

    def summary(self) -> Dict[str, Any]:
        """The records for ``summary.json``: member -> metric -> best iteration and value."""
        out: Dict[str, Any] = dict(best=copy.deepcopy(self.records))
        if self.test_results:
            out['test'] = self.test_results
        return out


def find_best_hook(runner) -> Optional[BestMembersHook]:
    return next((h for h in runner.hooks if isinstance(h, BestMembersHook)), None)


__all__ = ['BestMembersHook', 'best_file', 'find_best_hook', 'load_best_members', 'read_best']
