"""Fault injection declared in the job config (`faults:`), so users can rehearse failures.

Each node builds a `FaultPlan` for its own role and rank and asks it at the points where a
fault can strike: before sending a push (delay, drop, duplicate, corrupt), at every step
(kill, partition, nan, stall). Draws come from a generator seeded by the job, so a rehearsal
replays the same way. `kill ... at_seconds` is carried out by the launcher, which owns the
processes.

A `stall` stops a role from answering anything, its heartbeat included, for `seconds`, then
lets it go on as if nothing had happened, as a process stopped by SIGSTOP, a long garbage
collection or a swapped-out machine would: every role applies it to itself (`stall`), at its
own step (a worker's step, a shard's updates, the slowest worker's clock for the coordinator
and the evaluator) or `at_seconds` after it joined the job.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)


class FaultPlan:
    def __init__(self, faults: list[dict], role: str, rank: int, seed: int = 0, restarted: bool = False):
        # A process restarted after a `kill` is a new incarnation: the kill (or stall) does not strike again.
        self.faults = [f for f in faults if _targets(f, role, rank)
                       and not (restarted and f["kind"] in ("kill", "stall"))]
        self.made = time.monotonic()
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

    def stall(self, step: int | None, hold: Callable[[float], None] | None = None) -> float:
        """Carry out a `stall` due now (at `step`, or `at_seconds` after this plan was made),
        each once: `hold` silences the role's heartbeat thread for as long, and the caller's
        own loop sleeps here. Returns the seconds stalled."""
        for f in self.faults:
            if f["kind"] != "stall" or id(f) in self.fired:
                continue
            at_step, at_seconds = f.get("at_step"), f.get("at_seconds")
            if ((at_step is not None and step is not None and step >= at_step)
                    or (at_seconds is not None and time.monotonic() - self.made >= at_seconds)):
                self.fired.add(id(f))
                log.warning("fault injection: stalled for %.1f s (at step %s): answering nothing", f["seconds"], step)
                if hold is not None:
                    hold(f["seconds"])
                time.sleep(f["seconds"])
                log.warning("fault injection: the stall is over: carrying on")
                return f["seconds"]
        return 0.0

    def poisons(self, step: int) -> bool:
        """Whether a `nan` fault turns this step's gradient into NaN (to rehearse divergence)."""
        return any(f["kind"] == "nan" and f.get("at_step") == step for f in self.faults)

    def partitioned(self) -> bool:
        return time.monotonic() < self.partitioned_until


def _targets(fault: dict, role: str, rank: int) -> bool:
    return fault.get("role") in (None, role) and fault.get("rank") in (None, rank)
