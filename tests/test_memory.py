"""bikd.memory counts what a step holds exactly: the bytes autograd saves for backward and the
bytes of the tensors an evaluation keeps, against sizes worked out by hand; and the lean step
holds the largest member's activations where the ordinary step holds every member's."""
import copy

import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS, init_default_scope
from torch import nn

from bikd.memory import live_tensors_peak, saved_tensors_peak
from conftest import batch, tiny

F32 = 4


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_saved_tensors_of_a_small_network_match_the_hand_count():
    model, x = mlp(), torch.randn(5, 8)
    weights = list(model.parameters())

    def step():
        model(x).sum().backward()

    # the first linear saves its input x (5 x 8), ReLU its output (5 x 16), which the second
    # linear saves too (the same storage, counted once); the weights are left out
    expected = (5 * 8 + 5 * 16) * F32
    assert saved_tensors_peak(step, exclude=weights) == expected
    # counted, the weights add the second linear's (16 x 4, saved to pass the gradient to its
    # input); the first's is not saved, since its input x takes no gradient
    assert saved_tensors_peak(step) == expected + 16 * 4 * F32

    # backward releases what a forward saved: two steps in a row hold one step's activations,
    # two forwards before one backward hold both
    def two_steps():
        step()
        step()

    def two_forwards():
        (model(x).sum() + model(2 * x).sum()).backward()

    assert saved_tensors_peak(two_steps, exclude=weights) == expected
    assert saved_tensors_peak(two_forwards, exclude=weights) == 2 * expected


def test_a_branch_backward_never_runs_is_freed_with_its_step():
    """A softmax whose output only picks indices (as a matching cost does) saves its output
    in a graph node that backward never runs: the node and what it saved must go when the
    step's tensors go, or every further step would count (and keep) them again."""
    model, x = mlp(), torch.randn(5, 8)

    def step():
        out = model(x)
        out.softmax(dim=1).argmax(dim=1)  # a graph that no backward runs
        out.sum().backward()

    def two_steps():
        step()
        step()

    weights = list(model.parameters())
    one = saved_tensors_peak(step, exclude=weights)
    assert one == (5 * 8 + 5 * 16 + 5 * 4) * F32  # + the softmax's output (5 x 4)
    assert saved_tensors_peak(two_steps, exclude=weights) == one


def test_live_tensors_of_an_evaluation_match_the_hand_count():
    def evaluate():
        with torch.no_grad():
            a = torch.ones(1000)
            b = a * 2           # a and b alive: 8000 bytes
            del a
            c = b.view(10, 100)  # a view of b: no new memory
            d = c + 1           # b and d alive: 8000 bytes
            del b, c, d
            e = torch.zeros(3000)  # alone: 12000 bytes
            del e

    assert live_tensors_peak(evaluate) == 3000 * F32

    model = mlp()

    def forward():
        with torch.no_grad():
            model(torch.randn(5, 8))

    # at the peak: the input (5 x 8), the first linear's output and ReLU's (5 x 16 each;
    # Sequential lets go of each output once the next module has made its own)
    peak = live_tensors_peak(forward, exclude=list(model.parameters()))
    assert peak == (5 * 8 + 2 * 5 * 16) * F32


def test_lean_step_holds_the_largest_members_activations_the_ordinary_step_every_members():
    init_default_scope('bikd')
    members = [tiny('small'), tiny('large', model_kwargs=dict(img_size=16, patch_size=8,
                                                              depth=2, embed_dim=64,
                                                              num_heads=2))]
    images, samples = batch(n=8)
    data = dict(inputs=images, data_samples=samples)

    def saved(model):
        model = copy.deepcopy(model).train()
        wrapper = build_optim_wrapper(model, dict(type='BiKDOptimWrapper',
                                                  optimizer=dict(type='Adam', lr=1e-3)))
        model.train_step(data, wrapper)  # warm-up: optimiser state exists from here on
        return saved_tensors_peak(lambda: model.train_step(data, wrapper),
                                  exclude=[*model.parameters(), *model.buffers()])

    torch.manual_seed(0)
    bikd = MODELS.build(dict(type='BiKDMetaArch', members=members))
    alone = {m.name: saved(MODELS.build(dict(type='IndependentMetaArch',
                                             members=[copy.deepcopy(m)])))
             for m in bikd.members}
    ordinary = saved(bikd)
    lean_model = copy.deepcopy(bikd)
    lean_model.lean = True
    lean = saved(lean_model)
    assert alone['large'] > 1.5 * alone['small'] > 0
    # what Bi-KD adds: the partition and the KL on [8, 5] logits (log-softmax of each member
    # and the teachers' distribution, a few masks): a few hundred bytes
    kl = (len(members) + 1) * 8 * 5 * F32 + 1024
    assert sum(alone.values()) <= ordinary <= sum(alone.values()) + kl
    assert alone['large'] <= lean <= alone['large'] + kl
