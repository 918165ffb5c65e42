"""A soak test: a tiny config trains for 1,000 iterations with evaluation and checkpointing
every 250, without the process's memory growing."""
import copy
import os

from mmengine.hooks import Hook
from mmengine.runner import Runner

from bikd.engine import load_config
from bikd.registry import HOOKS
from conftest import ROOT, digits_overrides

CONFIG = os.path.join(ROOT, 'configs/digits/resnet_convnext_bikd.yaml')
PROBES = (300, 1000)  # after the first evaluation and checkpoint; at the end
GROWTH_MIB = 40


def rss_mib() -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    raise RuntimeError('no VmRSS in /proc/self/status')


@HOOKS.register_module()
class ResidentMemoryProbe(Hook):
    """Records the process's resident memory after the iterations in ``PROBES``."""
    samples: dict = {}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 in PROBES:
            ResidentMemoryProbe.samples[runner.iter + 1] = rss_mib()


def test_1000_iterations_with_evaluation_and_checkpoints_keep_memory_flat(digits_root,
                                                                          tmp_path):
    cfg = load_config(CONFIG, digits_overrides(digits_root, str(tmp_path)) +
                      ['train_dataloader.batch_size=4'])
    second = copy.deepcopy(cfg.model.members[0])
    second['name'] = 'resnet_b'
    cfg.model.members = [cfg.model.members[0], second]  # two small members: a quick step
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=1000, val_interval=250)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=250,
                                        max_keep_ckpts=2)
    cfg.default_hooks.logger.interval = 100
    cfg.log_processor = dict(by_epoch=False, window_size=10)
    cfg.custom_hooks = list(cfg.custom_hooks) + [dict(type='ResidentMemoryProbe')]
    ResidentMemoryProbe.samples.clear()
    Runner.from_cfg(cfg).train()

    assert sorted(f for f in os.listdir(tmp_path) if f.endswith('.pth')) == \
        ['iter_1000.pth', 'iter_750.pth']  # max_keep_ckpts removed the older ones
    start, end = (ResidentMemoryProbe.samples[i] for i in PROBES)
    assert end - start < GROWTH_MIB, f'resident memory grew from {start:.0f} to {end:.0f} MiB'
