"""The suite's mmengine Runner: mmengine's, with the checks that guard a run's correctness
registered whatever hooks a config lists, and a terminal spared mmengine's dumps.

Configs name it (``runner_type: BiKDRunner`` in ``configs/_base_/default_runtime.yaml``), so
that mmengine's own launch scripts (``RUNNERS.build(cfg)``) use it too; ``tools/train_net.py``
builds it with :func:`build_runner`.
"""
import logging
import os.path as osp

from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from ..registry import RUNNERS

#: hooks every run has, whatever its config lists: (type, priority)
GUARD_HOOKS = (('LabelSpaceCheckHook', 'VERY_HIGH'), ('RunFingerprintHook', 'VERY_LOW'))


class RunStopped(RuntimeError):
    """The run cannot go on for a reason outside the code (a file it must write cannot be
    written); the message says what and what to do. ``train_net`` prints it as one line."""


#: the config key that turns a failed save into a warning
KEEP_TRAINING_KEY = 'keep_training_on_save_error'


def save_failed(runner, message: str, error: Exception) -> None:
    """A save of the run failed (``message`` says which and what is intact): stop the run
    with :class:`RunStopped`, or with the config's ``keep_training_on_save_error: true`` log a
    warning and go on."""
    if runner.cfg.get(KEEP_TRAINING_KEY, False):
        runner.logger.warning(f'{message}; training goes on ({KEEP_TRAINING_KEY}=true)')
        return
    raise RunStopped(f'{message}. Free space (or make the work_dir writable), then continue '
                     f'with --resume auto; {KEEP_TRAINING_KEY}=true trains on without the '
                     'files that cannot be written') from error


def unwrap(model):
    """The model inside a DDP (or other mmengine) wrapper."""
    return model.module if is_model_wrapper(model) else model


def default_work_dir(config_file: str) -> str:
    """Where a config's run goes when it names no ``work_dir``: ``work_dirs/<config name>``."""
    return osp.join('work_dirs', osp.splitext(osp.basename(config_file))[0])


class _KeepDumpsInTheLogFile(logging.Filter):
    """Keeps mmengine's environment and config dumps (about 250 lines) off the terminal; the
    log file in the work_dir still has them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ('\nSystem environment:' in message[:100] or message.startswith('Config:\n'))


@RUNNERS.register_module()
class BiKDRunner(Runner):
    """mmengine's ``Runner`` (same arguments) with :data:`GUARD_HOOKS` always registered and
    the environment and config dumps kept in the log file."""

    def register_hooks(self, default_hooks=None, custom_hooks=None) -> None:
        super().register_hooks(default_hooks, custom_hooks)
        present = {type(h).__name__ for h in self.hooks}
        for kind, priority in GUARD_HOOKS:
            if kind not in present:
                self.register_hook(dict(type=kind), priority=priority)

    def build_logger(self, *args, **kwargs):
        logger = super().build_logger(*args, **kwargs)
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler:
                handler.addFilter(_KeepDumpsInTheLogFile())
        return logger


def build_runner(cfg) -> BiKDRunner:
    """The suite's runner from a config."""
    return BiKDRunner.from_cfg(cfg)
