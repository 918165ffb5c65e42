"""Engine glue on mmengine: configs, the train_net command, hooks, optimiser wrappers and the
suite's explicit changes to mmengine (:func:`setup_engine`, called by the entry points)."""
from .best import BestMembersHook
from .config import load_config
from .hooks import BiKDSummaryHook
from .lean_ddp import LeanDistributedDataParallel
from .optim import AmpOptimWrapper, OptimWrapper
from .patches import allow_mmengine_checkpoints, setup_engine, use_atomic_local_writes
from .random_state import RandomStateHook

__all__ = ['AmpOptimWrapper', 'BestMembersHook', 'BiKDSummaryHook', 'LeanDistributedDataParallel',
           'OptimWrapper',
           'RandomStateHook', 'allow_mmengine_checkpoints', 'load_config', 'setup_engine',
           'use_atomic_local_writes']
