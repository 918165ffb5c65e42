"""Training data that may hold a few unreadable files: :class:`SkipBadSamples`.

``train_net ... skip_bad_samples=N`` wraps the training dataset in it: a sample whose file
cannot be read (a truncated or empty image, a dangling link: the datasets raise ``OSError``
naming the file) is replaced by the next readable one, with a warning that names the file; a
run that meets more than N such samples stops with the last one's name. The count is shared
by the data loader's worker processes, travels in the checkpoints and goes into
``summary.json`` (``skipped_samples``). Without it, the first unreadable file stops the run
with its name (``train_net`` prints one line; the last checkpoint is intact).
"""
import multiprocessing
import os
from typing import Any, Optional, Union

from mmengine.logging import print_log
from torch.utils.data import Dataset

from .errors import UserError
from .registry import DATASETS


def unreadable_file(path: str, error: Optional[BaseException] = None,
                    kind: str = 'image') -> OSError:
    """The error for a data file a decoder could not read (``kind``: image, annotation,
    frame, ...): it names the file and says why in words when the reason is plain (a dangling
    link, an empty file), else gives the decoder's message. :class:`SkipBadSamples` and
    ``train_net`` act on it."""
    if os.path.islink(path) and not os.path.exists(path):
        why = f'it is a link to {os.readlink(path)}, which does not exist'
    elif not os.path.exists(path):
        why = 'it does not exist'
    elif os.path.isfile(path) and os.path.getsize(path) == 0:
        why = 'it is empty (0 bytes)'
    elif error is None or not str(error).strip():
        why = 'the decoder could not read it (cut short, or not an image?)'
    else:
        why = f'{type(error).__name__}: {str(error).strip()}'
    missing = not os.path.exists(path)  # (a dangling link too)
    return (FileNotFoundError if missing else OSError)(f'cannot read {kind} file {path}: {why}')


@DATASETS.register_module()
class SkipBadSamples(Dataset):
    """``dataset`` (a dataset or its config) with up to ``max_skips`` unreadable samples
    replaced by the next readable ones (see the module's description). Other attributes
    (``metainfo``, ``classes``, ...) are the wrapped dataset's."""

    def __init__(self, dataset: Union[dict, Dataset], max_skips: int):
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset
        self.max_skips = int(max_skips)
        if self.max_skips < 0:
            raise UserError(f'skip_bad_samples must be 0 or more, got {max_skips}')
        self._skipped = multiprocessing.Value('i', 0)  # shared with forked loader workers

    @property
    def skipped(self) -> int:
        """Samples skipped so far (by every worker)."""
        return int(self._skipped.value)

    @skipped.setter
    def skipped(self, value: int) -> None:
        self._skipped.value = int(value)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        n = len(self.dataset)
        for step in range(n):
            i = (index + step) % n
            try:
                return self.dataset[i]
            except OSError as e:
                with self._skipped.get_lock():
                    self._skipped.value += 1
                    count = self._skipped.value
                if count > self.max_skips:
                    raise OSError(f'{e} (more unreadable training samples than '
                                  f'skip_bad_samples={self.max_skips})') from e
                print_log(f'skipped training sample {i} ({count} of at most {self.max_skips}, '
                          f'skip_bad_samples): {e}', logger='current', level=30)
        raise OSError('no training sample is readable')

    def __getattr__(self, name: str) -> Any:
        if name.startswith('_') or name == 'dataset':  # (while unpickled: not set yet)
            raise AttributeError(name)
        return getattr(self.dataset, name)


#: for datasets of other libraries (mmseg's, ...), which declare nothing: the arguments that say
#: where a dataset's data is in mmengine-style datasets
DEFAULT_SOURCE_ARGUMENTS = ('data_root', 'data_prefix', 'ann_file')


def dataset_fingerprint(cfg: dict) -> dict:
    """Where a dataset config's data is, for the run's fingerprint: the values of the
    arguments its class declares as ``source_arguments`` (a dataset of another library: those
    of :data:`DEFAULT_SOURCE_ARGUMENTS`). A wrapper (``dataset=dict(...)``, as
    :class:`SkipBadSamples`) is seen through."""
    from .member import plain
    cfg = plain(cfg or {})
    while isinstance(cfg.get('dataset'), dict):  # a wrapper
        cfg = cfg['dataset']
    cls = DATASETS.get(cfg['type']) if isinstance(cfg.get('type'), str) else None
    keys = getattr(cls, 'source_arguments', DEFAULT_SOURCE_ARGUMENTS)
    return {k: cfg[k] for k in keys if k in cfg}
