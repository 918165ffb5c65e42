"""Hooks that turn an mmengine run into a Bi-KD experiment: the label-space check, the
before/after evaluation, the teacher share and ``summary.json``, and checkpoints that a kill
or a full disk cannot leave half-written."""
import os
import os.path as osp
import re
import shutil
import tempfile
from typing import Dict, Optional

import numpy as np
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook

from ..data import SkipBadSamples
from ..fileio import atomic_path, save_json, write_bytes
from ..metrics import memberwise_metric
from ..registry import HOOKS
from ..step import TEACHER_SHARE, logged
from ..summary import build_summary, flips, format_table
from .best import find_best_hook
from .runner import save_failed, unwrap


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
        raise ValueError(
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
            if isinstance(runner.train_dataloader.dataset, SkipBadSamples):
                runner.train_dataloader.dataset.skipped = resumed.get('skipped_samples', 0)
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
            self.before, self.last, model.member_names,
            memberwise_metric(runner.val_evaluator).primary_metric,
            method=type(model).__name__,
            extra=dict(iterations=runner.iter, epochs=runner.epoch,
                       teacher_share=self.teacher_share(),
                       partition_teaches=model.partition_teaches, work_dir=runner.work_dir,
                       skipped_steps=getattr(runner.optim_wrapper, 'skipped_steps', 0),
                       **self._skipped_samples(runner),
                       **self._flips(runner, model), **(best.summary() if best else {})))
        if is_main_process():
            save_json(summary, osp.join(runner.work_dir, self.filename))
            runner.logger.info('\n' + format_table(summary, f'Result of {summary["method"]}'))

    @staticmethod
    def _skipped_samples(runner) -> dict:
        dataset = runner.train_dataloader.dataset
        return dict(skipped_samples=dataset.skipped) if isinstance(dataset, SkipBadSamples) \
            else {}

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint.setdefault('meta', {})['bikd_summary'] = dict(
            before=self.before, share_sum=self.share_sum, share_iters=self.share_iters,
            **self._skipped_samples(runner))

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # Both `resume` and `load_from` come here; only a resumed run (iteration > 0 when
        # training starts) takes the stored state, see before_train.
        self._resumed_state = checkpoint.get('meta', {}).get('bikd_summary')


class _WorkDirElsewhere:
    """The runner, with its work_dir moved to a scratch folder made when first asked for
    (attribute reads go to the runner)."""

    def __init__(self, runner):
        self._runner, self.scratch = runner, None

    @property
    def work_dir(self) -> str:
        if self.scratch is None:  # made only when a save asks for it
            self.scratch = tempfile.mkdtemp(dir=self._runner.work_dir, prefix='.marker.')
        return self.scratch

    def __getattr__(self, name):
        return getattr(self._runner, name)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments) whose saves cannot leave a run without a
    complete checkpoint to resume from.

    - The ``last_checkpoint`` marker is replaced, not rewritten: mmengine writes it with a
      plain ``open`` into the runner's work_dir (a kill or a full disk at that moment left it
      empty); here the hook runs with the work_dir moved to a scratch folder and the marker it
      wrote there replaces the real one by a rename. (Checkpoints themselves are atomic through
      the suite's file backend, :mod:`bikd.engine.patches`.)
    - ``max_keep_ckpts`` removes old checkpoints after a save has succeeded; mmengine removes
      the oldest before it saves, so with ``max_keep_ckpts=1`` a failed save left none.
    - A save that fails (a full disk, a read-only work_dir, a quota) leaves the previous
      checkpoint, the marker and ``best/`` as they were and stops the run with one line naming
      the file and the cause (:func:`~bikd.engine.runner.save_failed`; with the config's
      ``keep_training_on_save_error: true`` it warns and training goes on).
    """

    def __init__(self, *args, max_keep_ckpts: int = -1, **kwargs):
        super().__init__(*args, max_keep_ckpts=-1, **kwargs)
        self.keep = int(max_keep_ckpts)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._save(runner, lambda moved: super(AtomicCheckpointHook, self).after_train_iter(
            moved, batch_idx, data_batch, outputs))

    def after_train_epoch(self, runner) -> None:
        self._save(runner, lambda moved: super(AtomicCheckpointHook, self).after_train_epoch(
            moved))

    def _save(self, runner, save) -> None:
        """``save(runner with its work_dir moved)``: mmengine's hook, which saves when a save
        is due; then the marker it wrote replaces the real one and old checkpoints go."""
        before = self.last_ckpt
        moved = _WorkDirElsewhere(runner)
        try:
            save(moved)
            written = osp.join(moved.scratch, 'last_checkpoint') if moved.scratch else ''
            if osp.isfile(written):  # the main process writes it
                with open(written, 'rb') as f:
                    write_bytes(f.read(), osp.join(runner.work_dir, 'last_checkpoint'))
        except OSError as e:
            self.last_ckpt = before  # mmengine names the file before it writes it
            runner.message_hub.update_info('last_ckpt', before)
            kept = (f'the last complete checkpoint {before} and the last_checkpoint marker are '
                    'as they were' if before else 'no checkpoint was saved before')
            save_failed(runner, f'checkpoint not saved at iteration {runner.iter}: {e}; {kept}',
                        e)
            return
        finally:
            if moved.scratch:
                shutil.rmtree(moved.scratch, ignore_errors=True)
        if self.last_ckpt != before and is_main_process():
            self._remove_old_checkpoints()

    def _remove_old_checkpoints(self) -> None:
        """Keep the newest ``max_keep_ckpts`` checkpoints of this hook's naming."""
        if self.keep <= 0:
            return
        pattern = re.compile(re.escape(self.filename_tmpl).replace(r'\{\}', r'(\d+)') + '$')
        steps = sorted((int(m.group(1)), name) for name in os.listdir(self.out_dir)
                       for m in [pattern.match(name)] if m)
        for _, name in steps[:-self.keep]:
            os.remove(osp.join(self.out_dir, name))
