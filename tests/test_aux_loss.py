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
