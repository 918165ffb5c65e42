"""Faults: non-finite losses never update a member, saves are atomic, random states travel in
checkpoints."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from mmengine.logging import MessageHub

from bikd import BiKDMetaArch
from bikd.engine import BiKDOptimWrapper
from bikd.engine.patches import AtomicLocalBackend
from bikd.engine.random_state import get_random_state, set_random_state
from conftest import ROOT, batch, tiny


def model_and_optimizer(**policy):
    torch.manual_seed(0)
    model = BiKDMetaArch([tiny('a'), tiny('b')])
    return model, BiKDOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.5), **policy)


def poison(model, member: str, key: str = 'loss', times: int = 1):
    """The next ``times`` forwards of ``member`` give a NaN ``key`` (loss or logits)."""
    m = model.members[model.member_names.index(member)]
    original, left = m.forward_train, [times]

    def forward_train(*args, **kwargs):
        out = original(*args, **kwargs)
        if left[0] > 0:
            left[0] -= 1
            setattr(out, key, getattr(out, key) * float('nan'))
        return out

    m.forward_train = forward_train


def step(model, optim, seed=0):
    images, samples = batch(seed=seed)
    return model.train_step(dict(inputs=images, data_samples=samples), optim)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_nonfinite_member_loss_drops_the_step_and_is_counted(caplog):
    model, optim = model_and_optimizer(max_nonfinite_in_a_row=2)
    MessageHub.get_current_instance().update_info('iter', 6)
    before = weights(model)
    poison(model, 'a')
    log = step(model, optim)
    assert same(before, weights(model)), 'a weight was updated from a NaN loss'
    assert optim.last_step_skipped and optim.skipped_steps == 1
    assert 'task_loss/a' not in log and 'loss' not in log and 'task_loss/b' in log
    log = step(model, optim)  # a finite step updates and resets the run of dropped steps
    assert not optim.last_step_skipped and 'loss' in log and not same(before, weights(model))
    poison(model, 'b', times=2)
    after_good = weights(model)
    step(model, optim)
    with pytest.raises(FloatingPointError, match=r"member 'b' at iteration 7 .*2 steps in a "
                                                 r'row were dropped'):
        step(model, optim)
    assert same(after_good, weights(model))
    assert optim.skipped_steps == 3


def test_dropped_step_counts_travel_in_the_run_state(tmp_path):
    """The counts go into a checkpoint's run state (through a weights-only save and load) and
    come back into the optimiser wrapper of a resumed run."""
    from types import SimpleNamespace

    from bikd.engine.run_state import RUN_STATE_KEY, RunState, RunStateHook
    model, optim = model_and_optimizer()
    poison(model, 'a')
    step(model, optim)
    hook, checkpoint = RunStateHook(), {}
    hook.before_save_checkpoint(SimpleNamespace(optim_wrapper=optim, run_state=RunState(),
                                                train_loop=None), checkpoint)
    assert checkpoint[RUN_STATE_KEY]['nonfinite_steps'] == 1
    torch.save(checkpoint, tmp_path / 'c.pth')
    _, again = model_and_optimizer()
    resumed = SimpleNamespace(optim_wrapper=again, run_state=RunState(), resuming=True, iter=7,
                              train_loop=None, val_loop=None)
    hook.after_load_checkpoint(resumed, torch.load(tmp_path / 'c.pth', weights_only=True))
    hook.before_train(resumed)
    assert again.skipped_steps == 1 and again.skipped_in_a_row == 1


def test_nonfinite_policy_raise_names_member_and_iteration():
    model, optim = model_and_optimizer(nonfinite_policy='raise')
    MessageHub.get_current_instance().update_info('iter', 41)
    before = weights(model)
    poison(model, 'b')
    with pytest.raises(FloatingPointError, match=r"non-finite loss of member 'b' at iteration "
                                                 r'42 \(task_loss/b=nan\); no weights were '
                                                 r'updated'):
        step(model, optim)
    assert same(before, weights(model))


def test_nonfinite_distillation_term_is_named():
    model, optim = model_and_optimizer(nonfinite_policy='raise')
    poison(model, 'a', key='logits')
    with pytest.raises(FloatingPointError, match='the distillation term'):
        step(model, optim)


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="nonfinite_policy must be one of .*'ignore'"):
        model_and_optimizer(nonfinite_policy='ignore')


def test_the_policy_under_model_is_refused_by_name():
    """The policy is the optimiser wrapper's: under ``model`` it is an unknown key."""
    from bikd.engine import load_config
    from bikd.engine.config import ConfigKeyError
    with pytest.raises(ConfigKeyError, match='model.nonfinite_policy is not an argument of '
                                             'BiKDMetaArch'):
        load_config(os.path.join(ROOT, 'configs/digits/resnet_convnext_bikd.yaml'),
                    ['model.nonfinite_policy=raise'])


