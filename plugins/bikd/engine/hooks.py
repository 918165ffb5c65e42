"""Hooks that turn an mmengine run into a Bi-KD experiment: the label-space check, the
before/after evaluation, the teacher share and ``summary.json``, and checkpoints that a kill
or a full disk cannot leave half-written."""
import os
import os.path as osp
import re
from typing import Dict, Optional

import numpy as np
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook

from ..data import SkipBadSamples, unwrap_dataset
from ..errors import UserError
from ..fileio import atomic_path, remove_with_digest, save_json, save_text
from ..metrics import memberwise_metric
from ..registry import HOOKS
from ..step import TEACHER_SHARE, logged
from ..summary import build_summary, flips, format_table
from .best import find_best_hook
from .run_state import run_state_of
from .build import unwrap
from .stops import save_failed


def check_label_space(model, loaders: Dict[str, object]) -> None:
    """The members predict as many classes as every dataset has (``metainfo['classes']``),
    else a ``ValueError`` naming the dataset, before anything runs."""
    members = getattr(model, 'members', [])
    if not members:
        return
    predicted = members[0].num_classes
    for split, loader in loaders.items():
        dataset = getattr(loader, 'dataset', None)
        classes = (getattr(dataset, 'metainfo', None) or {}).get('classes')
        if classes is None or len(classes) == predicted:
            continue
        where = getattr(dataset, 'root', None) or getattr(dataset, 'data_root', '') or split
        raise UserError(
            f'the {split} data ({where}) has {len(classes)} classes, the members predict '
            f'{predicted} ({", ".join(m.name for m in members)}): a class folder too many or '
            'too few, or members built for another label space. Classes: '
            f'{list(classes)[:12]}{" ..." if len(classes) > 12 else ""}')


@HOOKS.register_module()
class LabelSpaceCheckHook(Hook):
    """Checks, before anything runs, that the members predict the label space of every
    dataset of the run (:func:`check_label_space`). The suite's runner registers it whatever
    hooks a config lists (:data:`bikd.engine.runner.GUARD_HOOKS`)."""
    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        loaders = {'training': runner.train_dataloader}
        if runner.val_loop is not None:
            loaders['validation'] = runner.val_loop.dataloader
        check_label_space(unwrap(runner.model), loaders)

    def before_val(self, runner) -> None:
        check_label_space(unwrap(runner.model), {'validation': runner.val_loop.dataloader})

    def before_test(self, runner) -> None:
        check_label_space(unwrap(runner.model), {'test': runner.test_loop.dataloader})


