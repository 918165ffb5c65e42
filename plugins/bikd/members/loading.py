"""The members' weights: the one step that gives a built model's members their weights, and
the check that they have them before anything trains or is evaluated.

A model of the suite computes; it does not load. As detectron2's checkpointer gives a built
model its weights, whoever builds a meta-architecture calls :func:`take_weights` once it is
built: the runner (:meth:`bikd.engine.runner.BiKDRunner.prepare_start`), the export
(:func:`bikd.engine.export.load_trained`), the detectron2 plug-in's checkpointer, the
benchmark and the partner finder; mmengine's own ``Runner.train`` reaches it through the
model's ``init_weights``. Each member reads its own file in its own format
(:meth:`bikd.Member.take_weights`); this module decides which members read anything:

- a runner ``checkpoint`` that will load every member's weights next (``load_from``,
  ``--resume``): none reads its own file;
- a model built with ``random_init``: none reads anything;
- otherwise each member takes its ``checkpoint``, else its released weights, in the model's
  order; a frozen copy of a member (KL+DP's initial student, whose ``weights_copied_from``
  names the member) then takes that member's weights.
"""
import weakref
from typing import Dict, List, Optional

from torch import nn

from ..errors import UserError, error_message
from .base import RANDOM, Member

#: where the members of a model built with ``random_init`` have their weights from
RANDOM_INIT = f'{RANDOM} (random_init)'


def members_of(model: nn.Module) -> List[Member]:
    """The members a meta-architecture trains (``model.members``), in its order."""
    return list(model.members)


def take_weights(model: nn.Module, checkpoint: Optional[str] = None) -> Dict[str, str]:
    """Give every member of ``model`` its weights (see the module's description); returns
    member -> where its weights come from. A member's file that is missing or does not load
    is an error that names the member and its config key (``model.members.<i>.checkpoint``)."""
    members = members_of(model)
    for i, m in enumerate(members):
        if checkpoint:
            m.weights_from = f'the checkpoint {checkpoint}'
        elif getattr(model, 'random_init', False):
            m.weights_from = RANDOM_INIT
        else:
            try:
                m.take_weights()
            except (UserError, FileNotFoundError) as e:
                key = f'model.members.{i}.{"checkpoint" if m.checkpoint else "pretrained"}'
                named = f'member {m.name!r}' in str(e)
                message = f'{key}{"" if named else f" (member {m.name!r})"}: {error_message(e)}'
                raise (FileNotFoundError if isinstance(e, FileNotFoundError) else UserError)(
                    message) from e
    by_name = {m.name: m for m in members}
    trained = {id(m) for m in members}
    for copy in model.modules():
        if isinstance(copy, Member) and id(copy) not in trained and copy.weights_copied_from:
            source = by_name[copy.weights_copied_from]
            copy.load_state_dict(source.state_dict())
            copy.weights_from = source.weights_from
    _ready.discard(model)
    return {m.name: m.weights_from for m in members}


#: models whose members all have their weights (the check then costs nothing per step)
_ready: 'weakref.WeakSet[nn.Module]' = weakref.WeakSet()


def check_weights_taken(model: nn.Module) -> None:
    """A member that was given weights (``checkpoint``, ``pretrained``) must have taken them
    before it trains or is evaluated: an error names those that have not."""
    if model in _ready:
        return
    missing = [m.name for m in model.modules() if isinstance(m, Member)
               and m.weights_from is None]
    if missing:
        raise RuntimeError(
            f'members {missing} have not taken their weights (checkpoint / pretrained): call '
            'bikd.members.loading.take_weights(model) once the model is built '
            "(tools/train_net.py and mmengine's Runner.train do), or set random_init=true to "
            'train from random weights')
    _ready.add(model)


def weights_missing(model: nn.Module) -> bool:
    """Whether a member of ``model`` still has weights to take."""
    return any(m.weights_from is None for m in members_of(model))
