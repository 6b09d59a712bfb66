"""The ops that move elements without computing on them: reshape, transpose, indexing, joining.

Their backward passes route the gradient back to where each element came from; indexing with
repeated integer indices accumulates through `scatter_add_rows`, which the embedding op shares.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .backend import array_module
from .registry import Context, Op, register, samples


def _rand(rng, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


@register
class Reshape(Op):
    name = "reshape"

    @staticmethod
    def forward(ctx: Context, a, shape):
        ctx.shape = a.shape
        return a.reshape(shape)

    @staticmethod
    def backward(ctx: Context, grad):
        return (grad.reshape(ctx.shape),)

    @samples
    def samples(rng):
        yield (_rand(rng, 3, 4),), {"shape": (2, 6)}
        yield (_rand(rng, 2, 3, 4),), {"shape": (4, -1)}


@register
class Transpose(Op):
    """Permute axes; axes=None reverses them (numpy's default)."""

    name = "transpose"

    @staticmethod
    def forward(ctx: Context, a, axes=None):
        if axes is None:
            ctx.inverse = None
            return a.transpose()
        if len(axes) != a.ndim:
            raise ValueError(f"transpose: axes {tuple(axes)} do not permute the {a.ndim} axes of shape {a.shape}")
        axes = tuple(int(x) % a.ndim for x in axes)
        ctx.inverse = tuple(np.argsort(axes))
        return a.transpose(axes)

    @staticmethod
    def backward(ctx: Context, grad):
        return (grad.transpose(ctx.inverse),)

    @samples
    def samples(rng):
        yield (_rand(rng, 3, 4),), {"axes": None}
        yield (_rand(rng, 2, 3, 4),), {"axes": (1, -1, 0)}


def _is_basic_index(index: Any) -> bool:
    """Whether `index` uses only ints, slices, None and Ellipsis (so no element repeats)."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(
        p is None or p is Ellipsis or isinstance(p, (slice, int, np.integer)) and not isinstance(p, bool)
        for p in parts
    )


def scatter_add_rows(target, indices, rows) -> None:
    """target[indices[k]] += rows[k] for every k, repeated indices accumulating.

    Sorts the indices and sums each run of equal ones with `add.reduceat`, which is several
    times faster than `np.add.at` on rows; `indices` are non-negative row numbers.
    """
    xp = array_module(target)
    if xp is not np:
        import cupyx  # noqa: PLC0415 - only on the CuPy backend

        cupyx.scatter_add(target, indices, rows)
        return
    if indices.size == 0:
        return
    order = np.argsort(indices, kind="stable")
    ordered = indices[order]
    run_starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    target[ordered[run_starts]] += np.add.reduceat(rows[order], run_starts, axis=0)


def _scatter_add(target, index, values) -> None:
    xp = array_module(target)
    if xp is np:
        np.add.at(target, index, values)
    else:
        import cupyx  # noqa: PLC0415 - only on the CuPy backend

        cupyx.scatter_add(target, index, values)


@register
class GetItem(Op):
    """a[index] for basic slicing and integer/boolean array indexing.

    The backward scatters the gradient into zeros; repeated indices accumulate.
    """

    name = "getitem"

    @staticmethod
    def forward(ctx: Context, a, index):
        if isinstance(index, list):
            index = array_module(a).asarray(index)
        ctx.shape, ctx.index = a.shape, index
        return a[index]

    @staticmethod
    def backward(ctx: Context, grad):
        xp = array_module(grad)
        index, shape = ctx.index, ctx.shape
        out = xp.zeros(shape, dtype=grad.dtype)
        if _is_basic_index(index):
            out[index] = grad
        elif isinstance(index, xp.ndarray) and index.dtype.kind in "iu" and index.ndim >= 1:
            rows = xp.where(index < 0, index + shape[0], index).reshape(-1)
            scatter_add_rows(out.reshape(shape[0], -1), rows, grad.reshape(rows.size, -1))
        else:
            _scatter_add(out, index, grad)
        return (out,)

    @samples
    def samples(rng):
        yield (_rand(rng, 4, 5),), {"index": (slice(1, 3), Ellipsis)}
        yield (_rand(rng, 4, 5),), {"index": (2, slice(None, None, 2))}
        yield (_rand(rng, 4, 5),), {"index": (None, slice(None), -1)}
        yield (_rand(rng, 4, 5),), {"index": np.array([0, 2, 0, -1, 3])}
        yield (_rand(rng, 4, 5, 2),), {"index": np.array([[1, 1], [3, 0]])}
        yield (_rand(rng, 4, 5),), {"index": (np.array([0, 1, 1]), np.array([4, 2, 2]))}
        yield (_rand(rng, 4, 5),), {"index": (slice(None), np.array([3, 3, 0]))}
        yield (_rand(rng, 4, 5),), {"index": rng.random((4, 5)) > 0.5}
        yield (_rand(rng, 6),), {"index": [5, 0, 5]}


@register
class Concat(Op):
    """Join any number of arrays along an existing axis."""

    name = "concat"

    @staticmethod
    def forward(ctx: Context, *arrays, axis=0):
        ctx.axis = axis
        ctx.splits = np.cumsum([a.shape[axis] for a in arrays])[:-1].tolist()
        return array_module(*arrays).concatenate(arrays, axis=axis)

    @staticmethod
    def backward(ctx: Context, grad):
        return tuple(array_module(grad).split(grad, ctx.splits, axis=ctx.axis))

    @samples
    def samples(rng):
        yield (_rand(rng, 2, 3), _rand(rng, 4, 3)), {"axis": 0}
        yield (_rand(rng, 2, 3), _rand(rng, 2, 1), _rand(rng, 2, 2)), {"axis": -1}


@register
class Stack(Op):
    """Join any number of same-shape arrays along a new axis."""

    name = "stack"

    @staticmethod
    def forward(ctx: Context, *arrays, axis=0):
        ctx.axis = axis % (arrays[0].ndim + 1)
        return array_module(*arrays).stack(arrays, axis=axis)

    @staticmethod
    def backward(ctx: Context, grad):
        return tuple(array_module(grad).moveaxis(grad, ctx.axis, 0))

    @samples
    def samples(rng):
        yield (_rand(rng, 2, 3), _rand(rng, 2, 3)), {"axis": 0}
        yield (_rand(rng, 2, 3), _rand(rng, 2, 3), _rand(rng, 2, 3)), {"axis": -1}
