"""Fault injection declared in the job config (`faults:`), so users can rehearse failures.

This part acts on the client side of the data plane: a node asks `FaultPlan` before each
request whether to delay it. Each node draws from its own seeded generator, so a rehearsal
replays the same way.
"""
from __future__ import annotations

import time

import numpy as np


class FaultPlan:
    def __init__(self, faults: list[dict], role: str, rank: int, seed: int = 0):
        self.faults = [f for f in faults if _targets(f, role, rank)]
        self.rng = np.random.default_rng([seed, rank, 0xFA])

    def _fires(self, kind: str, op: str) -> list[dict]:
        return [f for f in self.faults if f["kind"] == kind and f.get("op", "any") in ("any", op)
                and self.rng.random() < f.get("fraction", 1.0)]

    def delay(self, op: str) -> float:
        """Sleep as the `delay` faults for `op` say; return the seconds slept."""
        slept = sum(f["seconds"] for f in self._fires("delay", op))
        if slept:
            time.sleep(slept)
        return slept


def _targets(fault: dict, role: str, rank: int) -> bool:
    return fault.get("role") in (None, role) and fault.get("rank") in (None, rank)
