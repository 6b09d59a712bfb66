"""The primitive elementwise ops behind Tensor's arithmetic and functions (add ... pow, exp ... maximum).

Each op keeps its forward and its vector-Jacobian product side by side (see `registry`).
Backward functions never write into the `grad` they are given (the engine may hand the same
array to several inputs); they may write into arrays they made themselves. Broadcasting is
undone by the engine, so binary ops return gradients in the broadcast shape. The ops that
only move elements around (reshape, transpose, indexing, joining) are in `ops_shape`; matmul
is in `ops_matmul`, the reductions over axes (sum, mean, max) in `ops_reduce`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .backend import array_module, writable
from .registry import Context, Op, register, samples


def _rand(rng, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


def _positive(rng, *shape: int) -> np.ndarray:
    return rng.uniform(0.5, 2.0, shape)


def _binary_samples(rng):
    """Same-shape, broadcast (both ways, with size-1 axes) and scalar-operand cases."""
    yield (_rand(rng, 3, 4), _rand(rng, 3, 4)), {}
    yield (_rand(rng, 3, 4), _rand(rng, 4)), {}
    yield (_rand(rng, 2, 1, 4), _rand(rng, 3, 1)), {}
    yield (_rand(rng, 3), np.asarray(rng.standard_normal())), {}


# ---- arithmetic ---------------------------------------------------------------------------
@register
class Add(Op):
    name = "add"

    @staticmethod
    def forward(ctx: Context, a, b):
        return a + b

    @staticmethod
    def backward(ctx: Context, grad):
        return grad, grad

    samples = samples(_binary_samples)


@register
class Sub(Op):
    name = "sub"

    @staticmethod
    def forward(ctx: Context, a, b):
        return a - b

    @staticmethod
    def backward(ctx: Context, grad):
        return grad, (-grad if ctx.needs_input_grad[1] else None)

    samples = samples(_binary_samples)


@register
class Neg(Op):
    name = "neg"

    @staticmethod
    def forward(ctx: Context, a):
        return -a

    @staticmethod
    def backward(ctx: Context, grad):
        return (-grad,)

    @samples
    def samples(rng):
        yield (_rand(rng, 2, 3),), {}


@register
class Mul(Op):
    name = "mul"

    @staticmethod
    def forward(ctx: Context, a, b):
        ctx.a, ctx.b = a, b
        return a * b

    @staticmethod
    def backward(ctx: Context, grad):
        need_a, need_b = ctx.needs_input_grad
        return (grad * ctx.b if need_a else None), (grad * ctx.a if need_b else None)

    samples = samples(_binary_samples)


@register
class Div(Op):
    name = "div"

    @staticmethod
    def forward(ctx: Context, a, b):
        out = a / b
        ctx.b, ctx.out = b, out
        return out

    @staticmethod
    def backward(ctx: Context, grad):
        grad_a = grad / ctx.b  # d(a/b)/db = -(a/b)/b, so the b-gradient reuses grad/b
        grad_b = None
        if ctx.needs_input_grad[1]:
            grad_b = writable(grad_a * ctx.out)
            array_module(grad_b).negative(grad_b, out=grad_b)
        return (grad_a if ctx.needs_input_grad[0] else None), grad_b

    @samples
    def samples(rng):
        for (a, b), attrs in _binary_samples(rng):
            yield (a, np.sign(b) * (np.abs(b) + 0.5)), attrs  # keep the divisor away from zero


@register
class Pow(Op):
    """a ** b for a scalar or tensor exponent, with PyTorch's conventions at zero.

    d/da is 0 where b == 0 (so 0 ** 0 has gradient 0, not nan); d/db is 0 where a == 0 and
    b >= 0 (so the log(0) never shows).
    """

    name = "pow"

    @staticmethod
    def forward(ctx: Context, a, b):
        ctx.a, ctx.b = a, b
        ctx.scalar_exponent = float(b) if b.ndim == 0 and b.dtype.kind in "fiu" else None
        e = ctx.scalar_exponent
        out = a * a if e == 2.0 else a ** (e if e is not None else b)
        ctx.out = out
        return out

    @staticmethod
    def backward(ctx: Context, grad):
        a, b, out = ctx.a, ctx.b, ctx.out
        xp = array_module(a, b)
        need_a, need_b = ctx.needs_input_grad
        grad_a = grad_b = None
        if need_a:
            e = ctx.scalar_exponent
            if e is None:
                with np.errstate(divide="ignore", invalid="ignore"):
                    grad_a = xp.where(b == 0, 0, grad * b * a ** (b - 1))
            elif e == 0.0:
                grad_a = xp.zeros_like(out)
            elif e == 1.0:
                grad_a = grad
            else:
                grad_a = a * e if e == 2.0 else a ** (e - 1.0) * e
                grad_a *= grad
        if need_b:
            with np.errstate(divide="ignore", invalid="ignore"):
                grad_b = grad * out * xp.log(a)
            grad_b = xp.where((a == 0) & (b >= 0), 0, grad_b)
        return grad_a, grad_b

    @samples
    def samples(rng):
        # Bases stay positive: the sampled exponents are differentiated too, through log(a).
        yield (_positive(rng, 3, 4), np.asarray(2.0)), {}
        yield (_positive(rng, 3, 4), np.asarray(-1.5)), {}
        yield (_positive(rng, 3, 4), _rand(rng, 3, 4)), {}
        yield (_positive(rng, 2, 3), _rand(rng, 3)), {}
        yield (np.asarray(1.7), _rand(rng, 4)), {}

# ---- elementwise functions ----------------------------------------------------------------
@register
class Exp(Op):
    name = "exp"

    @staticmethod
    def forward(ctx: Context, a):
        ctx.out = array_module(a).exp(a)
        return ctx.out

    @staticmethod
    def backward(ctx: Context, grad):
        return (grad * ctx.out,)

    @samples
    def samples(rng):
        yield (_rand(rng, 3, 4),), {}


@register
class Log(Op):
    name = "log"

    @staticmethod
    def forward(ctx: Context, a):
        ctx.a = a
        return array_module(a).log(a)

    @staticmethod
    def backward(ctx: Context, grad):
        return (grad / ctx.a,)

    @samples
    def samples(rng):
        yield (_positive(rng, 3, 4),), {}


@register
class Sqrt(Op):
    name = "sqrt"

    @staticmethod
    def forward(ctx: Context, a):
        ctx.out = array_module(a).sqrt(a)
        return ctx.out

    @staticmethod
    def backward(ctx: Context, grad):
        g = grad / ctx.out
        g *= 0.5
        return (g,)

    @samples
    def samples(rng):
        yield (_positive(rng, 3, 4),), {}


@register
class Tanh(Op):
    name = "tanh"

    @staticmethod
    def forward(ctx: Context, a):
        ctx.out = array_module(a).tanh(a)
        return ctx.out

    @staticmethod
    def backward(ctx: Context, grad):
        out = ctx.out
        g = writable(out * out)
        array_module(g).subtract(1, g, out=g)
        g *= grad
        return (g,)

    @samples
    def samples(rng):
        yield (_rand(rng, 3, 4),), {}


def stable_sigmoid(a: Any) -> Any:
    """1 / (1 + exp(-a)) without overflow: exp only ever sees -|a|."""
    xp = array_module(a)
    e = writable(xp.abs(a))
    xp.negative(e, out=e)
    xp.exp(e, out=e)
    denominator = e + 1
    numerator = xp.where(a >= 0, 1, e).astype(a.dtype, copy=False)
    numerator /= denominator
    return numerator


@register
class Sigmoid(Op):
    name = "sigmoid"

    @staticmethod
    def forward(ctx: Context, a):
        ctx.out = stable_sigmoid(a)
        return ctx.out

    @staticmethod
    def backward(ctx: Context, grad):
        out = ctx.out
        g = 1 - out
        g *= out
        g *= grad
        return (g,)

    @samples
    def samples(rng):
        yield (_rand(rng, 3, 4) * 4,), {}


@register
class ReLU(Op):
    name = "relu"

    @staticmethod
    def forward(ctx: Context, a):
        ctx.out = array_module(a).maximum(a, 0)
        return ctx.out

    @staticmethod
    def backward(ctx: Context, grad):
        return (grad * (ctx.out > 0),)

    @samples
    def samples(rng):
        a = _rand(rng, 4, 5)
        yield (np.where(np.abs(a) < 0.05, 0.5, a),), {}  # no kink within a finite-difference step


@register
class Where(Op):
    """where(cond, a, b): the gradient flows to `a` where cond holds, to `b` elsewhere."""

    name = "where"
    nondiff = (0,)

    @staticmethod
    def forward(ctx: Context, cond, a, b):
        ctx.cond = cond.astype(bool, copy=False)
        return array_module(a, b).where(ctx.cond, a, b)

    @staticmethod
    def backward(ctx: Context, grad):
        xp = array_module(grad)
        _, need_a, need_b = ctx.needs_input_grad
        grad_a = xp.where(ctx.cond, grad, 0) if need_a else None
        grad_b = xp.where(ctx.cond, 0, grad) if need_b else None
        return None, grad_a, grad_b

    @samples
    def samples(rng):
        yield (rng.random((3, 4)) > 0.5, _rand(rng, 3, 4), _rand(rng, 3, 4)), {}
        yield (rng.random((3, 1)) > 0.5, _rand(rng, 4), _rand(rng, 3, 4)), {}


@register
class Maximum(Op):
    """Elementwise maximum; where a == b the gradient is split evenly (as in PyTorch)."""

    name = "maximum"

    @staticmethod
    def forward(ctx: Context, a, b):
        ctx.a, ctx.b = a, b
        return array_module(a, b).maximum(a, b)

    @staticmethod
    def backward(ctx: Context, grad):
        a, b = ctx.a, ctx.b
        xp = array_module(a, b)
        share_a = xp.where(a > b, 1.0, xp.where(a == b, 0.5, 0.0)).astype(grad.dtype, copy=False)
        need_a, need_b = ctx.needs_input_grad
        grad_a = grad * share_a if need_a else None
        grad_b = grad * (1 - share_a) if need_b else None
        return grad_a, grad_b

    @samples
    def samples(rng):
        yield (_rand(rng, 3, 4), _rand(rng, 3, 4)), {}
        yield (_rand(rng, 3, 4), _rand(rng, 4)), {}

