"""Engine glue: configs, the train_net command, hooks and checkpoint loading on mmengine."""
from .checkpoint import allow_mmengine_checkpoints
from .config import load_config
from .hooks import BiKDSummaryHook

# Checkpoints written by any process that imports the engine must be loadable with
# weights_only=True, see checkpoint.py.
allow_mmengine_checkpoints()

__all__ = ['allow_mmengine_checkpoints', 'load_config', 'BiKDSummaryHook']
