"""The primitive ops behind Tensor's arithmetic: elementwise functions, reductions and matmul.

Each op keeps its forward and its vector-Jacobian product side by side (see `registry`).
Backward functions never write into the `grad` they are given (the engine may hand the same
array to several inputs); they may write into arrays they made themselves. Broadcasting is
undone by the engine, so binary ops return gradients in the broadcast shape. The ops that
only move elements around (reshape, transpose, indexing, joining) are in `ops_shape`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .backend import array_module, writable
from .registry import Context, Op, register, samples


def _normalize_axes(axis: Any, ndim: int) -> tuple[int, ...]:
    """`axis` (None, int or tuple, possibly negative) as a sorted tuple of positive axes."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axis = (axis,)
    return tuple(sorted(int(a) % ndim if ndim else 0 for a in axis))


def _kept_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    """The shape a reduction over `axes` has with keepdims=True."""
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


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


# ---- matmul -------------------------------------------------------------------------------
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


# ---- reductions ---------------------------------------------------------------------------
def _spread(grad, ctx: Context):
    """A reduction's output gradient broadcast back over the reduced axes (a read-only view)."""
    return array_module(grad).broadcast_to(grad.reshape(ctx.kept_shape), ctx.shape)


def _reduction_samples(rng):
    yield (_rand(rng, 3, 4),), {"axis": None, "keepdims": False}
    yield (_rand(rng, 3, 4),), {"axis": 1, "keepdims": False}
    yield (_rand(rng, 3, 4),), {"axis": 0, "keepdims": True}
    yield (_rand(rng, 2, 3, 4),), {"axis": (0, -1), "keepdims": False}
    yield (_rand(rng, 2, 3, 4),), {"axis": (1, 2), "keepdims": True}


@register
class Sum(Op):
    name = "sum"

    @staticmethod
    def forward(ctx: Context, a, axis=None, keepdims=False):
        ctx.shape = a.shape
        ctx.kept_shape = _kept_shape(a.shape, _normalize_axes(axis, a.ndim))
        return a.sum(axis=axis, keepdims=keepdims)

    @staticmethod
    def backward(ctx: Context, grad):
        return (_spread(grad, ctx),)

    samples = samples(_reduction_samples)


@register
class Mean(Op):
    name = "mean"

    @staticmethod
    def forward(ctx: Context, a, axis=None, keepdims=False):
        axes = _normalize_axes(axis, a.ndim)
        ctx.shape, ctx.kept_shape = a.shape, _kept_shape(a.shape, axes)
        ctx.count = int(np.prod([a.shape[i] for i in axes]))
        return a.mean(axis=axis, keepdims=keepdims)

    @staticmethod
    def backward(ctx: Context, grad):
        return (_spread(grad * (1.0 / ctx.count), ctx),)

    samples = samples(_reduction_samples)


@register
class Max(Op):
    """Maximum over axes with torch.amax's gradient: tied maxima share it evenly."""

    name = "max"

    @staticmethod
    def forward(ctx: Context, a, axis=None, keepdims=False):
        axes = _normalize_axes(axis, a.ndim)
        kept = a.max(axis=axes, keepdims=True)
        ctx.a, ctx.kept = a, kept
        return kept if keepdims else kept.reshape([n for i, n in enumerate(a.shape) if i not in axes])

    @staticmethod
    def backward(ctx: Context, grad):
        a, kept = ctx.a, ctx.kept
        is_max = a == kept
        axes = tuple(i for i, n in enumerate(kept.shape) if n == 1 and a.shape[i] != 1)
        ties = is_max.sum(axis=axes, keepdims=True).astype(a.dtype)
        share = grad.reshape(kept.shape) / ties
        return (is_max * share,)

    samples = samples(_reduction_samples)
