"""Engine glue: configs, the train_net command, hooks and checkpoint loading on mmengine."""
from .checkpoint import allow_mmengine_checkpoints
from .config import load_config
from .hooks import BiKDSummaryHook

__all__ = ['allow_mmengine_checkpoints', 'load_config', 'BiKDSummaryHook']
