"""MoEAuxLossAutoScaler."""

from __future__ import annotations

import torch
from conftest import DEVICE

from moe_utils import MoEAuxLossAutoScaler


def _reset():
    MoEAuxLossAutoScaler.main_loss_backward_scale = None


def test_passes_output_and_scales_aux_grad():
    _reset()
    out = torch.randn(4, 3, device=DEVICE, requires_grad=True)
    aux = (torch.rand(2, device=DEVICE, requires_grad=True) * 1).sum()
    aux.retain_grad()
    y = MoEAuxLossAutoScaler.apply(out, aux)
    assert torch.equal(y, out)
    g = torch.randn(4, 3, device=DEVICE)
    y.backward(g)
    assert torch.equal(out.grad, g)
    assert torch.equal(aux.grad, torch.ones_like(aux))  # scale 1.0 when unset
    MoEAuxLossAutoScaler.set_loss_scale(torch.tensor(0.25))  # a 0-dim CPU tensor, aux on DEVICE
    aux2 = torch.tensor(3.0, device=DEVICE, requires_grad=True)
    MoEAuxLossAutoScaler.apply(out, aux2).sum().backward()
    assert aux2.grad.item() == 0.25
    _reset()


def test_set_loss_scale_does_not_modify_the_callers_tensor():
    _reset()
    first = torch.tensor(0.5)
    MoEAuxLossAutoScaler.set_loss_scale(first)
    MoEAuxLossAutoScaler.set_loss_scale(torch.tensor(2.0))
    assert first.item() == 0.5 and MoEAuxLossAutoScaler.main_loss_backward_scale.item() == 2.0
    # A scale that requires grad is taken as its value: the stored tensor stays a plain constant,
    # so no backward is tied to the caller's graph.
    learnable = torch.tensor(0.25, requires_grad=True)
    MoEAuxLossAutoScaler.set_loss_scale(learnable * 1)
    stored = MoEAuxLossAutoScaler.main_loss_backward_scale
    assert stored.item() == 0.25 and not stored.requires_grad and stored.grad_fn is None
    _reset()
    MoEAuxLossAutoScaler.set_loss_scale(learnable)
    assert not MoEAuxLossAutoScaler.main_loss_backward_scale.requires_grad
    _reset()


def test_under_bf16_autocast_and_checkpointing():
    _reset()
    lin = torch.nn.Linear(8, 8).to(DEVICE)
    x = torch.randn(5, 8, device=DEVICE, requires_grad=True)
    aux = torch.tensor(1.5, device=DEVICE, requires_grad=True)

    def block(inp, aux_loss):
        h = lin(inp)
        return MoEAuxLossAutoScaler.apply(h, aux_loss * 2)

    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        y = torch.utils.checkpoint.checkpoint(block, x, aux, use_reentrant=False)
    y.float().sum().backward()
    assert aux.grad.item() == 2.0  # d(2 * aux)/d aux times the scale 1
    assert x.grad is not None and torch.isfinite(x.grad).all()
    _reset()


def test_compiled_backward_reads_the_scale_as_set():
    """A compiled backward gets the scale however it was set: set_loss_scale, assignment of a new
    tensor, or None (1.0). Each compiled step runs before any eager backward: until session 35 the
    compiled path read a mirror of the attribute that only set_loss_scale and eager backwards
    updated, so after an assignment it used the previous scale. One graph serves every value."""
    from torch._dynamo.testing import CompileCounterWithBackend

    _reset()
    counter = CompileCounterWithBackend("aot_eager")  # AOTAutograd traces the backward

    def step(out, aux):
        return MoEAuxLossAutoScaler.apply(out * 2, aux).sum()

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    out = torch.randn(4, 3, device=DEVICE, requires_grad=True)
    settings = [
        ("unset", None, 1.0),
        ("set", 0.25, 0.25),
        ("set", torch.tensor(0.75), 0.75),
        ("assign", torch.tensor(4.0), 4.0),
        ("assign", torch.tensor(1.5), 1.5),
        ("assign", None, 1.0),
        ("set", torch.tensor(2.0), 2.0),
    ]
    for how, value, want in settings:
        if how == "set":
            MoEAuxLossAutoScaler.set_loss_scale(value)
        elif how == "assign":
            MoEAuxLossAutoScaler.main_loss_backward_scale = value
        for fn in (compiled, step):
            aux = torch.rand(2, device=DEVICE).requires_grad_(True)
            fn(out, aux).backward()
            assert torch.equal(aux.grad, torch.full_like(aux, want)), (how, value, fn is compiled)
    assert counter.frame_count <= 2  # a new tensor is a graph input; None and a tensor may take one graph each
    _reset()
