"""The accrued gradients: the sum of the minibatch gradients computed since the last push."""
from __future__ import annotations

import numpy as np

from downpour.model.flat import FlatParameters


class Accrued:
    """Gradients summed in the very buffer their push leaves from (`ShardClient.gradient_buffers`:
    in shared memory, a shard on this host reads it without a copy).

    A push that is still travelling (overlap) reads its buffer until it is answered, so with two
    buffers they are taken in turn: the next steps sum into the other one.
    """

    def __init__(self, buffers: list[np.ndarray], push_every: int):
        self.buffers = buffers
        self.count = 0
        self.turn = 0

    @property
    def current(self) -> np.ndarray:
        return self.buffers[self.turn]

    def add(self, flat: FlatParameters) -> None:
        """Add the model's gradient (as `backward` left it) to the sum."""
        total = self.current
        if self.count == 0:
            flat.gather_grads(out=total)
        else:  # added where it stands: a table's RowSparse row by row, in the order a job by rows adds it
            flat.add_grads(total)
        self.count += 1

    def poison(self) -> None:
        """Make the sum NaN (fault injection: rehearse a diverging job)."""
        self.current[0] = np.nan

    def take(self, keys=None) -> tuple[np.ndarray, np.ndarray]:
        """The mean of the gradients summed, for a push, twice: as the buffer to push and as the
        values its norm is taken of and clipping scales (here the same array; `keys` name what a
        push by rows carries, `rows.AccruedByRows`). The next gradients start a new sum."""
        grad = self.current
        if self.count > 1:
            grad /= self.count
        self.count = 0
        self.turn = (self.turn + 1) % len(self.buffers)
        return grad, grad

    def clipped(self, values: np.ndarray) -> None:
        """Nothing to write back: clipping scaled the buffer itself."""