@HOOKS.register_module()
class BiKDSummaryHook(Hook):
    """Evaluates every member and the ensemble before training (iteration 0) and after it,
    accumulates the share of samples each member taught, and at the end writes
    ``<work_dir>/summary.json`` and logs the result table. Where the evaluator scores
    samples as right or wrong (classification), every model's per-sample outcome before and
    after goes to ``per_sample_{before,after}.npz`` and the flips against every initial member
    into the summary.

    What it accumulates lives in the run state (:class:`~bikd.engine.run_state.RunState`:
    the evaluation before training, every evaluation during it, the teacher shares), which
    travels in the checkpoints, so a resumed run reports against the same "before" and lists
    the same evaluations.
    """
    priority = 'LOW'

    def __init__(self, filename: str = 'summary.json'):
        self.filename = filename
        self._training = False  # evaluations of a training run are recorded, --eval-only's not

    def before_train(self, runner) -> None:
        self._training = True
        state = run_state_of(runner)
        if runner.iter > 0 and state.before is not None:
            return  # resumed: "before" is the evaluation of the first start
        if runner.val_loop is None:
            runner.logger.warning('no val_dataloader/val_evaluator: no before/after table')
            return
        runner.logger.info('Evaluating every member and the ensemble before training')
        state.before = dict(runner.val_loop.run())
        self._save_outcomes(runner, 'before')

    def after_val_epoch(self, runner, metrics=None) -> None:
        if self._training and runner.iter > 0:  # (iteration 0: "before")
            run_state_of(runner).add_evaluation(runner.iter, runner.epoch, dict(metrics or {}))

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
        if shares:
            run_state_of(runner).add_teacher_share(shares)

    def after_train(self, runner) -> None:
        state = run_state_of(runner)
        if state.before is None:
            return
        if state.evaluation_at(runner.iter) is None:
            runner.val_loop.run()
        model = unwrap(runner.model)
        best = find_best_hook(runner)
        metric = memberwise_metric(runner.val_evaluator)
        summary = build_summary(
            state.before, state.evaluation_at(runner.iter), model.member_names,
            metric.primary_metric,
            metric_step=metric.metric_step(len(runner.val_dataloader.dataset)),
            method=type(model).__name__,
            extra=dict(iterations=runner.iter, epochs=runner.epoch,
                       teacher_share=state.teacher_share(),
                       partition_teaches=model.partition_teaches, work_dir=runner.work_dir,
                       skipped_steps=getattr(runner.optim_wrapper, 'skipped_steps', 0),
                       **self._skipped_samples(runner),
                       **self._flips(runner, model), **(best.summary(runner) if best else {}),
                       evaluations=state.evaluations))
        if is_main_process():
            save_json(summary, osp.join(runner.work_dir, self.filename))
            runner.logger.info('\n' + format_table(summary, f'Result of {summary["method"]}'))

    @staticmethod
    def _skipped_samples(runner) -> dict:
        dataset = unwrap_dataset(runner.train_dataloader.dataset, SkipBadSamples)
        return dict(skipped_samples=dataset.skipped) if dataset is not None \
            else {}


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments) whose saves cannot leave a run without a
    complete checkpoint to resume from.

    It decides when to save as mmengine's does (``interval``, ``by_epoch``, ``save_begin``,
    ``save_last``) and saves through the runner (whose file backend writes atomically,
    :mod:`bikd.engine.patches`), then, on the main process:

    - replaces the ``last_checkpoint`` marker by an atomic write (mmengine rewrites it in
      place: a kill or a full disk at that moment left it empty);
    - removes the checkpoints beyond ``max_keep_ckpts`` after the save has succeeded (mmengine
      removes the oldest before it saves, so with ``max_keep_ckpts=1`` a failed save left
      none).

    A save that fails (a full disk, a read-only work_dir, a quota) leaves the previous
    checkpoint, the marker and ``best/`` as they were and stops the run with one line naming
    the file and the cause (:func:`~bikd.engine.runner.save_failed`; with the config's
    ``keep_training_on_save_error: true`` it warns and training goes on). Each member's best
    weights are :class:`~bikd.engine.best.BestMembersHook`'s: ``save_best`` is not taken.
    """

    def __init__(self, *args, max_keep_ckpts: int = -1, save_best=None, **kwargs):
        if save_best is not None:
            raise UserError('AtomicCheckpointHook keeps no best checkpoint of its own '
                            f'(save_best={save_best!r}): each member\'s best weights are '
                            'kept in <work_dir>/best/ by BestMembersHook')
        super().__init__(*args, max_keep_ckpts=-1, **kwargs)
        self.keep = int(max_keep_ckpts)

    def after_train_epoch(self, runner) -> None:
        if self.by_epoch and (self.every_n_epochs(runner, self.interval, self.save_begin) or
                              (self.save_last and self.is_last_train_epoch(runner))):
            step = runner.epoch + 1
            self.save(runner, step, dict(epoch=step, iter=runner.iter))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if not self.by_epoch and (
                self.every_n_train_iters(runner, self.interval, self.save_begin) or
                (self.save_last and self.is_last_train_iter(runner))):
            step = runner.iter + 1
            self.save(runner, step, dict(epoch=runner.epoch, iter=step))

    def save(self, runner, step: int, meta: dict, name: Optional[str] = None,
             by_epoch: Optional[bool] = None) -> Optional[str]:
        """Save the checkpoint of ``step`` (named by ``filename_tmpl``, or ``name``) and, once
        it is complete, point the marker at it and remove old ones; returns its path (``None``
        when a failed save was only warned about)."""
        stop = name is not None  # a stop's checkpoint: kept until a regular one supersedes it
        by_epoch = self.by_epoch if by_epoch is None else by_epoch
        name = name or self.filename_tmpl.format(step)
        path = osp.join(self.out_dir, name)
        runner.logger.info(f'Saving checkpoint at {step} '
                           f'{"epochs" if by_epoch else "iterations"}')
        try:
            runner.save_checkpoint(self.out_dir, name, self.file_client_args,
                                   save_optimizer=self.save_optimizer,
                                   save_param_scheduler=self.save_param_scheduler, meta=meta,
                                   by_epoch=by_epoch, backend_args=self.backend_args,
                                   **self.args)
            if is_main_process():
                save_text(path, osp.join(runner.work_dir, 'last_checkpoint'))
        except OSError as e:
            before = self.last_ckpt
            kept = (f'the last complete checkpoint {before} and the last_checkpoint marker are '
                    'as they were' if before else 'no checkpoint was saved before')
            save_failed(runner, f'checkpoint not saved at iteration {runner.iter}: {e}; {kept}',
                        e)
            return None
        self.last_ckpt = path
        runner.message_hub.update_info('last_ckpt', path)
        if is_main_process() and not stop:
            self._remove_old_checkpoints()
            self._remove_stop_checkpoints(int(meta['iter']))
        return path

    def _remove_stop_checkpoints(self, iteration: int) -> None:
        """Remove the checkpoints written on a stop (``iter_<I>.pth``) that this regular one
        supersedes (unless they are this hook's own naming)."""
        if self.filename_tmpl == STOP_CHECKPOINT:
            return
        for name in os.listdir(self.out_dir):
            m = re.fullmatch(re.escape(STOP_CHECKPOINT).replace(r'\{\}', r'(\d+)'), name)
            if m and int(m.group(1)) <= iteration:
                remove_with_digest(osp.join(self.out_dir, name))

    def _remove_old_checkpoints(self) -> None:
        """Keep the newest ``max_keep_ckpts`` checkpoints of this hook's naming."""
        if self.keep <= 0:
            return
        pattern = re.compile(re.escape(self.filename_tmpl).replace(r'\{\}', r'(\d+)') + '$')
        steps = sorted((int(m.group(1)), name) for name in os.listdir(self.out_dir)
                       for m in [pattern.match(name)] if m)
        for _, name in steps[:-self.keep]:
            remove_with_digest(osp.join(self.out_dir, name))


#: the name of a checkpoint written when a run stops on a signal
STOP_CHECKPOINT = 'iter_{}.pth'


def find_checkpoint_hook(runner) -> Optional[AtomicCheckpointHook]:
    return next((h for h in runner.hooks if isinstance(h, AtomicCheckpointHook)), None)


def save_stop_checkpoint(runner, hook: Optional[AtomicCheckpointHook]) -> Optional[str]:
    """The checkpoint of a run stopping after its current iteration (mid-epoch: the epoch in
    progress, the iterations done), ``iter_<I>.pth``, through the run's checkpoint hook (or
    the runner, for a config without one); the ``last_checkpoint`` marker names it. ``None``
    when the save failed and ``keep_training_on_save_error`` let it pass."""
    step = runner.iter + 1
    meta = dict(epoch=runner.epoch, iter=step)
    name = STOP_CHECKPOINT.format(step)
    if hook is not None:
        return hook.save(runner, step, meta, name=name, by_epoch=False)
    runner.save_checkpoint(runner.work_dir, name, meta=meta, by_epoch=False)
    path = osp.join(runner.work_dir, name)
    if is_main_process():
        save_text(path, osp.join(runner.work_dir, 'last_checkpoint'))
    return path
