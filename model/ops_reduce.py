"""Reductions over axes (`sum`, `mean`, `max`): their gradients spread the output gradient back
over the reduced axes, as read-only broadcast views (the engine copies them where it keeps them).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .backend import array_module
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
