"""MoEAuxLossAutoScaler: attach an auxiliary loss to an activation so that it gets a gradient."""

from __future__ import annotations

import torch

__all__ = ["MoEAuxLossAutoScaler"]


class MoEAuxLossAutoScaler(torch.autograd.Function):
    """Returns ``output`` unchanged; in the backward pass ``aux_loss`` receives
    ``ones_like(aux_loss) * main_loss_backward_scale`` (1.0 until ``set_loss_scale`` is called).

    ``main_loss_backward_scale`` is a class attribute (a tensor, possibly a 0-dim CPU tensor while
    aux_loss is on the GPU). ``set_loss_scale`` copies into the existing tensor once there is one,
    so a CUDA graph that captured the backward sees new values; the caller's tensor is never
    modified. Assigning the attribute works as well, eagerly and compiled.
    """

    main_loss_backward_scale: torch.Tensor | None = None

    @staticmethod
    def forward(ctx, output: torch.Tensor, aux_loss: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(aux_loss)
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (aux_loss,) = ctx.saved_tensors
        scale = _SCALER_DICT["main_loss_backward_scale"]
        if scale is None:
            scale = torch.ones((), dtype=torch.float32, device=aux_loss.device)
        if scale.dim() > 0 and scale.device != aux_loss.device:
            scale = scale.to(aux_loss.device)
        scaled_aux_loss_grad = torch.ones_like(aux_loss) * scale
        return grad_output, scaled_aux_loss_grad

    @staticmethod
    def set_loss_scale(scale: torch.Tensor | float) -> None:
        """Set the gradient scale of the auxiliary loss (e.g. 1 / num_microbatches)."""
        # Detached: a scale that requires grad would otherwise tie every later backward to its graph
        # (copy_ into the stored tensor gave it a grad_fn until session 39).
        scale = scale.detach() if isinstance(scale, torch.Tensor) else torch.tensor(float(scale))
        current = MoEAuxLossAutoScaler.main_loss_backward_scale
        if current is None or current.shape != scale.shape:
            current = scale.clone()
            MoEAuxLossAutoScaler.main_loss_backward_scale = current
        else:
            current.copy_(scale)  # in place (across devices too): captured graphs see the new value


# The class's attribute dict, read by the backward. torch.compile cannot read a data attribute of an
# autograd.Function while it traces one (MoEAuxLossAutoScaler.main_loss_backward_scale fails with
# "Unsupported python_type() call"), but it reads this mapping, and guards on it: an assignment to
# the attribute reaches compiled backwards too. Until session 35 the compiled backward read a
# mirror that only set_loss_scale and eager backwards updated: after `main_loss_backward_scale = t`
# (or `= None`) a compiled backward that ran before any eager one used the previous scale.
_SCALER_DICT = MoEAuxLossAutoScaler.__dict__
