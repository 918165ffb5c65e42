"""The interface every member implements, and the lifecycle its base class owns.

A member wraps one existing, pretrained model. For a batch it returns its per-sample task loss,
the tensor to distil and, in evaluation, its prediction. It owns its input normalisation and
resolution (like timm's ``pretrained_cfg``), so members of different families share one batch.

Its base class owns what every member does alike: where its weights come from (one order of
precedence, :meth:`Member.take_weights`) and how it leaves (:meth:`Member.export`, the inverse
of loading a ``checkpoint``). A subclass builds its network and says how the network's weights
are named in the files it reads and writes; see :class:`Member`.

Build, then load (as detectron2's ``build_model`` + ``DetectionCheckpointer`` and timm's
``build_model_with_cfg``): a member's constructor builds its network and reads no weights; its
weights are taken by one explicit step, :meth:`Member.take_weights`, which whoever builds it
calls (:func:`bikd.members.loading.take_weights` for every member of a model).
"""
import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from torch import Tensor, nn

from .. import compat
from ..checkpoint import download_weights, load_into, load_weights_file, weights_digest
from ..errors import UserError
from ..fileio import save_json, save_torch
from ..registry import plain


@dataclass
class MemberOutput:
    """What a member gives the meta-architecture for one training batch.

    Attributes:
        loss: ``[N]`` per-sample task loss; its mean is the member's task loss (Eq. 5 / 13)
            unless ``objective`` gives it.
        logits: ``[N, C, *spatial]``, the scores whose softmax over axis 1 is the distribution
            distilled through :func:`bikd.losses.distillation_loss`. What they are depends on
            the task: a classifier's class logits; for dense members, log-probabilities (the
            softmax of log-probabilities is the distribution itself): a segmenter's per-pixel
            class log-probabilities (``[N, C, H, W]``), a saliency member's map as
            log-probabilities over its pixels (``[N, H * W]``: the pixels are the axis). The name is
            the distillation term's argument, not a promise of unnormalised scores.
        confidence: ``[N]`` softmax probability of the ground-truth class, for the
            ``confidence`` partition (Eq. 3 / 11); ``None`` where the task has no such score.
        partition_loss: ``[N]`` per-sample loss compared across members by the ``loss``
            partition (Eq. 6), when it should differ from ``loss``: members whose task losses
            are defined differently (a Mask2Former set criterion and a per-pixel
            cross-entropy) need a loss defined alike for all of them. ``None``: ``loss``.
        objective: scalar, the member's task loss as it is back-propagated, when it is not
            the mean of ``loss``: a model whose own training loss is normalised over the batch
            as a whole (Mask2Former's set criterion divides its mask losses by the batch's
            number of masks) gives that loss here, and per-sample losses that depend on each
            sample alone in ``loss``. ``None``: ``loss.mean()``.
    """
    loss: Tensor
    logits: Tensor
    confidence: Optional[Tensor] = None
    partition_loss: Optional[Tensor] = None
    objective: Optional[Tensor] = None

    def task_loss(self) -> Tensor:
        """The member's task loss in the step's loss: ``objective``, else the mean of
        ``loss``."""
        return self.loss.mean() if self.objective is None else self.objective


#: where the weights of a member that takes none come from
RANDOM = 'random initialisation'

#: What a member name may be: it names files (exports), log keys and table rows.
NAME_PATTERN = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]*')