def test_importing_bikd_changes_nothing_in_mmengine():
    code = ('import bikd, mmengine.fileio.io as io\n'
            'from mmengine.fileio.backends import LocalBackend\n'
            'from mmengine.logging.history_buffer import HistoryBuffer\n'
            "assert 'statistics_methods' in HistoryBuffer().__getstate__()\n"
            "assert io.backends['local'] is LocalBackend\n"
            'from bikd.engine import setup_engine\n'
            'setup_engine()\n'
            "assert 'statistics_methods' not in HistoryBuffer().__getstate__()\n"
            "assert io.backends['local'].__name__ == 'AtomicLocalBackend'\n")
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)


def test_random_state_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np
    state = get_random_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save(dict(random_state=state), tmp_path / 'c.pth')
    torch.rand(5), np.random.rand(5), random.random()
    set_random_state(torch.load(tmp_path / 'c.pth', weights_only=True)['random_state'])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_mmengine_saves_go_through_the_atomic_backend(tmp_path, monkeypatch):
    from mmengine.fileio import get_file_backend
    from mmengine.runner.checkpoint import save_checkpoint
    path = str(tmp_path / 'iter_1.pth')
    assert isinstance(get_file_backend(path), AtomicLocalBackend)
    save_checkpoint(dict(state_dict=dict(w=torch.ones(3))), path)

    def disk_full(fd):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(os, 'fsync', disk_full)
    with pytest.raises(OSError, match='No space'):
        save_checkpoint(dict(state_dict=dict(w=torch.zeros(3))), path)
    # the earlier checkpoint is intact, with its digest, and no temporary file is left behind
    assert torch.equal(torch.load(path, weights_only=True)['state_dict']['w'], torch.ones(3))
    assert sorted(os.listdir(tmp_path)) == ['iter_1.pth', 'iter_1.pth.sha256']
    from bikd.fileio import verify
    assert verify(path) == 'verified'



SAVER = '''
import sys, torch
sys.path.insert(0, {plugins!r})
from bikd.engine import setup_engine
setup_engine()
from mmengine.runner.checkpoint import save_checkpoint
for i in range(1, 1000):
    save_checkpoint(dict(state_dict=dict(w=torch.full((16_000_000,), float(i)))), {path!r})
    print(i, flush=True)
'''


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    """A process keeps rewriting one 64 MB checkpoint through mmengine; it is SIGKILLed while a
    file in the folder is caught half-written. The checkpoint path still holds one complete
    save (a plain write would have left it truncated)."""
    path = tmp_path / 'last.pth'
    code = SAVER.format(plugins=os.path.join(ROOT, 'plugins'), path=str(path))
    proc = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, text=True)
    try:
        while proc.stdout.readline().strip() != '1':  # (mmengine logs a warning first)
            assert proc.poll() is None, 'the saver died on its own'
        full = path.stat().st_size
        caught = None
        deadline = time.time() + 60
        while caught is None and time.time() < deadline:
            for entry in os.scandir(tmp_path):
                if entry.name.endswith('.sha256'):
                    continue  # (the digest beside it: small, and whole when it is there)
                try:
                    size = entry.stat().st_size
                except FileNotFoundError:  # renamed away meanwhile
                    continue
                if 0 < size < full:
                    os.kill(proc.pid, signal.SIGKILL)
                    caught = entry.name
                    break
        assert caught, 'never saw a save in progress'
    finally:
        proc.kill()
        proc.wait()
    w = torch.load(path, weights_only=True)['state_dict']['w']
    assert w.numel() == 16_000_000 and bool((w == w[0]).all()) and w[0] >= 1
    assert caught != 'last.pth' and caught.endswith('.tmp')
    from bikd.fileio import verify
    assert verify(str(path)) in ('verified', 'unverified')  # never another save's digest
