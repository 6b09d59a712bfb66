"""Fused neural-network ops: one forward and one hand-written VJP where composing primitives
would be slower, use more memory, or lose precision (softmax, cross-entropy, layer norm).
"""
from __future__ import annotations

import numpy as np

from .backend import array_module, writable
from .ops import stable_sigmoid
from .ops_shape import scatter_add_rows
from .registry import Context, Op, register, samples
from .sparse import RowSparse

REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _reduce(losses, reduction: str):
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


def _reduction_scale(grad, count: int, reduction: str):
    """The per-element factor the reduced loss's gradient becomes (broadcastable)."""
    if reduction == "mean":
        return grad * (1.0 / count)
    return grad


@register
class Linear(Op):
    """x @ weight.T + bias with weight (out, in), as torch; x may have leading batch axes.

    Inputs are (x, weight) or (x, weight, bias). Leading axes are folded into one so every
    product is a single GEMM, and the bias is added in place into the fresh product.
    """

    name = "linear"

    @staticmethod
    def forward(ctx: Context, x, weight, bias=None):
        x2 = x if x.ndim == 2 else x.reshape(-1, x.shape[-1])
        out = x2 @ weight.T
        if bias is not None:
            out += bias
        ctx.x2, ctx.weight, ctx.x_shape, ctx.has_bias = x2, weight, x.shape, bias is not None
        return out if x.ndim == 2 else out.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Context, grad):
        need = ctx.needs_input_grad
        g2 = grad if grad.ndim == 2 else grad.reshape(-1, grad.shape[-1])
        grad_x = (g2 @ ctx.weight).reshape(ctx.x_shape) if need[0] else None
        grad_w = g2.T @ ctx.x2 if need[1] else None
        if not ctx.has_bias:
            return grad_x, grad_w
        return grad_x, grad_w, (g2.sum(axis=0) if need[2] else None)

    @samples
    def samples(rng):
        yield (rng.standard_normal((4, 3)), rng.standard_normal((5, 3)), rng.standard_normal(5)), {}
        yield (rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 3))), {}
        yield (rng.standard_normal(3), rng.standard_normal((2, 3)), rng.standard_normal(2)), {}


def log_softmax_array(x, axis: int):
    """log(softmax(x)) computed as (x - max) - log(sum(exp(x - max))), never overflowing."""
    xp = array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    sum_exp = xp.exp(shifted).sum(axis=axis, keepdims=True)
    shifted -= xp.log(sum_exp)
    return shifted


@register
class LogSoftmax(Op):
    name = "log_softmax"

    @staticmethod
    def forward(ctx: Context, x, axis=-1):
        ctx.out, ctx.axis = log_softmax_array(x, axis), axis
        return ctx.out

    @staticmethod
    def backward(ctx: Context, grad):
        xp = array_module(grad)
        g = writable(xp.exp(ctx.out))
        g *= grad.sum(axis=ctx.axis, keepdims=True)
        xp.subtract(grad, g, out=g)
        return (g,)

    @samples
    def samples(rng):
        yield (rng.standard_normal((3, 5)),), {"axis": -1}
        yield (rng.standard_normal((2, 4, 3)) * 5,), {"axis": 1}


@register
class Softmax(Op):
    name = "softmax"

    @staticmethod
    def forward(ctx: Context, x, axis=-1):
        xp = array_module(x)
        e = xp.exp(x - x.max(axis=axis, keepdims=True))
        e /= e.sum(axis=axis, keepdims=True)
        ctx.out, ctx.axis = e, axis
        return e

    @staticmethod
    def backward(ctx: Context, grad):
        out = ctx.out
        g = grad - (grad * out).sum(axis=ctx.axis, keepdims=True)
        g *= out
        return (g,)

    @samples
    def samples(rng):
        yield (rng.standard_normal((3, 5)),), {"axis": -1}
        yield (rng.standard_normal((2, 4, 3)) * 5,), {"axis": 0}


def _class_last(logits, targets):
    """(N, C, d1, ...) logits and (N, d1, ...) targets as (M, C) rows and (M,) labels."""
    if logits.ndim == 2:
        return logits, targets.reshape(-1)
    xp = array_module(logits)
    rows = xp.moveaxis(logits, 1, -1).reshape(-1, logits.shape[1])
    return rows, targets.reshape(-1)