class Member(nn.Module):
    """Base class of members; subclasses register in :data:`bikd.registry.MEMBERS`.

    Args:
        name: the member's name in logs, tables and exported files: letters, digits and
            ``_ . -``, not ``ensemble``.
        pretrained: without ``checkpoint``, take the weights the model was released with
            (:meth:`load_pretrained`: a pretrained tag, a release file, a backbone's weights);
            ``False``: keep the random initialisation.
        checkpoint: a file (or URL) in the member's native layout: the model's own release
            format, which :meth:`export` also writes. It takes precedence over ``pretrained``.
        trust_checkpoint: allow files that need arbitrary Python objects to unpickle (only
            for files from a source you trust).

    A subclass calls ``super().__init__(name, pretrained, checkpoint, trust_checkpoint)``,
    builds its network in its own constructor and implements:

    - ``forward_train(inputs, data_samples) -> MemberOutput``;
    - ``predict(inputs, data_samples) -> Tensor``: per-sample prediction whose mean over
      members is the ensemble's (class probabilities ``[N, C]``, per-pixel probabilities, maps);
    - ``num_classes`` (the label space; members of one run must agree);

    and, where the defaults do not fit:

    - ``weights_module``: the module whose weights a checkpoint holds (default: the member);
    - ``from_native(state)`` / ``to_native(state)``: the checkpoint's parameter names to the
      module's and back (default: the same names);
    - ``load_pretrained() -> str``: load the released weights when there is no checkpoint, and
      say where they came from;
    - ``export_format`` and ``describe(stem)``: what the JSON beside an export says;
      ``export_payload()``: what the weights file holds; ``export_files(directory, stem)``:
      further files an export writes (a model config, a separate head);
    - ``partition_loss_kind``: what the per-sample loss compared by the ``loss`` partition is
      (e.g. ``'pixel_ce'``); the meta-architecture warns when members differ.

    Weights: the constructor builds the network only; :meth:`take_weights`, called once by
    the builder (:func:`bikd.members.loading.take_weights` for every member of a model),
    takes them in this order: ``checkpoint``, else ``pretrained`` (:meth:`load_pretrained`),
    else none (random). A member asked for neither has nothing to take and is ready as
    built.
    """

    #: what the exported weights are, for the JSON beside them
    export_format = 'state dict'
    #: the registered member types that wrap a model of this member's task from another zoo
    #: by name (``tools/find_partners.py --timm / --hf``): ``''`` where the task has none
    timm_member = ''
    transformers_member = ''
    #: the constructor arguments that say where the weights come from rather than what the
    #: member computes: the run's fingerprint records them with a digest of every local file
    #: or folder they name (a subclass with another weights file adds its argument)
    weight_arguments: Tuple[str, ...] = ('checkpoint', 'pretrained', 'trust_checkpoint')
    #: the name of the model's member whose weights this one takes instead of its own: a
    #: frozen copy of a member (KL+DP's initial student); :func:`bikd.members.loading.take_weights`
    #: copies them once the member has taken its own
    weights_copied_from: Optional[str] = None

    def __init__(self, name: str, pretrained: bool = True, checkpoint: Optional[str] = None,
                 trust_checkpoint: bool = False):
        super().__init__()
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name == 'ensemble':
            raise UserError(f'invalid member name {name!r}: use letters, digits and "_.-" '
                            '(starting with a letter or digit), and not "ensemble"')
        self.name = name
        self.pretrained = bool(pretrained)
        self.checkpoint = checkpoint or None
        self.trust_checkpoint = bool(trust_checkpoint)
        #: where the weights came from (a path, a URL, a tag, 'random initialisation'); None
        #: while weights asked for (``checkpoint`` or ``pretrained``) are still to be taken
        self.weights_from: Optional[str] = None if (self.checkpoint or self.pretrained) \
            else RANDOM

    # ------------------------------------------------------------------ what it is
    @classmethod
    def fingerprint(cls, cfg: Dict[str, Any], random_init: bool = False) -> Dict[str, Any]:
        """What a member built from ``cfg`` (its config dict) is, for the run's fingerprint
        (:mod:`bikd.engine.fingerprint`): its name and type, its architecture (every argument
        of ``cfg`` but its ``weight_arguments``, as given) and the weights it starts from
        (those arguments, each naming a local file or folder with its digest; ``random_init``
        when the run takes no weights)."""
        cfg = plain(cfg)
        weights: Dict[str, Any] = {}
        if random_init:
            weights['source'] = 'random_init'
        else:
            for key in cls.weight_arguments:
                if key in cfg:
                    weights[key] = cfg[key]
                    digest = weights_digest(cfg[key])
                    if digest is not None:
                        weights[f'{key}_sha256'] = digest
        return dict(name=cfg.get('name'), type=cfg.get('type'),
                    architecture={k: v for k, v in sorted(cfg.items())
                                  if k not in cls.weight_arguments + ('name', 'type')},
                    weights=weights)

    # ------------------------------------------------------------------ the task interface
    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    @property
    def partition_loss_kind(self) -> str:
        return type(self).__name__

    def forward_train(self, inputs: Any, data_samples: Any) -> MemberOutput:
        raise NotImplementedError

    def predict(self, inputs: Any, data_samples: Any) -> Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ weights in
    def take_weights(self) -> str:
        """The one order in which a member takes its weights: ``checkpoint``, else the
        released weights (``pretrained``), else the random initialisation. Called by the
        builder once the member is built; returns where the weights came from."""
        if self.checkpoint:
            self.load_checkpoint(self.checkpoint)
            self.weights_from = str(self.checkpoint)
        elif self.pretrained:
            self.weights_from = self.load_pretrained()
        else:
            self.weights_from = RANDOM
        return self.weights_from

    @property
    def weights_module(self) -> nn.Module:
        """The module whose state dict a checkpoint holds and an export writes."""
        return self

    def from_native(self, state: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Parameter names of the native layout (a release's) -> ``weights_module``'s."""
        return state

    def to_native(self, state: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The inverse of :meth:`from_native`."""
        return state

    def read_weights(self, source: str) -> Dict[str, Tensor]:
        """The flat state dict in a file, or at a URL (torch.hub's cache or a download)."""
        if source.startswith(('http://', 'https://')):
            return download_weights(source, self.name, 'checkpoint=PATH (a local copy)',
                                    self.trust_checkpoint)
        return load_weights_file(source, self.trust_checkpoint)

    def load_state(self, state: Dict[str, Tensor], source: str,
                   module: Optional[nn.Module] = None) -> None:
        """Load a state dict into ``module`` (default: ``weights_module``); a mismatch is an
        error naming the source, the member and the keys."""
        load_into(self.weights_module if module is None else module, state, source,
                  owner=self.name)

    def load_checkpoint(self, source: str) -> None:
        """Load ``checkpoint``: a file (or URL) in the native layout."""
        self.load_state(self.from_native(self.read_weights(source)), source)

    def load_pretrained(self) -> str:
        """Load the weights the model was released with (no checkpoint given); return where
        they came from. Members that have none keep their initialisation."""
        return 'random initialisation (this member has no released weights to take)'

    # ------------------------------------------------------------------ weights out
    def export_payload(self) -> Any:
        """What the exported weights file holds: the native state dict, on the CPU (with the
        modules' version metadata, which some modules read when loading)."""
        state = self.to_native(self.weights_module.state_dict())
        out = OrderedDict((k, v.detach().cpu().contiguous()) for k, v in state.items())
        metadata = compat.state_dict_metadata(state)
        if metadata is not None:
            compat.set_state_dict_metadata(out, metadata)
        return out

    #: the validation data its reported numbers came from (the dataset's type and transform,
    #: :func:`bikd.engine.export.evaluation_data`), set by
    #: :func:`bikd.engine.export.export_members` for the export to record (and to describe its
    #: preprocessing by)
    evaluated_with: Optional[Dict[str, Any]] = None

    def describe(self, stem: str) -> Dict[str, Any]:
        """JSON-able facts a user needs to load the export ``<stem>.*`` (input size, how to
        load it)."""
        return {}

    def export_files(self, directory: str, stem: str) -> Dict[str, Any]:
        """Write further files beside the weights; return their entries for the JSON."""
        return {}

    def load_export(self, directory: str, stem: str) -> None:
        """Load what :meth:`export` wrote as ``<stem>`` in ``directory``: the weights its JSON
        names as ``checkpoint`` (a member whose export has further weight files loads those
        too)."""
        path = os.path.join(directory, f'{stem}.json')
        with open(path) as f:
            info = json.load(f)
        self.load_checkpoint(os.path.join(directory, info['checkpoint']))

    def export(self, directory: str, stem: str) -> Dict[str, Any]:
        """Write the member in its native format: ``<stem>.pth`` (what ``checkpoint`` loads
        back), any further files, and ``<stem>.json`` describing them. Every file is written
        atomically. Returns the description."""
        weights = os.path.join(directory, f'{stem}.pth')
        save_torch(self.export_payload(), weights)
        info = dict(format=self.export_format, member=self.name,
                    checkpoint=os.path.basename(weights))
        info.update(self.export_files(directory, stem))
        info.update(self.describe(stem))
        if self.evaluated_with:
            info['evaluated_with'] = self.evaluated_with
        save_json(info, os.path.join(directory, f'{stem}.json'))
        return info
