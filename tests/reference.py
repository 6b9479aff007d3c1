"""Float64 references for the gated activations, built from the specs with sympy.lambdify (numpy).

Independent of our printers and templates: only the spec's expression and sympy's derivatives.
"""

from __future__ import annotations

import numpy as np
import sympy
import torch
from moe_utils.codegen import GATE, UP, ActivationSpec, derive


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_erf(x):
    return torch.erf(torch.as_tensor(x, dtype=torch.float64)).numpy()


_MODULES = [{"sigmoid": _np_sigmoid, "erf": _np_erf}, "numpy"]


class SpecReference:
    """f, df/dgate, df/dup of one spec as float64 numpy functions of (gate, up, *params)."""

    def __init__(self, spec: ActivationSpec):
        self.spec = spec
        d = derive(spec)
        args = (GATE, UP, *(p.symbol for p in spec.params))
        self.f = sympy.lambdify(args, d.act, modules=_MODULES)
        self.d_gate = sympy.lambdify(args, d.d_gate, modules=_MODULES)
        self.d_up = sympy.lambdify(args, d.d_up, modules=_MODULES)
        # |f| before cancellation: the sum of the absolute values of the additive terms of f
        # expanded (0.5 gate up + 0.5 gate up erf(..) for GELU: 1 + erf(z) cancels for z << 0 in
        # any fp32 implementation, the reference's included). Bounds the error of d_weights.
        self.f_magnitude = sympy.lambdify(args, self._magnitude(d.act), modules=_MODULES)
        # the same for the derivatives: elementwise error bounds of the gradients (bound_elementwise)
        self.d_gate_magnitude = sympy.lambdify(args, self._magnitude(d.d_gate), modules=_MODULES)
        self.d_up_magnitude = sympy.lambdify(args, self._magnitude(d.d_up), modules=_MODULES)

    @staticmethod
    def _magnitude(expr):
        """Sum of the absolute values of the additive terms of expr expanded."""
        return sympy.Add(*(sympy.Abs(t) for t in sympy.Add.make_args(sympy.expand(expr))))

    @staticmethod
    def _call(fn, gate, up, params):
        out = fn(gate, up, *params)
        return np.broadcast_to(np.asarray(out, dtype=np.float64), gate.shape)

    @staticmethod
    def _halves(x, interleaved):
        if interleaved:
            return x[:, 0::2], x[:, 1::2]
        return np.split(x, 2, axis=-1)

    def forward_backward(self, y, bias=None, weights=None, g=None, params=(), clamp_value=None, interleaved=False):
        """Everything in float64 torch tensors (CPU). Returns out, d_y, d_bias, d_weights.

        interleaved: gate and up (and their biases) are the even and odd positions of the last dim.
        """
        y = y.detach().to(torch.float64).cpu()
        x = y.numpy().reshape(-1, y.shape[-1])
        gate_in, up_in = self._halves(x, interleaved)
        gate, up = gate_in.copy(), up_in.copy()
        gate_pass = np.ones_like(gate, dtype=bool)
        up_pass = np.ones_like(up, dtype=bool)
        if clamp_value is not None:
            gate_pass = gate_in <= clamp_value
            up_pass = (up_in >= -clamp_value) & (up_in <= clamp_value)
            gate = np.minimum(gate, clamp_value)
            up = np.clip(up, -clamp_value, clamp_value)
        if bias is not None:
            b = np.broadcast_to(bias.detach().to(torch.float64).cpu().numpy(), y.shape).reshape(x.shape)
            bias_gate, bias_up = self._halves(b, interleaved)
            gate = gate + bias_gate
            up = up + bias_up
        w = np.ones((x.shape[0], 1))
        if weights is not None:
            w = weights.detach().to(torch.float64).cpu().numpy().reshape(-1, 1)
        f = self._call(self.f, gate, up, params)
        out = torch.from_numpy((f * w).reshape(*y.shape[:-1], y.shape[-1] // 2).copy())
        if g is None:
            return out, None, None, None
        g = g.detach().to(torch.float64).cpu().numpy().reshape(f.shape)
        # The derivatives at the activation's inputs; the input's gradient is zero where the clamp
        # changed a value, the bias's (added after the clamp) is not.
        d_gate_act = g * w * self._call(self.d_gate, gate, up, params)
        d_up_act = g * w * self._call(self.d_up, gate, up, params)

        def joined(d_gate, d_up):
            if interleaved:
                return np.stack([d_gate, d_up], axis=-1).reshape(x.shape)
            return np.concatenate([d_gate, d_up], axis=-1)

        d_y = torch.from_numpy(joined(d_gate_act * gate_pass, d_up_act * up_pass).reshape(y.shape).copy())
        d_w = torch.from_numpy((g * f).sum(-1, keepdims=True))
        f_magnitude = self._call(self.f_magnitude, gate, up, params)
        self.d_w_bound = torch.from_numpy((np.abs(g) * np.maximum(np.abs(f), f_magnitude)).sum(-1, keepdims=True))
        # Elementwise bounds (sums of absolute terms, for cancellation in fp32: GELU's 1 + erf(z) at z << 0)
        out_mag = np.abs(w) * np.maximum(np.abs(f), f_magnitude)
        self.out_bound = torch.from_numpy(out_mag.reshape(*y.shape[:-1], y.shape[-1] // 2).copy())
        d_gate_mag = np.abs(g * w) * np.maximum(
            np.abs(self._call(self.d_gate, gate, up, params)), self._call(self.d_gate_magnitude, gate, up, params)
        )
        d_up_mag = np.abs(g * w) * np.maximum(
            np.abs(self._call(self.d_up, gate, up, params)), self._call(self.d_up_magnitude, gate, up, params)
        )
        self.d_y_bound = torch.from_numpy(joined(d_gate_mag * gate_pass, d_up_mag * up_pass).reshape(y.shape).copy())
        self.d_bias_bound = None
        if weights is not None:
            d_w = d_w.reshape(weights.shape)
            self.d_w_bound = self.d_w_bound.reshape(weights.shape)
        d_bias = None
        if bias is not None:
            d_bias = torch.from_numpy(joined(d_gate_act, d_up_act).reshape(y.shape).copy()).sum_to_size(bias.shape)
            bias_mag = torch.from_numpy(joined(d_gate_mag, d_up_mag).reshape(y.shape).copy())
            self.d_bias_bound = bias_mag.sum_to_size(bias.shape)
        return out, d_y, d_bias, d_w
