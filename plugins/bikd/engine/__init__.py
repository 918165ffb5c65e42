"""Engine glue on mmengine: configs, the runner that owns a run and the tools' command lines,
hooks, the run state, optimiser wrappers and the suite's explicit changes to mmengine
(:func:`setup_engine`, called by :func:`build_model` and the runner)."""
from .best import BestMembersHook
from .build import build_model
from .config import load_config
from .hooks import AtomicCheckpointHook, BiKDSummaryHook, LabelSpaceCheckHook
from .loops import BiKDEpochBasedTrainLoop
from .lean_ddp import BiKDDistributedDataParallel
from .optim import BiKDAmpOptimWrapper, BiKDOptimWrapper
from .patches import allow_mmengine_checkpoints, setup_engine, use_atomic_local_writes
from .random_state import RandomStateHook
from .run_state import RunState, RunStateHook
from .runner import BiKDRunner, RunFinished
from .signals import RunInterrupted, SafeStopHook

__all__ = ['AtomicCheckpointHook', 'BestMembersHook', 'BiKDAmpOptimWrapper',
           'BiKDDistributedDataParallel', 'BiKDEpochBasedTrainLoop', 'BiKDOptimWrapper',
           'BiKDRunner', 'BiKDSummaryHook', 'LabelSpaceCheckHook', 'RandomStateHook',
           'RunFinished', 'RunInterrupted', 'RunState', 'RunStateHook', 'SafeStopHook',
           'allow_mmengine_checkpoints', 'build_model', 'load_config', 'setup_engine',
           'use_atomic_local_writes']
