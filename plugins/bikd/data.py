"""Training data that a run can stop and continue at any batch (:class:`SeededSamples`,
:class:`ResumableSampler`), and that may hold a few unreadable files (:class:`SkipBadSamples`).

**Seeded samples.** The suite's runner wraps the training dataset in :class:`SeededSamples`
and its sampler in :class:`ResumableSampler`: every index the sampler gives carries a seed
made from the run's seed, the epoch, the process's rank and the index's position in the
epoch, and the dataset draws that sample's random augmentation (Python's, NumPy's and
torch's global generators) from that seed alone. A sample's augmentation then depends on
where it falls in the run, not on which loader worker loads it nor on what that worker drew
before, so a run that continues mid-epoch (after a stop on a signal) draws exactly the
augmentations of a run never stopped, with any number of workers, persistent or not, and
without loading the batches it skips: :meth:`ResumableSampler.skip` starts the next epoch past
them. In the main process (``num_workers=0``) the generators' states are put back after each
sample, so loading data draws nothing from the training's own random stream.

**Unreadable samples.**

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
import random
from typing import Any, Iterator, NamedTuple, Optional, Union

import numpy as np
import torch
from mmengine.logging import print_log
from torch.utils.data import Dataset, Sampler, get_worker_info

from .errors import UserError
from .registry import DATA_SAMPLERS, DATASETS, plain


class SeededIndex(NamedTuple):
    """An index of a dataset with the seed of its sample's random augmentation."""
    index: int
    seed: int


_MASK = 0xFFFFFFFFFFFFFFFF


def sample_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    """The seed (32 bits) of the sample at ``position`` of the epoch on process ``rank``:
    splitmix64's finaliser over the four numbers, each first spread by its own odd
    constant."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(epoch) * 0xD1B54A32D192ED03 +
         int(rank) * 0xAEF17502108EF2D9 + int(position) * 0xF1357AEA2E62A9C5) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return (x ^ (x >> 31)) & 0xFFFFFFFF


def _seed_generators(seed: int) -> None:
    """Python's, NumPy's and torch's (CPU) global generators, from ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)


@DATA_SAMPLERS.register_module()
class ResumableSampler(Sampler):
    """The config's ``sampler`` (built with the same ``dataset`` and ``seed``) whose indices
    carry their samples' seeds (:class:`SeededIndex`, see the module's description), and
    which can start its next pass past the indices already trained (:meth:`skip`)."""

    def __init__(self, sampler: Union[dict, Sampler], dataset=None, seed: Optional[int] = None):
        from mmengine.dist import get_rank
        self.sampler = DATA_SAMPLERS.build(sampler, default_args=dict(dataset=dataset, seed=seed)) \
            if isinstance(sampler, dict) else sampler
        if seed is None:  # (mmengine's samplers draw a seed shared by the processes)
            seed = getattr(self.sampler, 'seed', 0)
        self.seed = int(seed or 0)
        self.rank = get_rank()
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)

    def skip(self, count: int) -> None:
        """Leave out the first ``count`` indices of the next pass (they are not loaded)."""
        self._skip = int(count)

    def __iter__(self) -> Iterator[SeededIndex]:
        skip, self._skip = self._skip, 0
        for position, index in enumerate(self.sampler):
            if position >= skip:
                yield SeededIndex(int(index), sample_seed(self.seed, self.epoch, self.rank,
                                                          position))

    def __len__(self) -> int:
        return len(self.sampler)

    def __getattr__(self, name: str) -> Any:
        if name.startswith('_') or name == 'sampler':
            raise AttributeError(name)
        return getattr(self.sampler, name)


@DATASETS.register_module()
class SeededSamples(Dataset):
    """``dataset`` (a dataset or its config) whose samples draw their random augmentation
    from the seed their :class:`SeededIndex` carries (see the module's description); a plain
    index is passed through. Other attributes are the wrapped dataset's."""

    def __init__(self, dataset: Union[dict, Dataset]):
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def _get(self, index: Any) -> Any:
        if not isinstance(index, SeededIndex):
            return self.dataset[index]
        _seed_generators(index.seed)
        return self.dataset[index.index]

    def __getitem__(self, index: Any) -> Any:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices) -> list:
        """The samples of a batch (torch's loader asks for them together)."""
        if get_worker_info() is not None:  # a loader worker: its generators serve data only
            return [self._get(i) for i in indices]
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            return [self._get(i) for i in indices]
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])

    def __getattr__(self, name: str) -> Any:
        if name.startswith('_') or name == 'dataset':  # (while unpickled: not set yet)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def unwrap_dataset(dataset: Any, cls: type) -> Any:
    """The dataset of type ``cls`` inside ``dataset``'s wrappers (``None`` if there is
    none)."""
    while dataset is not None:
        if isinstance(dataset, cls):
            return dataset
        dataset = getattr(dataset, '__dict__', {}).get('dataset')
    return None


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
    cfg = plain(cfg or {})
    while isinstance(cfg.get('dataset'), dict):  # a wrapper
        cfg = cfg['dataset']
    cls = DATASETS.get(cfg['type']) if isinstance(cfg.get('type'), str) else None
    keys = getattr(cls, 'source_arguments', DEFAULT_SOURCE_ARGUMENTS)
    return {k: cfg[k] for k in keys if k in cfg}
