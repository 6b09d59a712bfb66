"""This worker's share of the training data, re-cut among the live workers when that set changes.

When workers die, the survivors re-cut the data among themselves from the next epoch on, so no
partition goes unread. Before the first heartbeat has named the live workers, a worker takes
the share its rank has among all the job's workers. Only the job's own workers share the data:
external workers (`workers.external`, ranks from `workers.count` on) bring their own.
"""
from __future__ import annotations

import collections
import logging

from .session import Session

log = logging.getLogger(__name__)


class Partition:
    """This worker's batches, in order; a few may be drawn early (`peek`) and are then handed out in turn."""

    def __init__(self, data, session: Session, batch_size: int, seed: int, sharing: int):
        """`sharing`: how many of the job's workers cut the data among them (`workers.count`)."""
        self.data, self.session, self.batch_size, self.seed = data, session, batch_size, seed
        self.sharing = sharing
        self.live: tuple[int, ...] = ()
        self.epoch = 0
        self.batches = None
        self.ahead: collections.deque = collections.deque()  # batches drawn early by `peek`

    def next(self, step: int):
        """The batch of `step`: `(x, y)`."""
        return self.ahead.popleft() if self.ahead else self._draw(step)

    def peek(self, step: int, first: int, count: int) -> list:
        """The `count` batches from step step + 1 + first on, drawn now (their rows are read
        before the steps that use them) and handed out by `next` in turn."""
        while len(self.ahead) < first + count:
            self.ahead.append(self._draw(step + 1 + len(self.ahead)))
        return [self.ahead[i] for i in range(first, first + count)]

    def _draw(self, step: int):
        live = self._sharing()
        if live != self.live:
            if self.live:
                log.info("%s: workers now %s: re-cutting the data", self.session.name, list(live))
            per_epoch = max(1, self.data.steps_per_epoch(self.batch_size, len(live)))
            self.epoch = step // per_epoch + (1 if self.live else 0)
            rank, world = live.index(self.session.rank), len(live)
            self.batches = self.data.batches(rank, world, self.batch_size, self.seed, epoch_start=self.epoch)
            self.live = live
        return next(self.batches)

    def _sharing(self) -> tuple[int, ...]:
        """The live workers that cut the data among them, this one included; before the first
        heartbeat has named them, all the job's own workers."""
        if not self.session.live:
            return tuple(sorted({*range(self.sharing), self.session.rank}))
        return tuple(sorted({*(r for r in self.session.live if r < self.sharing), self.session.rank}))
