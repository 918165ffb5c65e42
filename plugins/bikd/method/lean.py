"""The lean training step (``model.lean=true``): members that do not fit on one device together.

A step's loss L is a function of the members' outputs z_1..z_K, so the gradient of a member's
weights is dL/dtheta_m = (dL/dz_m)(dz_m/dtheta_m) with the other members' outputs held
constant. The lean step therefore

1. runs every member's forward once, cutting its outputs from the graph (which goes with them,
   before the next member runs): the teachers (or routes) are chosen and the logged loss is
   computed from these outputs. The forward runs with gradient where the ordinary step has it,
   so that the same kernels run (some operators pick another algorithm without gradient:
   SDPA attention, NNPACK convolutions) and the outputs are the ordinary step's, bit for bit;
2. then, member by member, runs its forward again with gradient, evaluates the loss with the
   others' outputs as constants and back-propagates it, which frees the member's activations
   before the next member's forward;
3. takes one optimiser step (the step policy, clipping, AMP scaling and gradient accumulation
   as in the ordinary step).

At most one member's activations are alive at once, at the price of one more forward per
trained member. The step equals the ordinary one: the second forward of a member replays the
random generators' state of its first (dropout, drop-path, point sampling), and its buffers
(batch-norm running statistics) are put back before it, so they are updated once. Members
that do not train (frozen teachers) run once, without gradient.

Under DDP the step bypasses the wrapper's forward, so it reduces each member's gradients
itself after the member's backward (:class:`bikd.engine.lean_ddp.BiKDDistributedDataParallel`).
A meta-architecture runs it through :meth:`bikd.method.meta_arch.MultiMemberMetaArch.lean_step`.
"""
import dataclasses
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn
from torch.profiler import record_function
from ..errors import UserError


def trains(module: nn.Module) -> bool:
    """Whether any of the module's weights takes a gradient."""
    return any(p.requires_grad for p in module.parameters())


def generator_state(device: torch.device) -> Dict[str, Any]:
    """The states of torch's CPU generator and of ``device``'s, if it is an accelerator."""
    state = dict(cpu=torch.get_rng_state())
    if device.type == 'cuda' and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def set_generator_state(state: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state['cpu'])
    if 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'], device)


def copy_buffers(module: nn.Module) -> List[torch.Tensor]:
    return [b.detach().clone() for b in module.buffers()]


def restore_buffers(module: nn.Module, saved: List[torch.Tensor]) -> None:
    with torch.no_grad():
        for b, s in zip(module.buffers(), saved):
            b.copy_(s)


def detached(output):
    """A member's output with every tensor cut from the graph that computed it."""
    return dataclasses.replace(output, **{
        f.name: getattr(output, f.name).detach() for f in dataclasses.fields(output)
        if isinstance(getattr(output, f.name), torch.Tensor)})


def lean_train_step(model, data: Any, optim_wrapper,
                    reduce_gradients: Optional[Callable[[nn.Module], None]] = None
                    ) -> Dict[str, torch.Tensor]:
    """One lean training step of ``model`` (a :class:`bikd.method.meta_arch.MultiMemberMetaArch`);
    returns the logged values, as mmengine's ``train_step``.

    ``reduce_gradients(member)`` is called after each trained member's backward (a DDP
    wrapper's gradient all-reduce)."""
    if not hasattr(optim_wrapper, 'update_params_in_parts'):
        raise UserError(f'model.lean=true needs an optimiser wrapper of the bikd scope '
                        f'(optim_wrapper.type: BiKDOptimWrapper or BiKDAmpOptimWrapper under '
                        f'default_scope bikd), got {type(optim_wrapper).__name__}')
    with optim_wrapper.optim_context(model):
        data = model.data_preprocessor(data, True)
    inputs, samples = model.prepare_inputs(data['inputs']), data['data_samples']
    units = model.step_members()
    device = next(model.parameters()).device
    saved, constants = {}, []
    # 1. every member once: the outputs the partition and the log are taken on, as constants
    for i, unit in enumerate(units):
        learns = trains(unit)
        if learns:
            saved[i] = (generator_state(device), copy_buffers(unit))
        # with gradient where the ordinary step has it, so that the same kernels run (some
        # pick another algorithm without it: SDPA attention, NNPACK convolutions) and the
        # constants are bit for bit the ordinary step's outputs; the graph goes with ``out``
        with torch.set_grad_enabled(learns), optim_wrapper.optim_context(model), \
                record_function(f'bikd.lean.forward_constant.{i}'):
            out = unit.forward_train(inputs, samples)
        constants.append(detached(out))
        del out
    with torch.no_grad(), optim_wrapper.optim_context(model):
        losses = model.loss_from_outputs(constants, samples)
    after = generator_state(device)
    total, log_vars = model.parse_losses(losses)

    def parts():
        # 2. member by member: its forward with gradient, the others' outputs as constants
        for i in list(saved):
            state, buffers = saved.pop(i)  # freed once put back
            set_generator_state(state, device)
            restore_buffers(units[i], buffers)
            del buffers
            with optim_wrapper.optim_context(model), \
                    record_function(f'bikd.lean.forward.{i}'):
                outputs = list(constants)
                outputs[i] = units[i].forward_train(inputs, samples)
                loss = model.loss_from_outputs(outputs, samples, decide_on=constants).total()
            del outputs
            yield loss
            del loss
            if reduce_gradients is not None:
                reduce_gradients(units[i])
        set_generator_state(after, device)

    # 3. one step (dropped, without any backward, if the loss is not finite)
    optim_wrapper.update_params_in_parts(total, parts(), nonfinite=losses.nonfinite_terms())
    return log_vars
