"""The training loop that continues an epoch where a stopped run left it.

:class:`BiKDEpochBasedTrainLoop` is mmengine's ``EpochBasedTrainLoop`` (same arguments; the
suite's runner builds it for ``type: EpochBasedTrainLoop``) with one addition: a run resumed
from a checkpoint written mid-epoch (a stop on a signal, :mod:`bikd.engine.signals`) continues
with the next batch of that epoch. The sampler (:class:`bikd.data.ResumableSampler`) leaves
out the samples already trained without loading them; each sample draws its augmentation from
its own seed (:class:`bikd.data.SeededSamples`); the training's random generators are put back
as they were at the stop once the epoch's data loader has started. The run then equals one
never stopped, bit for bit on the same machine.
"""
from typing import Optional

from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop
from torch.utils.data import BatchSampler

from ..data import ResumableSampler
from ..registry import LOOPS
from .random_state import set_random_state
from .run_state import run_state_of


def batches_done(loop) -> int:
    """The batches of the current epoch trained before the checkpoint the loop resumed from
    (0 at an epoch's start)."""
    return loop.iter - loop.epoch * len(loop.dataloader)


@LOOPS.register_module()
class BiKDEpochBasedTrainLoop(EpochBasedTrainLoop):
    """mmengine's ``EpochBasedTrainLoop`` that continues a stopped epoch (see the module's
    description)."""

    def run_epoch(self) -> None:
        done = batches_done(self)
        if not 0 < done <= len(self.dataloader):
            if done:
                print_log(f'the checkpoint\'s iteration {self.iter} is not within epoch '
                          f'{self.epoch + 1} of {len(self.dataloader)} batches (another number '
                          'of processes or batch size?): the epoch starts from its first batch',
                          logger='current', level=30)
            return super().run_epoch()
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        discard = self._skip(done)
        batches = iter(self.dataloader)
        for _ in range(discard):
            next(batches)
        random = run_state_of(self.runner).random  # as the generators were at the stop
        if random is not None:
            set_random_state(random)
        for idx, data_batch in enumerate(batches, start=done):
            self.run_iter(idx, data_batch)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1

    def _skip(self, done: int) -> int:
        """Start the epoch past its first ``done`` batches: at the sampler when batches are
        plain runs of ``batch_size`` indices (nothing loaded); else the batches are drawn
        and dropped (returned: how many)."""
        loader = self.dataloader
        sampler: Optional[ResumableSampler] = loader.sampler if isinstance(
            loader.sampler, ResumableSampler) else None
        batch_sampler = loader.batch_sampler
        plain = type(batch_sampler) is BatchSampler and batch_sampler.sampler is sampler
        print_log(f'continuing epoch {self.epoch + 1} after its first {done} of '
                  f'{len(loader)} batches (the checkpoint was written mid-epoch)' +
                  ('' if plain and sampler is not None else
                   ': loading and dropping them, as the batch sampler groups samples itself'),
                  logger='current')
        if plain and sampler is not None:
            sampler.skip(done * batch_sampler.batch_size)
            return 0
        return done


__all__ = ['BiKDEpochBasedTrainLoop', 'batches_done']
