"""Mixed precision as a config switch, on GPU and on CPU.

mmengine's ``AmpOptimWrapper`` refuses to start without a GPU (or NPU, MLU, MUSA). Under the
``bikd`` scope, ``optim_wrapper.type: AmpOptimWrapper`` builds this subclass instead: on an
accelerator it is mmengine's wrapper unchanged (``dtype: float16`` with dynamic loss scaling,
or ``bfloat16``); on CPU it runs the step under bf16 autocast, the one precision CPU autocast
supports, without loss scaling (bf16 has fp32's exponent range, so gradients do not underflow).
A config asks for it with::

    optim_wrapper:
      type: AmpOptimWrapper
      dtype: bfloat16        # or float16 (GPU only)
      optimizer: {type: AdamW, lr: 1.0e-6, weight_decay: 1.0e-5}

or ``tools/train_net.py ... --amp bf16``. The distillation term and the partition upcast the
members' outputs to fp32 themselves (:func:`bikd.losses.at_least_fp32`).
"""
from typing import Optional, Union

import torch
from mmengine.device import (is_cuda_available, is_mlu_available, is_musa_available,
                             is_npu_available)
from mmengine.optim import AmpOptimWrapper as _MMEngineAmpOptimWrapper
from mmengine.optim import OptimWrapper

from ..registry import OPTIM_WRAPPERS

AMP_DTYPES = {'fp16': 'float16', 'float16': 'float16', 'bf16': 'bfloat16',
              'bfloat16': 'bfloat16'}


def _accelerator() -> bool:
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


@OPTIM_WRAPPERS.register_module(name='AmpOptimWrapper')
class AmpOptimWrapper(_MMEngineAmpOptimWrapper):
    """mmengine's ``AmpOptimWrapper``, which also trains on CPU (bf16 autocast).

    Args:
        loss_scale: as mmengine's (``'dynamic'``, a float or a ``GradScaler`` dict); unused
            on CPU.
        dtype: ``'float16'``/``'fp16'`` or ``'bfloat16'``/``'bf16'``; ``None`` is float16
            on an accelerator and bfloat16 on CPU.
        use_fsdp: as mmengine's.
    """

    def __init__(self, loss_scale: Union[str, float, dict] = 'dynamic',
                 dtype: Optional[Union[str, torch.dtype]] = None, use_fsdp: bool = False,
                 **kwargs):
        if isinstance(dtype, str):
            if dtype not in AMP_DTYPES:
                raise ValueError(f'optim_wrapper.dtype must be one of {sorted(AMP_DTYPES)}, '
                                 f'got {dtype!r}')
            dtype = AMP_DTYPES[dtype]
        if _accelerator():
            super().__init__(loss_scale=loss_scale, dtype=dtype, use_fsdp=use_fsdp, **kwargs)
            return
        if dtype not in (None, 'bfloat16', torch.bfloat16):
            raise ValueError(f'mixed precision on CPU supports bfloat16 only, got dtype={dtype}; '
                             'set optim_wrapper.dtype=bfloat16 (or train on a GPU for float16)')
        OptimWrapper.__init__(self, **kwargs)
        self._scale_update_param = None
        # A disabled scaler: scale() returns the loss, step() steps, the state is empty.
        self.loss_scaler = torch.amp.GradScaler('cpu', enabled=False)
        self.cast_dtype = torch.bfloat16
