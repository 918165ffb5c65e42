"""Engine glue: configs, the train_net command, hooks and checkpoint loading on mmengine."""
from .checkpoint import allow_mmengine_checkpoints
from .config import load_config
from .hooks import BiKDSummaryHook
from .optim import AmpOptimWrapper
from .reliability import RandomStateHook, use_atomic_local_writes

# Checkpoints written by any process that imports the engine must be loadable with
# weights_only=True, see checkpoint.py.
allow_mmengine_checkpoints()
# Everything mmengine writes to local paths (checkpoints, markers) is written atomically.
use_atomic_local_writes()

__all__ = ['AmpOptimWrapper', 'BiKDSummaryHook', 'RandomStateHook', 'allow_mmengine_checkpoints',
           'load_config', 'use_atomic_local_writes']