@register
class SoftmaxCrossEntropy(Op):
    """Cross-entropy of integer targets under softmax(logits), as torch's F.cross_entropy.

    logits (N, C) or (N, C, d1, ...), targets (N,) or (N, d1, ...). The fused backward is
    (softmax - onehot) scaled by the reduction, one pass over the logits.
    """

    name = "softmax_cross_entropy"
    nondiff = (1,)

    @staticmethod
    def forward(ctx: Context, logits, targets, reduction="mean"):
        _check_reduction(reduction)
        if targets.dtype.kind not in "iu":
            raise TypeError(f"cross-entropy targets must be integer class indices, got {targets.dtype}")
        if targets.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(f"targets of shape {targets.shape} do not match logits of shape {logits.shape}")
        xp = array_module(logits)
        rows, labels = _class_last(logits, targets)
        n_classes = rows.shape[1]
        if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
            raise ValueError(f"targets must lie in [0, {n_classes}), got values outside it")
        shifted = rows - rows.max(axis=1, keepdims=True)
        probs = xp.exp(shifted)
        sum_exp = probs.sum(axis=1)
        picks = xp.arange(labels.size)
        losses = xp.log(sum_exp) - shifted[picks, labels]
        probs /= sum_exp[:, None]
        ctx.probs, ctx.labels, ctx.picks, ctx.reduction = probs, labels, picks, reduction
        ctx.logits_shape = logits.shape
        return _reduce(losses if reduction != "none" else losses.reshape(targets.shape), reduction)

    @staticmethod
    def backward(ctx: Context, grad):
        xp = array_module(ctx.probs)
        scale = _reduction_scale(grad, ctx.labels.size, ctx.reduction)
        if ctx.reduction == "none":
            scale = scale.reshape(-1, 1)
        g = ctx.probs * scale
        g[ctx.picks, ctx.labels] -= scale if ctx.reduction != "none" else scale[:, 0]
        shape = ctx.logits_shape
        if len(shape) > 2:
            g = xp.moveaxis(g.reshape(shape[0], *shape[2:], shape[1]), -1, 1)
        return g, None

    @samples
    def samples(rng):
        yield (rng.standard_normal((4, 3)), rng.integers(0, 3, 4)), {"reduction": "mean"}
        yield (rng.standard_normal((4, 3)) * 10, rng.integers(0, 3, 4)), {"reduction": "sum"}
        yield (rng.standard_normal((4, 3)), rng.integers(0, 3, 4)), {"reduction": "none"}
        yield (rng.standard_normal((2, 3, 2, 2)), rng.integers(0, 3, (2, 2, 2))), {"reduction": "mean"}
        yield (rng.standard_normal((2, 3, 2)), rng.integers(0, 3, (2, 2))), {"reduction": "none"}


@register
class BCEWithLogits(Op):
    """Binary cross-entropy of logits x against targets y in [0, 1], as torch's
    binary_cross_entropy_with_logits: max(x, 0) - x*y + log(1 + exp(-|x|)), never overflowing.
    The targets are differentiable too (d/dy = -x), as in PyTorch."""

    name = "bce_with_logits"

    @staticmethod
    def forward(ctx: Context, x, y, reduction="mean"):
        _check_reduction(reduction)
        xp = array_module(x, y)
        losses = xp.log1p(xp.exp(-xp.abs(x)))
        losses += xp.maximum(x, 0)
        losses -= x * y
        ctx.x, ctx.y, ctx.reduction, ctx.count, ctx.shape = x, y, reduction, losses.size, losses.shape
        return _reduce(losses, reduction)

    @staticmethod
    def backward(ctx: Context, grad):
        scale = _reduction_scale(grad, ctx.count, ctx.reduction)
        need_x, need_y = ctx.needs_input_grad
        grad_x = grad_y = None
        if need_x:
            grad_x = stable_sigmoid(ctx.x) - ctx.y
            grad_x *= scale
        if need_y:  # in the broadcast shape, even where x alone is smaller (a 0-d logit)
            grad_y = array_module(ctx.x).broadcast_to(-ctx.x * scale, ctx.shape)
        return grad_x, grad_y

    @samples
    def samples(rng):
        yield (rng.standard_normal((4, 3)) * 3, rng.random((4, 3))), {"reduction": "mean"}
        yield (rng.standard_normal(5), rng.random(5)), {"reduction": "sum"}
        yield (rng.standard_normal((2, 3)), rng.random((2, 3))), {"reduction": "none"}


@register
class Dropout(Op):
    """x * mask, with the mask (zeros and 1/(1-p), drawn by the caller) a constant input, so
    the op itself is deterministic."""

    name = "dropout"
    nondiff = (1,)

    @staticmethod
    def forward(ctx: Context, x, mask):
        ctx.mask = mask
        return x * mask

    @staticmethod
    def backward(ctx: Context, grad):
        return grad * ctx.mask, None

    @samples
    def samples(rng):
        yield (rng.standard_normal((4, 5)), (rng.random((4, 5)) > 0.3) / 0.7), {}


