"""The matrix product (`matmul`) with numpy's and torch's semantics, and its vector-Jacobian product.

Only the leading (batch) axes broadcast; the gradients come back in the broadcast shape and the
engine un-broadcasts them, as for the elementwise ops (`ops`).
"""
from __future__ import annotations

import numpy as np

from .backend import array_module
from .registry import Context, Op, register, samples


def _rand(rng, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


@register
class MatMul(Op):
    """numpy/torch matmul: 1-D operands are promoted (and the added axis dropped again),
    leading axes broadcast. A stack of matrices times one matrix runs as one GEMM."""

    name = "matmul"

    @staticmethod
    def forward(ctx: Context, a, b):
        ctx.a, ctx.b = a, b
        if a.ndim > 2 and b.ndim == 2:
            return (a.reshape(-1, a.shape[-1]) @ b).reshape(*a.shape[:-1], b.shape[-1])
        return a @ b

    @staticmethod
    def backward(ctx: Context, grad):
        a, b = ctx.a, ctx.b
        need_a, need_b = ctx.needs_input_grad
        xp = array_module(a, b)
        if a.ndim == 1 and b.ndim == 1:
            return (grad * b if need_a else None), (grad * a if need_b else None)
        if b.ndim == 2 and a.ndim >= 2:  # the common case: one GEMM per gradient
            g2 = grad.reshape(-1, grad.shape[-1])
            grad_a = (g2 @ b.T).reshape(a.shape) if need_a else None
            grad_b = a.reshape(-1, a.shape[-1]).T @ g2 if need_b else None
            return grad_a, grad_b
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g = grad
        if a.ndim == 1:
            g = xp.expand_dims(g, -2)
        if b.ndim == 1:
            g = xp.expand_dims(g, -1)
        grad_a = grad_b = None
        if need_a:
            grad_a = g @ xp.swapaxes(b2, -1, -2)
            if a.ndim == 1:
                grad_a = grad_a[..., 0, :]
        if need_b:
            grad_b = xp.swapaxes(a2, -1, -2) @ g
            if b.ndim == 1:
                grad_b = grad_b[..., 0]
        return grad_a, grad_b

    @samples
    def samples(rng):
        yield (_rand(rng, 3, 4), _rand(rng, 4, 2)), {}
        yield (_rand(rng, 4), _rand(rng, 4)), {}
        yield (_rand(rng, 4), _rand(rng, 4, 3)), {}
        yield (_rand(rng, 3, 4), _rand(rng, 4)), {}
        yield (_rand(rng, 2, 3, 4), _rand(rng, 4, 5)), {}
        yield (_rand(rng, 2, 3, 4), _rand(rng, 2, 4, 2)), {}
        yield (_rand(rng, 2, 1, 3, 4), _rand(rng, 3, 4, 2)), {}
        yield (_rand(rng, 2, 3, 4), _rand(rng, 4)), {}
        yield (_rand(rng, 4), _rand(rng, 2, 4, 3)), {}
        yield (_rand(rng, 3, 4), _rand(rng, 2, 4, 5)), {}
