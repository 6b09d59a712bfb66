"""Exactly-once pushes: remember which pushes were applied, so a resent push is acknowledged
again but applied only once.

A push is identified by (worker, clock, lo, hi): a worker's clock counts its pushes, and a
worker may push several sub-ranges at one clock. Per worker we keep the ids of the last
`window` clocks; anything older is taken as already applied (a worker never resends that far
back). The window travels in the shard's checkpoint, so a restarted shard neither re-applies
nor drops a push it acknowledged before the checkpoint.
"""
from __future__ import annotations

import numpy as np

WINDOW = 1024


class PushLog:
    def __init__(self, window: int = WINDOW):
        self.window = window
        self.high: dict[int, int] = {}                        # worker -> highest clock applied
        self.recent: dict[int, set[tuple[int, int, int]]] = {}  # worker -> {(clock, lo, hi)}

    def seen(self, worker: int, clock: int, lo: int, hi: int) -> bool:
        high = self.high.get(worker)
        if high is None:
            return False
        return clock <= high - self.window or (clock, lo, hi) in self.recent[worker]

    def add(self, worker: int, clock: int, lo: int, hi: int) -> None:
        ids = self.recent.setdefault(worker, set())
        ids.add((clock, lo, hi))
        high = max(self.high.get(worker, clock), clock)
        self.high[worker] = high
        if len(ids) > 2 * self.window:
            self.recent[worker] = {i for i in ids if i[0] > high - self.window}

    def state(self) -> dict:
        """A JSON-friendly copy, for checkpoints."""
        return {str(w): sorted(list(i) for i in ids) for w, ids in self.recent.items()}

    @classmethod
    def from_state(cls, state: dict, window: int = WINDOW) -> PushLog:
        log = cls(window)
        for w, ids in state.items():
            for clock, lo, hi in ids:
                log.add(int(w), clock, lo, hi)
        return log

    def to_array(self) -> np.ndarray:
        """The log as one int64 array of (worker, clock, lo, hi) rows: what a backup receives
        with a range's state (a header would outgrow its limit with many workers)."""
        rows = [(w, c, lo, hi) for w, ids in self.recent.items() for c, lo, hi in ids]
        return np.array(rows, np.int64).reshape(-1, 4)

    @classmethod
    def from_array(cls, rows: np.ndarray, window: int = WINDOW) -> PushLog:
        log = cls(window)
        for w, clock, lo, hi in np.asarray(rows, np.int64).reshape(-1, 4).tolist():
            log.add(w, clock, lo, hi)
        return log
