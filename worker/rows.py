"""Which keys a worker reads and pushes when its embedding tables travel by rows.

With `compression.rows` a worker reads, of each table its model names (`row_tables()`), only
the rows the coming batches use (`rows_used(ids)`), and every other parameter whole; it pushes
the same for the batches it has computed, whose gradient is zero on every other row. What the
worker sees and what the shards apply are the same as without it, key for key: the rows it
does not read, it does not use, and the rows it does not push carry a zero gradient, which a
dense push would have carried as zeros (so momentum, Adam and weight decay still act on them
on the shard, exactly as before; where a zero changes nothing, the shard skips them:
`Rule.zero_is_noop`).

`RowGradients` keeps the outgoing gradient at the cost of the rows too: the engine hands a
table's gradient over as a RowSparse (`model/sparse.py`), which is added into the outgoing
buffer at its rows only, and the norm, the clipping and the averaging over `push_every`
steps read and write only the keys the push carries. The buffers are table-sized (the client
and shared memory address a gradient by key), allocated once; each remembers the keys it last
carried and clears just those before it is filled again, so no step pays for the whole table.
"""
from __future__ import annotations

import collections
import math
from collections.abc import Iterable

import numpy as np

from downpour.model import optim
from downpour.model.flat import FlatParameters
from downpour.ps.client import spans

from .models import row_tables


class RowPlan:
    """The key spans for a set of batches: the dense parameters, plus the tables' rows they use."""

    def __init__(self, net, flat: FlatParameters):
        names = row_tables(net)
        self.net = net
        where = {name: (start, end) for (name, _), start, end in zip(flat.specs, flat.offsets, flat.offsets[1:])}
        shapes = dict(flat.specs)
        self.tables = {name: (where[name][0], int(np.prod(shapes[name][1:], dtype=np.int64))) for name in names}
        self.dense = spans.union(*(spans.whole(*where[name]) for name, _ in flat.specs if name not in self.tables))
        self._recent: collections.deque = collections.deque(maxlen=8)

    def keys(self, batches: Iterable[np.ndarray]) -> spans.Spans:
        """Every key that a step on any of `batches` (model inputs) reads or changes."""
        return spans.union(self.dense, *(part for x in batches for part in self._rows_of(x)))

    def _rows_of(self, x: np.ndarray) -> list[spans.Spans]:
        """The spans of the rows batch `x` uses, kept for the few batches between the read
        that fetches a batch's rows and the push that sends its gradient."""
        for seen, parts in self._recent:
            if seen is x:
                return parts
        used = self.net.rows_used(x)
        parts = [spans.of_rows(offset, width, used[name]) for name, (offset, width) in self.tables.items()]
        self._recent.append((x, parts))
        return parts


class RowGradients:
    """The gradients a worker pushes by rows, in its outgoing buffers, at the cost of the keys
    it touches: `gather` a batch's gradient into a buffer, `finish` it for the push (average,
    norm, clipping, on the pushed keys alone), and `sent` records which keys the buffer now holds."""

    def __init__(self, flat: FlatParameters, plan: RowPlan):
        self.flat, self.plan = flat, plan
        self._held: dict[int, spans.Spans] = {}   # by buffer: the keys it may hold that are not zero

    def gather(self, buf: np.ndarray, first: bool) -> None:
        """Add the model's gradients into `buf`, after clearing what it last carried if `first`."""
        if first:
            held = self._held.pop(id(buf), None)
            if held is None:          # never used, or its keys unknown: clear it whole, once
                buf.fill(0.0)
            else:
                _fill(buf, held, 0.0)
        self.flat.add_grads(buf)

    @property
    def poison_key(self) -> int:
        """A key every push carries (where a fault plan puts its NaN): the first dense key, or 0."""
        return int(self.plan.dense[0][0]) if self.plan.dense[0].size else 0

    def finish(self, buf: np.ndarray, keys: spans.Spans, accumulated: int, clip_norm: float | None) -> float:
        """Average the `accumulated` gradients in `buf` at `keys`, clip them to `clip_norm`;
        return the norm before clipping (of the average)."""
        values = spans.gather(buf, 0, keys)
        if accumulated > 1:
            values /= accumulated
        norm = math.sqrt(float(np.dot(values, values)))
        if clip_norm and math.isfinite(norm):
            optim.clip_grad_norm_(values, clip_norm)
        spans.scatter(buf, 0, keys, values)
        return norm

    def sent(self, buf: np.ndarray, keys: spans.Spans) -> None:
        """`buf` now holds a gradient at `keys` (and zeros elsewhere) until it is gathered again."""
        self._held[id(buf)] = keys


def _fill(buf: np.ndarray, keys: spans.Spans, value: float) -> None:
    slices, index, _ = spans.pieces(keys, 0)
    for a, b, _ in slices:
        buf[a:b] = value
    if index.size:
        buf[index] = value
