"""Members from Hugging Face ``transformers``: weights in and out in the library's own format.

:class:`TransformersModel` is what a member wrapping a ``transformers`` model shares, whatever
its task (the classification and segmentation packages subclass it with their task's
:class:`bikd.Member`):

- **build**: the network is made from the model's configuration (``AutoConfig`` of a hub id or
  of a folder written by ``save_pretrained``), reading no weights; its image processor is read
  beside it, and :class:`~bikd.members.hf.processors.ImagePreprocessing` applies that
  processor's steps to the shared batch as the processor's torchvision backend does (every
  option of the processor classes of the listed models honoured, or refused in one line);
- **weights** (:meth:`bikd.Member.take_weights`): ``checkpoint`` (a ``save_pretrained`` folder,
  safetensors or bin, or a hub id), else with ``pretrained`` the model's own released weights;
  both through the library's ``from_pretrained``, strictly: a missing, unexpected or
  wrongly shaped weight is an error that names the member and the keys (only the task head may
  be replaced, when ``num_classes`` asks for another label space than the release's);
- **export**: a ``save_pretrained`` folder (config, safetensors weights, the configuration of
  the image processor whose preprocessing the member used, and the model's own code for a
  remote-code model), which ``AutoModelFor...from_pretrained(folder)`` loads strictly and
  ``AutoImageProcessor.from_pretrained(folder)`` gives the member's preprocessing back from.

Hub ids resolve through the library's own cache; without network, an id that is not cached is
an error that says to pass a local folder. A model whose code comes with it (``auto_map``)
runs only with ``trust_remote_code: true``. ``transformers`` is imported only when such a
member is built: the rest of the suite does not need it.
"""
import io
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from ...checkpoint import load_into
from ...errors import UserError
from ...fileio import atomic_dir, read_folder_verified, save_json, write_folder_digests

INSTALL_HINT = 'install it with `pip install transformers` (make test does)'


def require_transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError(f'members from Hugging Face need transformers ({e}); '
                          f'{INSTALL_HINT}') from e
    return transformers


def _is_remote_code_refusal(error: Exception) -> bool:
    text = str(error)
    return 'trust_remote_code' in text or 'custom code' in text


