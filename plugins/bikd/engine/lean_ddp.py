"""The suite's DDP wrapper: the ordinary step through the meta-architecture's update, and
the lean training step (``model.lean=true``, :mod:`bikd.method.lean`).

mmengine's ``MMDistributedDataParallel`` reduces the gradients in hooks that its own forward
arms, once per backward; the lean step runs one backward per member outside that forward. This
wrapper takes the ordinary step as mmengine's does (through the model's own update) and, for a
model in lean mode, runs the lean step and averages each member's gradients over the
processes right after the member's backward, in buckets. The suite's runner chooses it for
every run of several processes.
"""
from typing import Dict, List

import torch
import torch.distributed as dist
from mmengine.model import MMDistributedDataParallel
from torch import nn

from ..registry import MODEL_WRAPPERS

BUCKET_BYTES = 25 * 2**20  # as torch's DDP


def all_reduce_gradients(module: nn.Module, group=None) -> None:
    """Average the gradients of ``module``'s trainable weights over the processes. A weight
    without a gradient here but with one on another process gets zeros first, so that every
    process reduces the same tensors (as DDP does for weights unused on some processes)."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    world = dist.get_world_size(group)
    device = params[0].device
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8,
                           device=device)
    dist.all_reduce(present, op=dist.ReduceOp.MAX, group=group)
    grads: List[torch.Tensor] = []
    for p, used in zip(params, present.tolist()):
        if not used:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    bucket: List[torch.Tensor] = []
    size = 0
    for i, g in enumerate(grads):
        bucket.append(g)
        size += g.numel() * g.element_size()
        if size >= BUCKET_BYTES or i == len(grads) - 1:
            flat = torch.cat([g_.reshape(-1) for g_ in bucket])
            dist.all_reduce(flat, group=group)
            flat.div_(world)
            for g_, r in zip(bucket, flat.split([g_.numel() for g_ in bucket])):
                g_.copy_(r.view_as(g_))
            bucket, size = [], 0


@MODEL_WRAPPERS.register_module()
class BiKDDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper (same arguments) whose step goes through the meta-architecture's
    own update (:meth:`bikd.method.meta_arch.MultiMemberMetaArch.update`, which tells the optimiser
    wrapper which loss terms were not finite), and the lean step for a model with
    ``lean=True``. ``tools/train_net.py`` chooses it for every run of several processes."""

    def train_step(self, data, optim_wrapper) -> Dict[str, torch.Tensor]:
        module = self.module
        if getattr(module, 'lean', False):
            return module.lean_step(data, optim_wrapper, reduce_gradients=lambda m:
                                    all_reduce_gradients(m, self.process_group))
        if not hasattr(module, 'update'):  # not a meta-architecture of the suite
            return super().train_step(data, optim_wrapper)
        with optim_wrapper.optim_context(self):
            data = module.data_preprocessor(data, training=True)
            losses = self(**data, mode='loss') if isinstance(data, dict) else \
                self(*data, mode='loss')
        return module.update(losses, optim_wrapper)
