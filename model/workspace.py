"""Reusable scratch arrays for the big temporaries of convolution (im2col columns and such).

A freshly allocated multi-megabyte array costs one page fault per 4 KiB page on first touch,
because glibc hands large blocks back to the kernel when they are freed. For a LeNet-sized
convolution those faults cost more than the GEMM itself. An op that needs a large scratch
array for the span of one forward and backward takes it here and gives it back when nobody
can see it any more; the next step then reuses the same, already mapped, memory.

Only arrays that never escape the op may be given back. Arrays are pooled by element count
and dtype (a (T, B, H) array serves a later (T*B, H) request), a few per kind, so the pool
stays small.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import backend

_PER_KEY = 4
_free: dict[tuple, list[Any]] = {}


def _key(xp: Any, size: int, dtype: Any) -> tuple:
    return (xp.__name__, int(size), np.dtype(dtype).str)


def take(shape: tuple[int, ...], dtype: Any, like: Any = None) -> Any:
    """An uninitialised C-contiguous array of `shape` and `dtype` on the backend of `like`."""
    xp = backend.array_module(like) if like is not None else np
    size = int(np.prod(shape))
    stack = _free.get(_key(xp, size, dtype))
    if stack:
        return stack.pop().reshape(shape)
    return xp.empty(shape, dtype=dtype)


def give(array: Any) -> None:
    """Return an array from `take` (in any shape) once no live object refers to it any more."""
    if not array.flags.c_contiguous:
        raise ValueError("only whole, contiguous arrays from take() can be given back")
    stack = _free.setdefault(_key(backend.array_module(array), array.size, array.dtype), [])
    if len(stack) < _PER_KEY:
        stack.append(array)


def clear() -> None:
    """Drop every pooled array (to release memory after a phase with big activations)."""
    _free.clear()
