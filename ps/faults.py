"""Fault injection declared in the job config (`faults:`), so users can rehearse failures.

Each node builds a `FaultPlan` for its own role and rank and asks it at the points where a
fault can strike: before sending a push (delay, drop, duplicate, corrupt), at every step
(kill, partition, nan). Draws come from a generator seeded by the job, so a rehearsal replays the
same way. `kill ... at_seconds` is carried out by the launcher, which owns the processes.
"""
from __future__ import annotations

import logging
import os
import signal
import time

import numpy as np

log = logging.getLogger(__name__)


class FaultPlan:
    def __init__(self, faults: list[dict], role: str, rank: int, seed: int = 0, restarted: bool = False):
        # A process restarted after a `kill` is a new incarnation: the kill does not strike again.
        self.faults = [f for f in faults if _targets(f, role, rank) and not (restarted and f["kind"] == "kill")]
        self.rng = np.random.default_rng([seed, rank, 0xFA])
        self.partitioned_until = 0.0
        self.fired: set[int] = set()

    def fires(self, kind: str, op: str) -> bool:
        """Whether a `kind` fault strikes this `op` message now (each draws with its fraction)."""
        return any(f["kind"] == kind and f.get("op") in (None, "any", op) and self.rng.random() < f["fraction"]
                   for f in self.faults)

    def delay(self, op: str) -> float:
        """Sleep as the `delay` faults for `op` say; return the seconds slept."""
        slept = sum(f["seconds"] for f in self.faults if f["kind"] == "delay" and f.get("op") in (None, "any", op)
                    and self.rng.random() < f["fraction"])
        if slept:
            time.sleep(slept)
        return slept

    def at_step(self, step: int) -> None:
        """Carry out `kill` (SIGKILL ourselves, as a crash would) and `partition` faults due by
        `step` (a shard counts updates, which may jump past the exact number), each once."""
        for f in self.faults:
            if f["kind"] not in ("kill", "partition") or f.get("at_step") is None or step < f["at_step"]:
                continue
            if id(f) in self.fired:
                continue
            self.fired.add(id(f))
            if f["kind"] == "kill":
                log.warning("fault injection: killing this process at step %d", step)
                os.kill(os.getpid(), signal.SIGKILL)
            else:
                log.warning("fault injection: cut off for %.1f s at step %d", f["seconds"], step)
                self.partitioned_until = time.monotonic() + f["seconds"]

    def poisons(self, step: int) -> bool:
        """Whether a `nan` fault turns this step's gradient into NaN (to rehearse divergence)."""
        return any(f["kind"] == "nan" and f.get("at_step") == step for f in self.faults)

    def partitioned(self) -> bool:
        return time.monotonic() < self.partitioned_until


def _targets(fault: dict, role: str, rank: int) -> bool:
    return fault.get("role") in (None, role) and fault.get("rank") in (None, rank)
