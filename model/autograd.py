"""The engine's backward pass: the walk of the recorded tape in reverse topological order.

Gradients are reduced to each operand's shape (un-broadcast) and accumulated here, and only
here, so ops stay simple (`Tensor.backward` checks its arguments and calls `backward`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import backend
from .registry import Context, Op
from .sparse import RowSparse

if TYPE_CHECKING:
    from .tensor import Tensor


def unbroadcast(grad: Any, shape: tuple[int, ...]) -> Any:
    """Sum `grad` over the axes along which an operand of `shape` was broadcast."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad if grad.shape == shape else grad.reshape(shape)


def backward(output: Tensor, grad: Any, retain_graph: bool) -> None:
    """Walk the tape from `output` (whose gradient is the array `grad`, of its shape and dtype)
    to the leaves: each op's vector-Jacobian product, un-broadcast and cast to its input, is
    summed per input; the leaves' `.grad` accumulate. Unless `retain_graph`, each node's op
    and saved context are released as it is passed."""
    grads: dict[int, Any] = {id(output): grad}
    handed_out = {id(_owner(grad))}  # leaves must never share (or own) the caller's array
    for node in reversed(_topological_order(output)):
        g = grads.pop(id(node), None)
        if g is None:
            continue
        if node._op is None:
            _accumulate_leaf(node, g, handed_out)
            continue
        input_grads = node._op.backward(node._ctx, g)
        for parent, needed, pg in zip(node._parents, node._ctx.needs_input_grad, input_grads):
            if not needed or pg is None:
                continue
            pg = unbroadcast(pg, parent.shape)
            if pg.dtype != parent.dtype:
                pg = pg.astype(parent.dtype)
            seen = grads.get(id(parent))
            grads[id(parent)] = pg if seen is None else seen + pg
        if not retain_graph:
            node._op, node._ctx, node._parents = _Released, None, ()


def _topological_order(root: Tensor) -> list[Tensor]:
    order: list[Tensor] = []
    visited: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in node._parents:
            if parent.requires_grad and id(parent) not in visited:
                stack.append((parent, False))
    return order


class _Released(Op):
    """Stands in for the op of a node whose graph a previous backward already freed."""

    name = "released"

    @staticmethod
    def backward(ctx: Context, grad: Any) -> tuple:
        raise RuntimeError(
            "backward through a graph a second time: its buffers were freed by the first "
            "backward (pass retain_graph=True to the first call to keep them)"
        )


def _owner(a: Any) -> Any:
    """The array that owns `a`'s memory (itself when it is not a view)."""
    base = getattr(a, "base", None)
    return a if base is None else base


def _accumulate_leaf(leaf: Tensor, g: Any, handed_out: set[int]) -> None:
    """Add `g` to a leaf's `.grad`, which must be a writable array shared with no other leaf.

    Ops may hand the same array to several inputs (add) or a read-only broadcast view (sum);
    such gradients are copied here, once, so optimizers may update `.grad` in place.
    A row-sparse gradient (`model.sparse`) stays row-sparse until it meets a dense one.
    """
    if isinstance(g, RowSparse) or isinstance(leaf.grad, RowSparse):
        _accumulate_rows(leaf, g)
        return
    if leaf.grad is not None:
        if getattr(leaf.grad.flags, "writeable", True) and leaf.grad.dtype == g.dtype:
            leaf.grad += g
        else:
            leaf.grad = leaf.grad + g
        return
    owner = _owner(g)
    if isinstance(g, np.generic) or not getattr(g.flags, "writeable", True) or id(owner) in handed_out:
        g = backend.array_module(g).array(g)
        owner = g
    handed_out.add(id(owner))
    leaf.grad = g


def _accumulate_rows(leaf: Tensor, g: Any) -> None:
    """Accumulate where a RowSparse is involved: two concatenate, and one added to a dense
    `.grad` of ours goes into it in place (the op gave the RowSparse values of its own)."""
    if leaf.grad is None:
        leaf.grad = g
    elif isinstance(g, RowSparse) and not isinstance(leaf.grad, RowSparse) and leaf.grad.flags.writeable:
        g.add_to(leaf.grad)
    else:
        leaf.grad = leaf.grad + g
