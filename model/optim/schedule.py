"""Learning-rate schedules over a job's planned number of updates.

The rate is a function of the update count alone, not of time or of who pushed: every shard
(and a single-process run) computes it from its own count, so they agree without talking, and
a shard restored from a checkpoint picks the schedule up where its count left off.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

KINDS = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class Schedule:
    """`constant`; or from `lr` down to `final_lr` over `total` updates, in a straight line
    (`linear`) or along half a cosine (`cosine`, SGDR without restarts). Past `total` the rate
    stays at `final_lr`."""

    kind: str = "constant"
    lr: float = 0.01
    final_lr: float = 0.0
    total: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"schedule: expected one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.total < 1:
            raise ValueError(f"schedule: total updates must be >= 1, got {self.total}")

    def lr_at(self, update: int) -> float:
        """The learning rate of update number `update` (0 for the first)."""
        if self.kind == "constant":
            return self.lr
        progress = min(1.0, max(0, update) / self.total)
        if self.kind == "linear":
            share = 1.0 - progress
        else:
            share = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.final_lr + (self.lr - self.final_lr) * share


def split(optimizer: dict, total: int) -> tuple[dict, Schedule]:
    """A job's `optimizer:` section as the update rule's settings (for `optim.make`) and its
    schedule, which spans `total` updates."""
    rule = dict(optimizer)
    kind = rule.pop("schedule", "constant")
    final_lr = rule.pop("final_lr", 0.0)
    return rule, Schedule(kind, float(rule.get("lr", 0.01)), float(final_lr), max(1, int(total)))
