"""Hooks that turn an mmengine run into a Bi-KD experiment: the before/after evaluation, the
teacher share and ``summary.json``."""
import os.path as osp
from typing import Dict, Optional

import numpy as np
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ..fileio import atomic_path, save_json
from ..registry import HOOKS
from ..step import TEACHER_SHARE, logged
from ..summary import build_summary, flips, format_table
from .best import find_best_hook


def unwrap(model):
    return model.module if is_model_wrapper(model) else model


def primary_metric_of(runner) -> str:
    evaluator = getattr(runner, 'val_evaluator', None)
    for metric in getattr(evaluator, 'metrics', []):
        if getattr(metric, 'primary_metric', ''):
            return metric.primary_metric
    raise RuntimeError('the validation evaluator has no member-wise metric (a bikd '
                       'MemberwiseMetric such as ClassificationEvaluator)')


@HOOKS.register_module()
class BiKDSummaryHook(Hook):
    """Evaluates every member and the ensemble before training (iteration 0) and after it,
    accumulates the share of samples each member taught, and at the end writes
    ``<work_dir>/summary.json`` and logs the result table. Where the evaluator scores
    samples as right or wrong (classification), every model's per-sample outcome before and
    after goes to ``per_sample_{before,after}.npz`` and the flips against every initial member
    into the summary.

    Its state travels in the checkpoints, so a resumed run reports against the same "before".
    """
    priority = 'LOW'

    def __init__(self, filename: str = 'summary.json'):
        self.filename = filename
        self.before: Optional[Dict[str, float]] = None
        self.last: Optional[Dict[str, float]] = None
        self.last_iter = -1
        self.share_sum: Dict[str, float] = {}
        self.share_iters = 0
        self._resumed_state: Optional[dict] = None

    def before_train(self, runner) -> None:
        resumed = self._resumed_state if runner.iter > 0 else None
        self._resumed_state = None
        if resumed:
            # A resumed run reports against the evaluation of its first start.
            self.before = resumed['before']
            self.share_sum = dict(resumed['share_sum'])
            self.share_iters = int(resumed['share_iters'])
            return
        if runner.val_loop is None:
            runner.logger.warning('no val_dataloader/val_evaluator: no before/after table')
            return
        runner.logger.info('Evaluating every member and the ensemble before training')
        self.before = dict(runner.val_loop.run())
        self._save_outcomes(runner, 'before')

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.last = dict(metrics or {})
        self.last_iter = runner.iter

    @staticmethod
    def _outcomes(runner) -> Dict[str, np.ndarray]:
        for metric in getattr(runner.val_loop.evaluator, 'metrics', []):
            if getattr(metric, 'last_outcomes', None):
                return dict(metric.last_outcomes)
        return {}

    def _save_outcomes(self, runner, when: str) -> Dict[str, np.ndarray]:
        outcomes = self._outcomes(runner)
        if outcomes and is_main_process():
            path = osp.join(runner.work_dir, f'per_sample_{when}.npz')
            with atomic_path(path) as tmp, open(tmp, 'wb') as f:
                np.savez_compressed(f, **outcomes)
        return outcomes

    def _flips(self, runner, model) -> dict:
        after = self._save_outcomes(runner, 'after')
        path = osp.join(runner.work_dir, 'per_sample_before.npz')
        if not after or not osp.isfile(path):
            return {}
        with np.load(path) as data:
            before = {k: data[k] for k in data.files}
        return dict(flips=flips(before, after, model.member_names))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if getattr(runner.optim_wrapper, 'last_step_skipped', False):
            return  # a step dropped for a non-finite loss taught nobody
        shares = logged(outputs or {}, TEACHER_SHARE)
        if not shares:
            return
        for k, v in shares.items():
            self.share_sum[k] = self.share_sum.get(k, 0.0) + float(v)
        self.share_iters += 1

    def teacher_share(self) -> Dict[str, float]:
        return {k: v / self.share_iters for k, v in self.share_sum.items()} if self.share_iters else {}

    def after_train(self, runner) -> None:
        if self.before is None:
            return
        if self.last is None or self.last_iter != runner.iter:
            runner.val_loop.run()
        model = unwrap(runner.model)
        best = find_best_hook(runner)
        summary = build_summary(
            self.before, self.last, model.member_names, primary_metric_of(runner),
            method=type(model).__name__,
            extra=dict(iterations=runner.iter, epochs=runner.epoch,
                       teacher_share=self.teacher_share(),
                       partition_teaches=model.partition_teaches, work_dir=runner.work_dir,
                       skipped_steps=getattr(runner.optim_wrapper, 'skipped_steps', 0),
                       **self._flips(runner, model), **(best.summary() if best else {})))
        if is_main_process():
            save_json(summary, osp.join(runner.work_dir, self.filename))
            runner.logger.info('\n' + format_table(summary, f'Result of {summary["method"]}'))

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint.setdefault('meta', {})['bikd_summary'] = dict(
            before=self.before, share_sum=self.share_sum, share_iters=self.share_iters)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # Both `resume` and `load_from` come here; only a resumed run (iteration > 0 when
        # training starts) takes the stored state, see before_train.
        self._resumed_state = checkpoint.get('meta', {}).get('bikd_summary')
