"""Building a model of the suite: the one way every entry point makes one.

:func:`build_model` is to a bikd config what detectron2's ``build_model`` is to its own: the
engine set up (:func:`~bikd.engine.patches.setup_engine`), the config's default scope, the
model built from its config, and nothing loaded. Its members take their weights in one later
step (:func:`bikd.members.loading.take_weights`), called by whoever knows where
they come from: the runner (:meth:`bikd.engine.runner.BiKDRunner.prepare_start`), the export
(a runner checkpoint), the detectron2 plug-in's checkpointer, the tools.
"""
from typing import Any, Optional

from mmengine.model import is_model_wrapper
from mmengine.registry import MODELS, init_default_scope

from .patches import setup_engine


def build_model(cfg: Any, default_scope: Optional[str] = None):
    """The model of ``cfg``, built and not loaded.

    Args:
        cfg: an experiment config (its ``model`` and ``default_scope`` are read) or a model
            config (a dict with ``type``, e.g. ``dict(type='BiKDMetaArch', members=[...])``).
        default_scope: the registry scope to build in, made the default scope as mmengine's
            Runner does (default: the config's, else ``bikd``).
    """
    setup_engine()
    model = cfg.get('model') if 'model' in cfg and 'type' not in cfg else cfg
    scope = default_scope or (cfg.get('default_scope') if model is not cfg else None) or 'bikd'
    init_default_scope(scope)  # (what mmengine's Runner does; the tools build on under it)
    return MODELS.build(dict(model))


def unwrap(model):
    """The model inside a DDP (or other mmengine) wrapper."""
    return model.module if is_model_wrapper(model) else model


__all__ = ['build_model', 'unwrap']
