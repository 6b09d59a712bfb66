"""Which keys a worker reads and pushes when its embedding tables travel by rows.

With `compression.rows` a worker reads, of each table its model names (`row_tables()`), only
the rows the coming batches use (`rows_used(ids)`), and every other parameter whole; it pushes
the same for the batches it has computed, whose gradient is zero on every other row. What the
worker sees and what the shards apply are the same as without it, key for key: the rows it
does not read, it does not use, and the rows it does not push carry a zero gradient, which a
dense push would have carried as zeros (so momentum, Adam and weight decay still act on them
on the shard, exactly as before; where a zero changes nothing, the shard skips them:
`Rule.zero_is_noop`).

The training loop asks a `keys` object for the keys of each read and push: `AllKeys` (no keys
named: every key moves) or `ByRows`.

The gradients travel at the cost of the rows too (`AccruedByRows`): the engine hands a table's
gradient over as a RowSparse (`model/sparse.py`), added into the outgoing buffer at its rows
only, and the mean over `push_every` steps, the norm and the clipping read and write only the
keys the push carries. The buffers are table-sized (the client and shared memory address a
gradient by key) but allocated once; each remembers the keys it last carried and clears just
those before it sums again, so no step pays for the whole table.
"""
from __future__ import annotations

import collections
from collections.abc import Iterable

import numpy as np

from downpour.model.flat import FlatParameters
from downpour.ps import spans

from .models import row_tables
from .partition import Partition


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
        self._keyed: collections.deque = collections.deque(maxlen=8)  # reads and pushes: a few steps

    def keys(self, batches: Iterable[np.ndarray]) -> spans.Spans:
        """Every key that a step on any of `batches` (model inputs) reads or changes. The same
        batches get the very same spans (the read that fetches a batch's rows and the push of
        its gradient name one object), which the client packs for a header once."""
        batches = tuple(batches)
        for seen, keys in self._keyed:
            if len(seen) == len(batches) and all(a is b for a, b in zip(seen, batches)):
                return keys
        keys = spans.union(self.dense, *(part for x in batches for part in self._rows_of(x)))
        self._keyed.append((batches, keys))
        return keys

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


class AllKeys:
    """A job that moves every key: reads and pushes name none."""

    def computed(self, x: np.ndarray) -> None:
        """Nothing to note: a push sends every key."""

    def read(self, step: int) -> dict:
        return {}

    def pushed(self) -> dict:
        return {}


class ByRows:
    """A job by rows: a read names the keys of the batches it serves, a push those of the batches
    it sums (`ShardClient.start`'s `read_spans` and `grad_spans`)."""

    def __init__(self, plan: RowPlan, partition: Partition, ahead: int, fetch_every: int):
        """A read after step s serves `fetch_every` batches from step s + 1 + `ahead` on (one
        step later when it travels while the next step computes)."""
        self.plan, self.partition, self.ahead, self.fetch_every = plan, partition, ahead, fetch_every
        self._computed: list[np.ndarray] = []  # the inputs of the batches since the last push

    def computed(self, x: np.ndarray) -> None:
        """Note that a step computed on input `x`: the next push sends its rows."""
        self._computed.append(x)

    def read(self, step: int) -> dict:
        """The keys for a read after `step`: drawing the batches it serves now."""
        served = self.partition.peek(step, self.ahead, self.fetch_every)
        return {"read_spans": self.plan.keys(x for x, _ in served)}

    def pushed(self) -> dict:
        """The keys for a push of the batches computed since the last one."""
        keys = self.plan.keys(self._computed)
        self._computed = []
        return {"grad_spans": keys}


class AccruedByRows:
    """The accrued gradients of a job by rows (`accrued.Accrued`'s part), at the cost of the keys
    its batches touch: summed into the outgoing buffers, taken in turn, each zero outside the
    keys it last carried."""

    def __init__(self, buffers: list[np.ndarray], flat: FlatParameters, plan: RowPlan):
        self.buffers, self.flat = buffers, flat
        self.poison_key = int(plan.dense[0][0]) if plan.dense[0].size else 0  # a key every push carries
        self.count = 0
        self.turn = 0
        self._held: dict[int, spans.Spans | None] = dict.fromkeys(range(len(buffers)))  # None: unknown
        self._taken: spans.Spans | None = None

    @property
    def current(self) -> np.ndarray:
        return self.buffers[self.turn]

    def add(self, flat: FlatParameters) -> None:
        """Add the model's gradient (a RowSparse at its rows) to the sum, after clearing the
        keys the buffer last carried if this is the first gradient of a new sum."""
        total = self.current
        if self.count == 0:
            held = self._held[self.turn]
            if held is None:         # never used: clear it whole, once
                total.fill(0.0)
            else:
                spans.clear(total, 0, held)
        flat.add_grads(total)
        self.count += 1

    def poison(self) -> None:
        """Make the sum NaN where the push will carry it (fault injection)."""
        self.current[self.poison_key] = np.nan

    def take(self, keys: spans.Spans) -> tuple[np.ndarray, np.ndarray]:
        """The buffer to push (the mean of the sum at `keys`, zero elsewhere) and the values of
        its keys, packed: what the norm is taken of and clipping scales (see `clipped`)."""
        grad, self._taken = self.current, keys
        values = spans.gather(grad, 0, keys)
        if self.count > 1:
            values /= self.count
            spans.scatter(grad, 0, keys, values)
        self._held[self.turn] = keys
        self.count = 0
        self.turn = (self.turn + 1) % len(self.buffers)
        return grad, values

    def clipped(self, values: np.ndarray) -> None:
        """Write the taken values back after clipping scaled them."""
        spans.scatter(self.buffers[(self.turn - 1) % len(self.buffers)], 0, self._taken, values)