@register
class Embedding(Op):
    """weight[indices]: rows of a (V, D) table for integer indices of any shape.

    Inputs are (indices, weight), as torch's F.embedding(input, weight); the backward
    scatter-adds the output gradient into the rows that were looked up, or with `sparse`
    (torch's `sparse=True`) hands them over as a RowSparse, never a table-sized array.
    """

    name = "embedding"
    nondiff = (0,)

    @staticmethod
    def forward(ctx: Context, indices, weight, sparse=False):
        if indices.dtype.kind not in "iu":
            raise TypeError(f"embedding indices must be integers, got {indices.dtype}")
        n_rows = weight.shape[0]
        if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= n_rows):
            raise IndexError(f"embedding indices must lie in [0, {n_rows})")
        ctx.indices, ctx.weight_shape, ctx.sparse = indices, weight.shape, bool(sparse)
        return array_module(weight).take(weight, indices, axis=0)

    @staticmethod
    def backward(ctx: Context, grad):
        rows = grad.reshape(-1, *ctx.weight_shape[1:])
        if ctx.sparse:
            return None, RowSparse(ctx.indices.reshape(-1).astype(np.int64, copy=False), rows, ctx.weight_shape)
        grad_w = array_module(grad).zeros(ctx.weight_shape, dtype=grad.dtype)
        scatter_add_rows(grad_w, ctx.indices.reshape(-1), rows)
        return None, grad_w

    @samples
    def samples(rng):
        yield (np.array([[0, 2, 2], [4, 0, 2]]), rng.standard_normal((5, 3))), {}
        yield (np.array([[0, 2, 2], [4, 0, 2]]), rng.standard_normal((5, 3))), {"sparse": True}
        yield (np.array([1, 1, 1]), rng.standard_normal((3, 2))), {}


@register
class LayerNorm(Op):
    """Layer normalisation over the trailing `normalized_shape` axes, with optional
    elementwise weight and bias: inputs (x), (x, weight) or (x, weight, bias).

    The fused backward: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
    """

    name = "layer_norm"

    @staticmethod
    def forward(ctx: Context, x, weight=None, bias=None, normalized_shape=(), eps=1e-5):
        normalized_shape = tuple(normalized_shape)
        k = len(normalized_shape)
        if k == 0 or x.shape[x.ndim - k:] != normalized_shape:
            raise ValueError(f"normalized_shape {normalized_shape} does not end the input shape {x.shape}")
        xp = array_module(x)
        x2 = x.reshape(-1, int(np.prod(normalized_shape)))
        xhat = x2 - x2.mean(axis=1, keepdims=True)
        variance = (xhat * xhat).mean(axis=1, keepdims=True)
        variance += eps
        rstd = 1 / xp.sqrt(variance)
        xhat *= rstd
        ctx.xhat, ctx.rstd, ctx.x_shape, ctx.param_shape = xhat, rstd, x.shape, normalized_shape
        ctx.weight, ctx.has_bias = (None if weight is None else weight.reshape(-1)), bias is not None
        if weight is None:
            return xhat.reshape(x.shape)
        out = xhat * ctx.weight
        if bias is not None:
            out += bias.reshape(-1)
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx: Context, grad):
        xhat, rstd, need = ctx.xhat, ctx.rstd, ctx.needs_input_grad
        g2 = grad.reshape(xhat.shape)
        dxhat = g2 if ctx.weight is None else g2 * ctx.weight
        grad_x = None
        if need[0]:
            projection = (dxhat * xhat).mean(axis=1, keepdims=True)
            grad_x = dxhat - dxhat.mean(axis=1, keepdims=True)
            grad_x -= xhat * projection
            grad_x *= rstd
            grad_x = grad_x.reshape(ctx.x_shape)
        if ctx.weight is None:
            return (grad_x,)
        grad_w = (g2 * xhat).sum(axis=0).reshape(ctx.param_shape) if need[1] else None
        if not ctx.has_bias:
            return grad_x, grad_w
        return grad_x, grad_w, (g2.sum(axis=0).reshape(ctx.param_shape) if need[2] else None)

    @samples
    def samples(rng):
        yield (rng.standard_normal((3, 5)), rng.standard_normal(5), rng.standard_normal(5)), {
            "normalized_shape": (5,)
        }
        yield (rng.standard_normal((2, 3, 2, 2)), rng.standard_normal((2, 2)), rng.standard_normal((2, 2))), {
            "normalized_shape": (2, 2),
            "eps": 1e-3,
        }
        yield (rng.standard_normal((4, 3)),), {"normalized_shape": (3,)}
