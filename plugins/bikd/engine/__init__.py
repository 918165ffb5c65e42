"""Engine glue on mmengine: configs, the runner and the tools' command lines, hooks, optimiser
wrappers and the suite's explicit changes to mmengine (:func:`setup_engine`, called by the
entry points)."""
from .best import BestMembersHook
from .config import load_config
from .fingerprint import RunFingerprintHook
from .hooks import AtomicCheckpointHook, BiKDSummaryHook, LabelSpaceCheckHook
from .lean_ddp import LeanDistributedDataParallel
from .optim import BiKDAmpOptimWrapper, BiKDOptimWrapper
from .patches import allow_mmengine_checkpoints, setup_engine, use_atomic_local_writes
from .random_state import RandomStateHook
from .runner import BiKDRunner, build_runner

__all__ = ['AtomicCheckpointHook', 'BestMembersHook', 'BiKDAmpOptimWrapper', 'BiKDOptimWrapper',
           'BiKDRunner', 'BiKDSummaryHook', 'LabelSpaceCheckHook', 'LeanDistributedDataParallel',
           'RandomStateHook', 'RunFingerprintHook', 'allow_mmengine_checkpoints', 'build_runner', 'load_config',
           'setup_engine', 'use_atomic_local_writes']
