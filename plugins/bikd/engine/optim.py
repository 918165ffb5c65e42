"""The suite's optimiser wrappers: whether a step updates the weights, and mixed precision on
GPU and on CPU.

``optim_wrapper.type: BiKDOptimWrapper`` and ``BiKDAmpOptimWrapper`` are mmengine's
``OptimWrapper`` and ``AmpOptimWrapper`` (same arguments) plus a **step policy**, and the
member-by-member step of lean mode (:meth:`StepPolicy.update_params_in_parts`). A training
step whose loss is NaN or infinite (any member's task loss or the distillation term) updates
no weight:

- ``nonfinite_policy: skip`` (default): the step is dropped and counted, and a warning names the
  loss terms at fault and the iteration; after ``max_nonfinite_in_a_row`` (5) dropped steps in a
  row, training stops with ``FloatingPointError`` (the run has diverged).
- ``nonfinite_policy: raise``: training stops at the first such step.

In a distributed run every process takes the same decision (the finiteness is reduced over
the processes), so all drop a step together. The counts travel in the checkpoints (the run
state, :mod:`bikd.engine.run_state`). Config::

    optim_wrapper:
      type: BiKDOptimWrapper        # or BiKDAmpOptimWrapper
      nonfinite_policy: skip
      max_nonfinite_in_a_row: 5
      optimizer: {type: AdamW, lr: 1.0e-6, weight_decay: 1.0e-5}

Mixed precision: mmengine's ``AmpOptimWrapper`` refuses to start without a GPU (or NPU, MLU,
MUSA). ``BiKDAmpOptimWrapper`` is mmengine's unchanged on an accelerator (``dtype: float16``
with dynamic loss scaling, or ``bfloat16``); on CPU it runs the step under bf16 autocast, the
one precision CPU autocast supports, without loss scaling (bf16 has fp32's exponent range, so
gradients do not underflow). ``tools/train_net.py ... --amp bf16`` sets it. The distillation
term and the partition upcast the members' outputs to fp32 themselves
(:func:`bikd.losses.at_least_fp32`).
"""
import logging
from typing import Dict, Iterable, Optional, Union

import torch
import torch.distributed as dist
from mmengine.device import (is_cuda_available, is_mlu_available, is_musa_available,
                             is_npu_available)
from mmengine.logging import MessageHub, print_log
from mmengine.optim import AmpOptimWrapper as _MMEngineAmpOptimWrapper
from mmengine.optim import OptimWrapper as _MMEngineOptimWrapper

from .. import compat
from ..errors import UserError
from ..registry import OPTIM_WRAPPERS
from ..step import describe_term

AMP_DTYPES = {'fp16': 'float16', 'float16': 'float16', 'bf16': 'bfloat16',
              'bfloat16': 'bfloat16'}
NONFINITE_POLICIES = ('skip', 'raise')


def _accelerator() -> bool:
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


