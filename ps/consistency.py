"""Consistency models as pure logic over worker clocks: no sockets, no arrays.

A worker's clock is the number of pushes it has made. Its push number c carries clock c
(0-based) and its reads carry the clock it is at.

- `async` (Downpour): every push is applied at once; every read is served at once.
- `ssp` with bound s: pushes are applied at once; a read at clock c is served only once every
  live worker has reached clock c - s (Ho et al., 2013).
- `bsp`: the pushes of clock c are held until every live worker has pushed clock c, then their
  mean is applied once; a read at clock c waits until clocks 0..c-1 have all been applied.

A worker that is declared dead or has finished leaves the live set, and nobody waits for it.
"""
from __future__ import annotations

import collections
from collections.abc import Iterable

MODES = ("async", "ssp", "bsp")
MAX_GAP = 64  # staleness histograms lump larger gaps together, so they stay small


class Consistency:
    def __init__(self, mode: str, staleness: int = 0, workers: Iterable[int] = ()):
        if mode not in MODES:
            raise ValueError(f"consistency mode {mode!r}: expected one of {MODES}")
        if staleness < 0:
            raise ValueError(f"staleness must be >= 0, got {staleness}")
        self.mode = mode
        self.staleness = staleness if mode == "ssp" else 0
        self.clocks: dict[int, int] = {w: 0 for w in workers}  # live workers -> pushes made
        self.departed: dict[int, int] = {}  # workers that left -> their clock, should they return
        self.applied_clock = 0           # bsp: clocks 0..applied_clock-1 have been applied
        self.pending: dict[int, set[int]] = collections.defaultdict(set)  # bsp: clock -> pushers
        self.staleness_seen: collections.Counter = collections.Counter()  # read gap -> count

    # ---- membership ------------------------------------------------------------------------
    @property
    def live(self) -> frozenset[int]:
        return frozenset(self.clocks)

    def min_clock(self) -> int:
        return min(self.clocks.values()) if self.clocks else self._floor()

    def _floor(self) -> int:
        return self.applied_clock if self.mode == "bsp" else 0

    def join(self, worker: int, clock: int | None = None) -> None:
        """A worker (re)joins. One that was here before carries on from its own clock, so no
        push of it is skipped (a stopped job resumed, a dead worker restarted), except that in
        bsp no clock already applied can be pushed again. A newcomer starts level with the
        slowest live worker (bsp: at the next clock to apply)."""
        if worker not in self.clocks:
            floor = self.applied_clock if self.mode == "bsp" else (min(self.clocks.values()) if self.clocks else 0)
            if clock is not None:
                start = clock
            elif worker in self.departed:
                start = self.departed.pop(worker)
                start = max(start, floor) if self.mode == "bsp" else start
            else:
                start = floor
            self.clocks[worker] = start

    def leave(self, worker: int) -> list[int]:
        """A worker died or finished. Returns the bsp clocks this completes (to apply now).

        Pushes it already made stay in their clocks' means: they were computed honestly."""
        if worker in self.clocks:
            self.departed[worker] = self.clocks.pop(worker)
        return self._complete_clocks()

    def set_live(self, workers: Iterable[int]) -> list[int]:
        """Adopt the coordinator's view of the live workers; returns completed bsp clocks."""
        workers = set(workers)
        completed: list[int] = []
        for w in list(self.clocks):
            if w not in workers:
                completed += self.leave(w)
        for w in workers:
            self.join(w)
        return completed + self._complete_clocks()

    # ---- pushes ----------------------------------------------------------------------------
    def push(self, worker: int, clock: int) -> tuple[bool, list[int]]:
        """Record push `clock` of `worker`. Returns (apply this push now?, bsp clocks complete).

        In bsp the caller buffers the gradient under `clock` and applies the buffered mean
        of each completed clock, in order."""
        if worker not in self.clocks:
            self.join(worker, clock)
        self.clocks[worker] = max(self.clocks[worker], clock + 1)
        if self.mode != "bsp":
            return True, []
        if clock < self.applied_clock:
            raise ValueError(f"worker {worker} pushed clock {clock}, which was already applied "
                             f"(the job is at clock {self.applied_clock})")
        self.pending[clock].add(worker)
        return False, self._complete_clocks()

    def _complete_clocks(self) -> list[int]:
        """Advance past every clock that all live workers have pushed (or, with nobody left,
        flush what is pending); return the ones that have pushes to apply, in order."""
        if self.mode != "bsp":
            return []
        done = []
        while True:
            c = self.applied_clock
            if self.clocks:
                if min(self.clocks.values()) <= c:
                    return done
            elif not self.pending:
                return done
            if self.pending.pop(c, None) is not None:
                done.append(c)
            self.applied_clock += 1

    # ---- reads -----------------------------------------------------------------------------
    def can_read(self, worker: int, clock: int) -> bool:
        if self.mode == "async" or not self.clocks and self.mode == "ssp":
            return True
        if self.mode == "ssp":
            return self.min_clock() >= clock - self.staleness
        return self.applied_clock >= clock

    def record_read(self, worker: int, clock: int) -> int:
        """Note a served read and return its staleness: how many clocks the slowest live
        worker lags behind the reader (never above s in ssp, 0 in bsp)."""
        gap = max(0, clock - self.min_clock()) if self.mode != "bsp" else max(0, clock - self.applied_clock)
        self.staleness_seen[min(gap, MAX_GAP)] += 1
        return gap

    def max_staleness(self) -> int:
        return max(self.staleness_seen, default=0)
