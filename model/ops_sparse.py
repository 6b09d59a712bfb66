"""Ops over bags of table rows, whose gradient is row-sparse (`model.sparse.RowSparse`).

`embedding_bag` is torch.nn.functional.embedding_bag on flat ids and bag offsets: bag b is
ids[offsets[b]:offsets[b + 1]] (the last bag runs to the end), reduced by sum or mean, each
entry optionally scaled by a per-sample weight (sum only, as in torch). An empty bag gives a
zero row; a repeated id counts as often as it appears. The table's gradient names only the
rows the bags read, never a table-sized array: a batch of hashed features reads thousands of
rows of a table of millions.
"""
from __future__ import annotations

import numpy as np

from .backend import array_module
from .registry import Context, Op, register, samples
from .sparse import RowSparse

MODES = ("sum", "mean")


def bag_sizes(offsets, n_ids: int):
    """How many ids each bag holds, checking the offsets as torch does (start at 0, never go
    down, never pass the end)."""
    xp = array_module(offsets)
    if offsets.ndim != 1 or offsets.dtype.kind not in "iu":
        raise TypeError(f"embedding_bag offsets must be a 1-D integer array, got {offsets.dtype} {offsets.shape}")
    if offsets.size:
        if int(offsets[0]) != 0:
            raise ValueError(f"embedding_bag offsets must start at 0, got {int(offsets[0])}")
        if int(offsets[-1]) > n_ids or (offsets.size > 1 and bool((offsets[1:] < offsets[:-1]).any())):
            raise ValueError(f"embedding_bag offsets must be non-decreasing and at most {n_ids} (the number of ids)")
    ends = xp.concatenate([offsets[1:], xp.asarray([n_ids], dtype=offsets.dtype)])
    return (ends - offsets).astype(np.int64)


@register
class EmbeddingBag(Op):
    """Inputs (ids, offsets, weight) or (ids, offsets, weight, per_sample_weights); attr `mode`."""

    name = "embedding_bag"
    nondiff = (0, 1)

    @staticmethod
    def forward(ctx: Context, ids, offsets, weight, per_sample_weights=None, mode="mean"):
        if mode not in MODES:
            raise ValueError(f"embedding_bag mode must be one of {MODES}, got {mode!r}")
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise TypeError(f"embedding_bag ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        n_rows = weight.shape[0]
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= n_rows):
            raise IndexError(f"embedding_bag ids must lie in [0, {n_rows})")
        if per_sample_weights is not None:
            if mode != "sum":
                raise ValueError(f"embedding_bag per_sample_weights need mode 'sum' (as in torch), got {mode!r}")
            if per_sample_weights.shape != ids.shape:
                raise ValueError(f"embedding_bag per_sample_weights of shape {per_sample_weights.shape} "
                                 f"for ids of shape {ids.shape}: expected the same shape")
        xp = array_module(weight)
        sizes = bag_sizes(offsets, ids.size)
        bag = xp.repeat(xp.arange(sizes.size), sizes)  # the bag of each id
        rows = xp.take(weight, ids, axis=0)
        ctx.rows = None
        if per_sample_weights is not None:
            ctx.rows = rows  # kept for the per-sample weights' gradient
            rows = rows * per_sample_weights.reshape(-1, *([1] * (weight.ndim - 1)))
        out = xp.zeros((sizes.size, *weight.shape[1:]), weight.dtype)
        filled = sizes > 0
        if ids.size:
            out[filled] = xp.add.reduceat(rows, offsets[filled], axis=0)
        scale = None
        if mode == "mean":
            scale = (1.0 / xp.maximum(sizes, 1)).astype(weight.dtype)
            out *= scale.reshape(-1, *([1] * (weight.ndim - 1)))
        ctx.ids, ctx.bag, ctx.scale, ctx.psw, ctx.weight_shape = ids, bag, scale, per_sample_weights, weight.shape
        return out

    @staticmethod
    def backward(ctx: Context, grad):
        need = ctx.needs_input_grad
        per_id = grad[ctx.bag]                     # each id's share of its bag's gradient (a new array)
        extra = [1] * (grad.ndim - 1)
        grad_psw = None
        if ctx.psw is not None and len(need) > 3 and need[3]:
            grad_psw = (per_id * ctx.rows).reshape(per_id.shape[0], -1).sum(axis=1)
        grad_w = None
        if need[2]:
            if ctx.scale is not None:
                per_id *= ctx.scale[ctx.bag].reshape(-1, *extra)
            elif ctx.psw is not None:
                per_id *= ctx.psw.reshape(-1, *extra)
            grad_w = RowSparse(ctx.ids.astype(np.int64, copy=False), per_id, ctx.weight_shape)
        if ctx.psw is None:
            return None, None, grad_w
        return None, None, grad_w, grad_psw

    @samples
    def samples(rng):
        ids = np.array([0, 4, 4, 2, 2, 2, 1])       # repeated ids, within a bag and across bags
        offsets = np.array([0, 3, 3, 6])            # bag 1 is empty, the last bag has one id
        for mode in MODES:
            yield (ids, offsets, rng.standard_normal((5, 3))), {"mode": mode}
        yield (ids, offsets, rng.standard_normal((5, 3)), rng.standard_normal(7)), {"mode": "sum"}
        yield (np.array([1, 1]), np.array([0, 0, 2]), rng.standard_normal((3, 2))), {"mode": "mean"}