def _any_process(flag: bool, device) -> bool:
    """``flag`` or-ed over the processes of a distributed run."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([float(flag)], device=device if dist.get_backend() == 'nccl' else 'cpu')
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class StepPolicy:
    """The non-finite-loss policy of an mmengine optimiser wrapper (mixed in before it).

    Args:
        nonfinite_policy: ``'skip'`` or ``'raise'``, see the module's description.
        max_nonfinite_in_a_row: with ``'skip'``, the dropped steps in a row after which
            training stops.

    Attributes:
        skipped_steps: steps dropped so far in this run (restored on ``--resume``).
        last_step_skipped: whether the latest step was dropped.
    """

    def __init__(self, *args, nonfinite_policy: str = 'skip', max_nonfinite_in_a_row: int = 5,
                 **kwargs):
        self.set_policy(nonfinite_policy, max_nonfinite_in_a_row)
        super().__init__(*args, **kwargs)

    def set_policy(self, nonfinite_policy: str, max_nonfinite_in_a_row: int) -> None:
        if nonfinite_policy not in NONFINITE_POLICIES:
            raise UserError(f'nonfinite_policy must be one of {NONFINITE_POLICIES}, got '
                            f'{nonfinite_policy!r}')
        if int(max_nonfinite_in_a_row) < 1:
            raise UserError(f'max_nonfinite_in_a_row must be >= 1, got {max_nonfinite_in_a_row}')
        self.nonfinite_policy = nonfinite_policy
        self.max_nonfinite_in_a_row = int(max_nonfinite_in_a_row)
        self.skipped_steps = 0
        self.skipped_in_a_row = 0
        self.last_step_skipped = False

    def _step_allowed(self, loss: torch.Tensor, nonfinite: Optional[Dict[str, float]]) -> bool:
        """The policy's decision on a step whose loss is ``loss``: ``True`` to take it; else
        the step is dropped (or training stops) here. ``nonfinite``: the loss terms the
        model's step output found not finite (log key -> value), named in the messages."""
        bad = not bool(torch.isfinite(loss.detach()).all())
        if _any_process(bad, loss.device):
            self._drop_step(loss, nonfinite or {})
            return False
        self.skipped_in_a_row = 0
        self.last_step_skipped = False
        return True

    def update_params(self, loss: torch.Tensor, step_kwargs: Optional[Dict] = None,
                      zero_kwargs: Optional[Dict] = None,
                      nonfinite: Optional[Dict[str, float]] = None) -> None:
        """mmengine's ``update_params``, taken only where the policy allows; ``nonfinite``:
        the step output's non-finite terms (:meth:`bikd.step.StepOutput.nonfinite_terms`)."""
        if self._step_allowed(loss, nonfinite):
            super().update_params(loss, step_kwargs, zero_kwargs)

    def update_params_in_parts(self, total: torch.Tensor, parts: Iterable[torch.Tensor],
                               step_kwargs: Optional[Dict] = None,
                               zero_kwargs: Optional[Dict] = None,
                               nonfinite: Optional[Dict[str, float]] = None) -> None:
        """One step whose gradient is the sum of the gradients of ``parts``: the lean
        training step (:mod:`bikd.method.lean`), which computes the loss member by member.

        ``total`` is the step's loss value (no graph needed): the step policy decides on it
        before any part is computed. ``parts`` is iterated lazily: each loss is
        back-propagated before the next is drawn, so that the caller can free one part's
        activations before the next part's forward. As :meth:`update_params` for gradient
        accumulation and clipping (the parts make one step)."""
        if not self._step_allowed(total, nonfinite):
            return
        for loss in parts:
            self.backward_part(self.scale_loss(loss))
            del loss  # its graph (what backward did not free) before the next part's forward
        compat.count_optimizer_update(self)
        if self.should_update():
            self.step(**(step_kwargs or {}))
            self.zero_grad(**(zero_kwargs or {}))

    def backward_part(self, loss: torch.Tensor) -> None:
        """Back-propagate one part of a step's loss (no step counted)."""
        loss.backward()

    def _drop_step(self, loss: torch.Tensor, terms: Dict[str, float]) -> None:
        it = MessageHub.get_current_instance().get_info('iter', None)
        culprits = ', '.join(describe_term(k) for k in terms) or (
            'a loss on another process' if bool(torch.isfinite(loss.detach()).all())
            else 'the loss')
        where = f'at iteration {it + 1}' if it is not None else 'in this step'
        values = ', '.join(f'{k}={v:g}' for k, v in terms.items()) or \
            f'loss={float(loss.detach().float()):g}'
        if self.nonfinite_policy == 'raise':
            raise FloatingPointError(
                f'non-finite loss of {culprits} {where} ({values}); no weights were updated. '
                "optim_wrapper.nonfinite_policy='skip' drops such steps instead.")
        self.skipped_steps += 1
        self.skipped_in_a_row += 1
        self.last_step_skipped = True
        # The step counts towards gradient accumulation but contributes nothing, and the
        # gradients gathered so far for this update are dropped with it.
        compat.count_optimizer_update(self)
        self.zero_grad()
        if self.skipped_in_a_row >= self.max_nonfinite_in_a_row:
            raise FloatingPointError(
                f'non-finite loss of {culprits} {where} ({values}): {self.skipped_in_a_row} '
                'steps in a row were dropped, the run has diverged (max_nonfinite_in_a_row='
                f'{self.max_nonfinite_in_a_row}). Lower the learning rate or check the data.')
        print_log(f'non-finite loss of {culprits} {where} ({values}): step dropped, no weights '
                  f'updated ({self.skipped_in_a_row} in a row, {self.skipped_steps} in all)',
                  logger='current', level=logging.WARNING)


@OPTIM_WRAPPERS.register_module()
class BiKDOptimWrapper(StepPolicy, _MMEngineOptimWrapper):
    """mmengine's ``OptimWrapper`` with the step policy (:class:`StepPolicy`)."""


@OPTIM_WRAPPERS.register_module()
class BiKDAmpOptimWrapper(StepPolicy, _MMEngineAmpOptimWrapper):
    """mmengine's ``AmpOptimWrapper`` with the step policy, which also trains on CPU (bf16
    autocast).

    Args:
        loss_scale: as mmengine's (``'dynamic'``, a float or a ``GradScaler`` dict); unused
            on CPU.
        dtype: ``'float16'``/``'fp16'`` or ``'bfloat16'``/``'bf16'``; ``None`` is float16
            on an accelerator and bfloat16 on CPU.
        use_fsdp: as mmengine's.
    """

    def __init__(self, loss_scale: Union[str, float, dict] = 'dynamic',
                 dtype: Optional[Union[str, torch.dtype]] = None, use_fsdp: bool = False,
                 nonfinite_policy: str = 'skip', max_nonfinite_in_a_row: int = 5, **kwargs):
        if isinstance(dtype, str):
            if dtype not in AMP_DTYPES:
                raise UserError(f'optim_wrapper.dtype must be one of {sorted(AMP_DTYPES)}, '
                                f'got {dtype!r}')
            dtype = AMP_DTYPES[dtype]
        if _accelerator():
            super().__init__(loss_scale=loss_scale, dtype=dtype, use_fsdp=use_fsdp,
                             nonfinite_policy=nonfinite_policy,
                             max_nonfinite_in_a_row=max_nonfinite_in_a_row, **kwargs)
            return
        if dtype not in (None, 'bfloat16', torch.bfloat16):
            raise UserError(f'mixed precision on CPU supports bfloat16 only, got dtype={dtype}; '
                            'set optim_wrapper.dtype=bfloat16 (or train on a GPU for float16)')
        # mmengine's AMP wrapper refuses a CPU; set up as its base wrapper instead, then as a
        # disabled scaler: scale() returns the loss, step() steps, the state is empty.
        self.set_policy(nonfinite_policy, max_nonfinite_in_a_row)
        _MMEngineOptimWrapper.__init__(self, **kwargs)
        compat.amp_wrapper_without_accelerator(self, torch.bfloat16)

    def backward_part(self, loss: torch.Tensor) -> None:
        self.loss_scaler.scale(loss).backward()
