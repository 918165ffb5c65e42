"""Resumed runs that continue the random streams where they stopped.

:class:`RandomStateHook` restores the random generators' states (torch CPU and CUDA, numpy,
Python) that a checkpoint's run state holds when training continues from it, so that a
resumed run draws the same dropout masks and point samples as an uninterrupted one.
Evaluation runs on a forked random state and leaves training's stream untouched, so it does
not matter whether a run was evaluated before it was killed.

The data's augmentations are not drawn from these streams at all: every training sample draws
its own from a seed of its position in the run (:class:`bikd.data.SeededSamples`), in a loader
worker or, with its states put back, in this process. So an iteration-based loop that resumes
by drawing and discarding the batches it already trained on (mmengine's way) gets the same
batches, and an epoch-based one continues a stopped epoch without loading what it skips
(:mod:`bikd.engine.loops`).
"""
import random
from typing import Any, Optional

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.runner import EpochBasedTrainLoop

from ..registry import HOOKS


def get_random_state() -> dict:
    """Every generator's state, in types that ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = dict(torch=torch.get_rng_state(), python=random.getstate(),
                 numpy=(kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                        int(has_gauss), float(gauss)))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict) -> None:
    torch.set_rng_state(state['torch'])
    random.setstate(state['python'])
    kind, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if state.get('cuda') is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Random states restored on resume; evaluation on a forked state.

    The states saved with a checkpoint are the run state's
    (:class:`bikd.engine.run_state.RunState`); on resume they are put back at the last moment
    before training draws from them again: at the start of the resumed epoch (epoch-based
    loops, before the data loader is iterated) or of the resumed iteration (iteration-based
    loops). The suite's runner registers this hook in every run.
    """
    priority = 'VERY_HIGH'

    def __init__(self):
        self._pending: Optional[dict] = None
        self._saved_for_val: Optional[dict] = None

    def _restore(self) -> None:
        if self._pending is not None:
            set_random_state(self._pending)
            self._pending = None

    def before_train(self, runner) -> None:
        # a resumed run continues the saved streams (its run state's, taken back from the
        # checkpoint); a fresh one (load_from too) starts anew
        state = getattr(runner, 'run_state', None)
        self._pending = state.random if state is not None and runner.iter > 0 else None

    def before_train_epoch(self, runner) -> None:
        if isinstance(runner.train_loop, EpochBasedTrainLoop):
            self._restore()

    def before_train_iter(self, runner, batch_idx: int, data_batch: Any = None) -> None:
        self._restore()

    def before_val(self, runner) -> None:
        self._saved_for_val = get_random_state()

    def after_val(self, runner) -> None:
        if self._saved_for_val is not None:
            set_random_state(self._saved_for_val)
            self._saved_for_val = None
