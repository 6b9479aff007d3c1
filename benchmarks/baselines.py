"""The reference algorithms (Megatron-Core / NeMo Automodel moe_utils), written out in plain PyTorch.

Each activation is computed the way the reference does it: eager ops on the storage dtype, a
separate multiply by the routing weights, the backward formulas of the reference, and an
autograd.Function that saves the input (or its fp8 copy). ``compiled()`` wraps the same functions in
``torch.compile``, which is how the reference ships them (its ``jit_fuser``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the reference's spelling


def swiglu(y):
    y_1, y_2 = torch.chunk(y, 2, -1)
    return F.silu(y_1) * y_2


def swiglu_back(g, y):
    y_1, y_2 = torch.chunk(y, 2, -1)
    return torch.cat((g * torch.sigmoid(y_1) * (1 + y_1 * (1 - torch.sigmoid(y_1))) * y_2, g * F.silu(y_1)), -1)


def geglu(y):
    y_1, y_2 = torch.chunk(y, 2, -1)
    return F.gelu(y_1, approximate="tanh") * y_2


def geglu_back(g, y):
    y_1, y_2 = torch.chunk(y, 2, -1)
    tanh_out = torch.tanh(0.79788456 * y_1 * (1 + 0.044715 * y_1 * y_1))
    ff = 0.5 * y_1 * ((1 - tanh_out * tanh_out) * (0.79788456 + 0.1070322243 * y_1 * y_1)) + 0.5 * (1 + tanh_out)
    return torch.cat((g * ff * y_2, g * F.gelu(y_1, approximate="tanh")), -1)


def quick_geglu(y, linear_offset=0.0):
    y_1, y_2 = torch.chunk(y, 2, -1)
    return y_1 * torch.sigmoid(1.702 * y_1) * (y_2 + linear_offset)


def quick_geglu_back(g, y, linear_offset=0.0):
    y_1, y_2 = torch.chunk(y, 2, -1)
    sigmoid_out = torch.sigmoid(1.702 * y_1)
    dy_1 = g * sigmoid_out * (1 + 1.702 * y_1 * (1 - sigmoid_out)) * (y_2 + linear_offset)
    dy_2 = g * y_1 * sigmoid_out
    return torch.cat((dy_1, dy_2), -1)


def make_weighted(act, act_back):
    def weighted(y, weights, *extra):
        return (act(y, *extra) * weights).to(y.dtype)

    def weighted_back(g, y, weights, *extra):
        input_grad = act_back(g * weights, y, *extra)
        weights_grad = (act(y, *extra) * g.to(weights.dtype)).sum(dim=-1, keepdim=True)
        return input_grad, weights_grad

    return weighted, weighted_back


def make_function(weighted, weighted_back):
    class WeightedFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, y, weights, fp8_input_store, *extra):
            saved = y.to(torch.float8_e4m3fn) if fp8_input_store else y
            ctx.save_for_backward(saved, weights)
            ctx.dtype = y.dtype
            ctx.extra = extra
            return weighted(y, weights, *extra)

        @staticmethod
        def backward(ctx, g):
            saved, weights = ctx.saved_tensors
            y = saved.to(ctx.dtype)
            d_y, d_w = weighted_back(g, y, weights, *ctx.extra)
            return (d_y.to(ctx.dtype), d_w, None) + (None,) * len(ctx.extra)

    return WeightedFunction


def clamp_input(y, clamp_value):
    """The reference applies quick_geglu's clamp with separate torch ops before its Function."""
    x_glu, x_linear = y.chunk(2, -1)
    return torch.cat((x_glu.clamp(min=None, max=clamp_value), x_linear.clamp(min=-clamp_value, max=clamp_value)), -1)


def activation_baselines(compile_fns: bool):
    """name -> (forward(y, w, fp8), backward(g, y, w)) for the reference, eager or compiled."""
    wrap = torch.compile if compile_fns else (lambda f: f)
    out = {}
    for name, act, back, extra in (
        ("swiglu", swiglu, swiglu_back, ()),
        ("geglu", geglu, geglu_back, ()),
        ("quick_geglu", quick_geglu, quick_geglu_back, (0.5,)),
    ):
        weighted, weighted_back = make_weighted(wrap(act), wrap(back))
        fn = make_function(wrap(weighted), wrap(weighted_back))
        clamp = wrap(clamp_input) if name == "quick_geglu" else None

        def forward(y, w, fp8, fn=fn, extra=extra, clamp=clamp):
            if clamp is not None:
                y = clamp(y, 7.0)
            return fn.apply(y, w, fp8, *extra)

        back_fn = wrap(weighted_back)

        def backward(g, y, w, back_fn=back_fn, extra=extra):
            return back_fn(g, y, w, *extra)

        out[name] = (forward, backward)
    return out


# -- activations outside the seed API: the plain PyTorch composition, differentiated by autograd ----

LIMIT = 7.0  # clamped_swiglu's default limit


def _halves(y):
    return torch.chunk(y, 2, -1)


def reglu(y):
    a, b = _halves(y)
    return F.relu(a) * b


def exact_geglu(y):
    a, b = _halves(y)
    return F.gelu(a) * b


def clamped_swiglu(y):
    a, b = _halves(y)
    return F.silu(a.clamp(max=LIMIT)) * b.clamp(-LIMIT, LIMIT)


def squared_reglu(y):
    a, b = _halves(y)
    return F.relu(a).square() * b


def autograd_baselines(compile_fns: bool):
    """name -> forward(y, w) for the activations the reference does not have: what a user writes
    without this package (weighted in the storage dtype, autograd for the backward)."""
    wrap = torch.compile if compile_fns else (lambda f: f)
    out = {}
    for act in (reglu, exact_geglu, clamped_swiglu, squared_reglu):

        def weighted(y, w, act=act):
            return (act(y) * w).to(y.dtype)

        out[act.__name__] = wrap(weighted)
    return out
