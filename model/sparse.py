"""RowSparse: the gradient of a table of which a batch touched only some rows.

A bag of hashed features reads a few thousand rows of a table of millions; the gradient is
zero on every other row. Made dense it would cost the whole table on every step (in memory,
in the optimizer, on the wire), so the ops that look rows up hand the engine a `RowSparse`:
the row ids it touched (`rows`, int64, repeats allowed, in any order) and what to add at each
(`values`, one row each). `to_dense()` builds the table-shaped array when one is really needed.

The engine accumulates gradients (and only the engine): two RowSparse of one table
concatenate (nothing is summed until someone asks, `coalesce`); a RowSparse meeting a dense
gradient of the same tensor is added into it, which is then dense anyway. `values` belong to
the RowSparse (an op gives it arrays of its own), so whoever holds it may scale them in place.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import jit
from .backend import array_module

# Below this many rows np.add.at costs well under a millisecond, less than loading Numba costs a
# process (~0.5 s); above it the kernel wins by 10x (90 000 rows of 7 into a table of 2^22: 4 ms
# against 48 ms, measured on the 2-core test machine).
MIN_ROWS = 4096
_jit = jit.kernel(cache=True, nogil=True)


@_jit
def _add_rows_kernel(target, rows, values):
    for i in range(rows.size):
        r = rows[i]
        for j in range(values.shape[1]):
            target[r, j] += values[i, j]


def add_rows(target: Any, rows: Any, values: Any, use_numba: bool | None = None) -> None:
    """target[rows[k]] += values[k] for k in order, a repeated row adding one value after the
    other (as np.add.at does, so the Numba loop and NumPy give the same bits)."""
    if rows.size == 0:
        return
    xp = array_module(target)
    if xp is not np:
        import cupyx  # noqa: PLC0415 - only on the CuPy backend

        cupyx.scatter_add(target, rows, values)
        return
    flat_rows = target.reshape(target.shape[0], -1) if target.flags.c_contiguous else None
    if flat_rows is not None and jit.use(use_numba, target, pays=rows.size >= MIN_ROWS):
        _add_rows_kernel(flat_rows, rows, values.reshape(rows.size, -1))
    else:
        np.add.at(target, rows, values)


class RowSparse:
    """Rows `rows` of a `shape`-d gradient hold `values` (summed where a row repeats); all
    other rows are zero."""

    __slots__ = ("rows", "values", "shape")
    __array_ufunc__ = None  # `ndarray + RowSparse` asks RowSparse.__radd__, never broadcasts it

    def __init__(self, rows: Any, values: Any, shape: tuple[int, ...]):
        xp = array_module(values)
        self.rows = xp.asarray(rows).reshape(-1)
        self.values = values
        self.shape = tuple(int(n) for n in shape)
        if self.rows.dtype.kind not in "iu":
            raise TypeError(f"RowSparse rows must be integers, got {self.rows.dtype}")
        if values.shape != (self.rows.size, *self.shape[1:]):
            raise ValueError(f"RowSparse of shape {self.shape}: values of shape {values.shape} for "
                             f"{self.rows.size} rows, expected {(self.rows.size, *self.shape[1:])}")

    # ---- what an array would say -------------------------------------------------------
    @property
    def dtype(self) -> Any:
        return self.values.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"RowSparse({self.rows.size} rows of a {self.shape} {self.dtype} gradient)"

    def astype(self, dtype: Any) -> RowSparse:
        return RowSparse(self.rows, self.values.astype(dtype), self.shape)

    # ---- making it dense, or smaller ---------------------------------------------------
    def to_dense(self) -> Any:
        """The gradient as an array of `shape`: zeros, plus the values at their rows."""
        out = array_module(self.values).zeros(self.shape, self.dtype)
        self.add_to(out)
        return out

    def add_to(self, dense: Any) -> None:
        """dense[rows[k]] += values[k] for every k, in place (repeated rows accumulate)."""
        if dense.shape != self.shape:
            raise ValueError(f"cannot add a RowSparse of shape {self.shape} to an array of shape {dense.shape}")
        add_rows(dense, self.rows, self.values)

    def coalesce(self) -> RowSparse:
        """The same gradient with each row once, sorted, its values summed."""
        xp = array_module(self.values)
        unique, inverse = xp.unique(self.rows, return_inverse=True)
        summed = xp.zeros((unique.size, *self.shape[1:]), self.dtype)
        add_rows(summed, inverse.reshape(-1), self.values)
        return RowSparse(unique.astype(np.int64), summed, self.shape)

    # ---- arithmetic the engine and optimizers need -----------------------------------------
    def __add__(self, other: Any) -> Any:
        if isinstance(other, RowSparse):
            if other.shape != self.shape:
                raise ValueError(f"cannot add RowSparse gradients of shapes {self.shape} and {other.shape}")
            xp = array_module(self.values, other.values)
            dtype = np.result_type(self.dtype, other.dtype)
            return RowSparse(xp.concatenate([self.rows, other.rows]),
                             xp.concatenate([self.values.astype(dtype, copy=False),
                                             other.values.astype(dtype, copy=False)]), self.shape)
        xp = array_module(self.values, other)
        dense = xp.array(xp.broadcast_to(xp.asarray(other), self.shape), dtype=np.result_type(self.dtype, other))
        self.add_to(dense)  # a RowSparse meeting a dense gradient: the sum is dense anyway
        return dense

    __radd__ = __add__

    def __mul__(self, factor: Any) -> RowSparse:
        if np.ndim(factor) != 0:
            raise TypeError("a RowSparse gradient scales by a scalar only")
        return RowSparse(self.rows, self.values * factor, self.shape)

    __rmul__ = __mul__

    def __neg__(self) -> RowSparse:
        return RowSparse(self.rows, -self.values, self.shape)