def call_hub(what: str, owner: str, source: str, fn, *args, trust_remote_code: bool = False,
             **kwargs):
    """``fn(source, ...)`` of transformers (``from_pretrained``), with its failures put as what
    to do: a model that runs its own code without ``trust_remote_code``, an id that is neither
    a local folder nor reachable (or cached)."""
    try:
        return fn(source, *args, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as e:
        if _is_remote_code_refusal(e) and not trust_remote_code:
            raise UserError(f'member {owner!r}: {source} runs its own code (its config names it '
                            'in auto_map); set trust_remote_code: true to run it, only for a '
                            'model you trust') from e
        if os.path.isdir(source) or not isinstance(e, OSError):
            raise UserError(f'member {owner!r}: cannot read the {what} of {source} '
                            f'({type(e).__name__}: {str(e).splitlines()[0]})') from e
        raise FileNotFoundError(
            f'member {owner!r}: {source} is neither a local folder nor a model the Hugging Face '
            f'hub cache holds, and the hub cannot be reached ({str(e).splitlines()[0][:200]}); '
            'pass the path of a folder written by save_pretrained') from e


#: the weights files of a ``save_pretrained`` folder, as the library looks for them: an index
#: of shards first, else one file; safetensors before PyTorch's pickles
WEIGHTS_INDEXES = ('model.safetensors.index.json', 'pytorch_model.bin.index.json')
WEIGHTS_FILES = ('model.safetensors', 'pytorch_model.bin')


def read_folder_weights(folder: str) -> Optional[Dict[str, Any]]:
    """The state dict of a ``save_pretrained`` folder, each weights file read once and the
    folder checked against its ``SHA256SUMS`` from those reads (:func:`read_folder_verified`);
    ``None`` when the folder has no weights file the library would read first (it then says
    what is wrong)."""
    names: List[str] = []
    for index in WEIGHTS_INDEXES:
        path = os.path.join(folder, index)
        if os.path.isfile(path):
            with open(path) as f:
                names = sorted(set(json.load(f).get('weight_map', {}).values()))
            break
    else:
        names = [n for n in WEIGHTS_FILES if os.path.isfile(os.path.join(folder, n))][:1]
    if not names:
        return None
    state: Dict[str, Any] = {}
    for name, data in read_folder_verified(folder, names).items():
        state.update(_weights_from_bytes(data, os.path.join(folder, name)))
    return state


def _weights_from_bytes(data: bytes, path: str) -> Dict[str, Any]:
    """One weights file's tensors from its bytes (safetensors, or a PyTorch pickle of
    tensors only)."""
    import pickle

    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load
    try:
        if path.endswith('.safetensors'):
            return load(data)
        return torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise UserError(f'cannot read the weights file {path} ({type(e).__name__}: '
                        f'{str(e).splitlines()[0] if str(e) else ""}): is it damaged?') from e


class TransformersModel:
    """The part of a member that a ``transformers`` model brings (see the module's
    description). Mixed in before the task's member class; the subclass calls
    :meth:`build_transformers_model` in its constructor and uses ``self.model``.

    Attributes:
        model: the ``transformers`` model (``PreTrainedModel``).
        hf_config: its configuration, with the member's overrides.
        image_processor: its image processor, or ``None`` when the model ships none.
    """
    #: the ``transformers`` auto class the task builds (``AutoModelForImageClassification``)
    auto_class = ''
    export_format = 'transformers (save_pretrained folder)'
    #: ``model`` (a hub id or a save_pretrained folder) names the architecture and, with
    #: ``pretrained``, the weights: recorded with the folder's digest
    weight_arguments = ('model', 'checkpoint', 'pretrained', 'trust_checkpoint')

    def build_transformers_model(self, model: str, config_overrides: Optional[dict] = None,
                                 trust_remote_code: bool = False,
                                 auto_class: Optional[str] = None):
        """Build the network of ``model`` (a hub id or a ``save_pretrained`` folder) from its
        configuration, with ``config_overrides`` (e.g. ``num_labels``), reading no weights."""
        transformers = require_transformers()
        self.model_id, self.trust_remote_code = str(model), bool(trust_remote_code)
        self.auto_class = auto_class or self.auto_class
        config = call_hub('configuration', self.name, self.model_id,
                          transformers.AutoConfig.from_pretrained,
                          trust_remote_code=self.trust_remote_code)
        for key, value in (config_overrides or {}).items():
            setattr(config, key, value)
        self.config_overrides = dict(config_overrides or {})
        self.hf_config = config
        auto = getattr(transformers, self.auto_class)
        try:
            self.model = auto.from_config(config, trust_remote_code=self.trust_remote_code)
        except ValueError as e:
            if _is_remote_code_refusal(e):
                raise UserError(f'member {self.name!r}: {model} runs its own code; set '
                                'trust_remote_code: true to run it') from e
            raise UserError(f'member {self.name!r}: {model} is a {type(config).__name__}, which '
                            f'{self.auto_class} does not build ({str(e).splitlines()[0]})') from e
        self.image_processor = self._image_processor(self.model_id)
        return self.model

    def _image_processor(self, source: str):
        transformers = require_transformers()
        try:
            return transformers.AutoImageProcessor.from_pretrained(
                source, trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError, KeyError):
            return None  # the model ships none: the member's arguments must say

    @property
    def weights_module(self):
        return self.model

    # ------------------------------------------------------------------ weights in
    def load_checkpoint(self, source: str) -> None:
        """``checkpoint``: a ``save_pretrained`` folder or a hub id, loaded strictly. A
        folder's weights files are read once: their digests (checked against the folder's
        ``SHA256SUMS`` when the suite wrote one, and recorded in the run's fingerprint) come
        from the bytes the weights are loaded from."""
        state = read_folder_weights(source) if os.path.isdir(source) else None
        self._load_from_pretrained(source, head_may_change=False, state_dict=state)

    def load_pretrained(self) -> str:
        """The weights ``model`` was released with; the task head is re-initialised when
        ``num_classes`` asks for another label space."""
        replaced = self._load_from_pretrained(self.model_id, head_may_change=True)
        return self.model_id + (f' (head re-initialised for {self.num_classes} classes: '
                                f'{", ".join(replaced[:4])})' if replaced else '')

    def _load_from_pretrained(self, source: str, head_may_change: bool,
                              state_dict: Optional[Dict[str, Any]] = None) -> Tuple[str, ...]:
        """The weights of ``source`` through the library's ``from_pretrained`` (its key
        conversions and loading report), from ``state_dict`` when they were read already."""
        transformers = require_transformers()
        load = getattr(transformers, self.auto_class).from_pretrained
        if state_dict is not None:  # (the library takes a state dict with no source; the
            # class is the one built, as a remote-code class resolves only from a source)
            def load(_source, trust_remote_code=False, **kwargs):
                return type(self.model).from_pretrained(None, state_dict=state_dict, **kwargs)
        # mismatched shapes are reported here (the library would only raise on them)
        try:
            loaded, info = call_hub('weights', self.name, source, load,
                                    config=self.hf_config, output_loading_info=True,
                                    ignore_mismatched_sizes=True,
                                    trust_remote_code=self.trust_remote_code)
        except RuntimeError as e:  # weights the library could not load or convert
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            raise self._does_not_fit(source, {'transformers': [' / '.join(lines[:8])]}) from e
        shapes = {k[0]: tuple(tuple(s) for s in k[1:3]) if len(k) >= 3 else None
                  for k in (k if isinstance(k, (tuple, list)) else (k, )
                            for k in info.get('mismatched_keys', ()))}
        labels = (self.num_classes, self.num_classes + 1)  # + 1: a "no object" class

        def head(key) -> bool:  # only the label space's size differs
            ckpt, model = shapes[key] or ((), (0, ))
            return len(ckpt) == len(model) and all(c == m or m in labels
                                                   for c, m in zip(ckpt, model))

        problems = {'missing keys': sorted(info.get('missing_keys', ())),
                    'unexpected keys': sorted(info.get('unexpected_keys', ())),
                    'shape mismatches': [
                        k + (f' (checkpoint {list(shapes[k][0])}, model {list(shapes[k][1])})'
                             if shapes[k] else '')
                        for k in sorted(shapes) if not (head_may_change and head(k))]}
        if any(problems.values()):
            raise self._does_not_fit(source, problems)
        load_into(self.model, loaded.state_dict(), source, owner=self.name)
        return tuple(sorted(shapes))

    def _does_not_fit(self, source: str, problems: Dict[str, List[str]]) -> UserError:
        lines = [f'checkpoint {source} does not fit the model for member {self.name!r} '
                 f'({type(self.model).__name__}); is it for another architecture?']
        for title, keys in problems.items():
            if keys:
                shown = ', '.join(keys[:10]) + (f', ... ({len(keys)} in all)' if len(keys) > 10
                                                else '')
                lines.append(f'  {title}: {shown}')
        return UserError('\n'.join(lines))

    # ------------------------------------------------------------------ weights out
    def export(self, directory: str, stem: str) -> Dict[str, Any]:
        """``<stem>/``: a ``save_pretrained`` folder (config, ``model.safetensors``, the image
        processor's configuration; the model's code for a remote-code model), written whole
        or not at all, and ``<stem>.json`` describing it."""
        folder = os.path.join(directory, stem)
        with atomic_dir(folder) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            if self.image_processor is not None:
                self.image_processor.save_pretrained(tmp)
            write_folder_digests(tmp)
        remote = ', trust_remote_code=True' if self.trust_remote_code else ''
        info = dict(format=self.export_format, member=self.name, checkpoint=stem,
                    model=self.model_id, auto_class=self.auto_class,
                    load=f'transformers.{self.auto_class}.from_pretrained({stem!r}{remote})')
        info.update(self.describe(stem))
        save_json(info, os.path.join(directory, f'{stem}.json'))
        return info
