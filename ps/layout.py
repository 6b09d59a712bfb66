"""The layout: every parameter in one flat float32 key space, cut into one contiguous range per shard.

Ranges are balanced by bytes, not by tensors, so one big embedding or weight matrix may span
several shards and no shard gets more than its share plus one alignment unit. The layout is a
pure function of the parameter spec and the shard count: every process computes the same one,
and the fingerprint lets them check that they did.

A table larger than one shard's memory budget (`shards.memory_mb`) is therefore split across
shards like any tensor; `check_memory` refuses, before anything starts, a job whose shards
would hold more than the budget (weights, the update rule's state, a backup range), naming
the shard count that fits. Hashed features spread a batch's rows uniformly over a table, so
ranges balanced by bytes also balance the rows the batches touch (summary.json's
`key_updates_per_shard` shows it for a run).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from downpour.model import optim
from downpour.model.optim import schedule

ALIGN = 16  # elements (64 bytes, a cache line): range boundaries fall on multiples of this


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class Layout:
    params: tuple[ParamSpec, ...]
    offsets: tuple[int, ...]          # where each parameter starts in the key space
    ranges: tuple[tuple[int, int], ...]  # [lo, hi) of each shard
    dtype: str = "float32"

    @property
    def total(self) -> int:
        return self.offsets[-1] + self.params[-1].size if self.params else 0

    @property
    def num_shards(self) -> int:
        return len(self.ranges)

    def shard_of(self, key: int) -> int:
        """The shard owning flat key `key`."""
        for shard, (lo, hi) in enumerate(self.ranges):
            if lo <= key < hi:
                return shard
        raise KeyError(f"key {key} outside the key space [0, {self.total})")

    def pieces(self, shard: int) -> list[tuple[str, int, int, int]]:
        """The parts of parameters that shard `shard` holds: (name, start within the parameter,
        start within the shard's range, length)."""
        lo, hi = self.ranges[shard]
        out = []
        for spec, off in zip(self.params, self.offsets):
            a, b = max(lo, off), min(hi, off + spec.size)
            if a < b:
                out.append((spec.name, a - off, a - lo, b - a))
        return out

    def to_dict(self) -> dict:
        return {"params": [[p.name, list(p.shape)] for p in self.params],
                "shards": self.num_shards, "dtype": self.dtype}

    def fingerprint(self) -> str:
        """A short digest of the spec and the cut: equal fingerprints mean equal layouts."""
        blob = json.dumps([self.to_dict(), self.ranges], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def make_layout(params: Iterable[ParamSpec | tuple], num_shards: int, align: int = ALIGN) -> Layout:
    """Lay `params` out in order and cut the key space into `num_shards` byte-balanced ranges."""
    specs = tuple(p if isinstance(p, ParamSpec) else ParamSpec(str(p[0]), tuple(int(n) for n in p[1]))
                  for p in params)
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    names = [p.name for p in specs]
    if len(set(names)) != len(names):
        raise ValueError("parameter names must be unique")
    offsets, total = [], 0
    for p in specs:
        offsets.append(total)
        total += p.size
    cuts = [0] + [min(total, _round(total * i / num_shards, align)) for i in range(1, num_shards)] + [total]
    ranges = tuple((cuts[i], cuts[i + 1]) for i in range(num_shards))
    return Layout(specs, tuple(offsets), ranges)


def shard_bytes(layout: Layout, state_buffers: int, replication: int = 1) -> list[int]:
    """What each shard holds: its range's float32 weights and `state_buffers` buffers of update
    rule state like them; with replication 2, the range it backs up (the one before it) too."""
    sizes = [hi - lo for lo, hi in layout.ranges]
    held = [n + (sizes[(rank - 1) % len(sizes)] if replication > 1 else 0) for rank, n in enumerate(sizes)]
    return [4 * (1 + state_buffers) * n for n in held]


def check_memory(layout: Layout, state_buffers: int, replication: int, budget_mb: float | None) -> None:
    """Raise ValueError, naming `shards.memory_mb`, if a shard would hold more than the budget."""
    if budget_mb is None:
        return
    need = shard_bytes(layout, state_buffers, replication)
    worst = max(range(len(need)), key=need.__getitem__)
    budget = budget_mb * (1 << 20)
    if need[worst] > budget:
        total = sum(need)
        fits = max(layout.num_shards + 1, math.ceil(total / budget))
        raise ValueError(
            f"shards.memory_mb: shard {worst} would hold {need[worst] / (1 << 20):.1f} MB (its keys' weights and "
            f"{state_buffers} buffer(s) of update-rule state{', and a backup range' if replication > 1 else ''}), "
            f"over the budget of {budget_mb:g} MB: use shards.count >= {fits}, or a larger budget")


def check_job_memory(config: dict, params: Sequence[tuple[str, Any]]) -> None:
    """`check_memory` for a job: its parameters (name, array) over its shards, with the state
    of its update rule, against `shards.memory_mb`."""
    rule, _ = schedule.split(config["optimizer"], 1)
    shards = config["shards"]
    check_memory(make_layout([(name, a.shape) for name, a in params], shards["count"]),
                 optim.make(rule.pop("type"), **rule).state_buffers, shards["replication"], shards["memory_mb"])


def layout_from_dict(d: dict) -> Layout:
    """Rebuild a layout from `Layout.to_dict()` (what travels in the coordinator's replies)."""
    return make_layout([(name, shape) for name, shape in d["params"]], int(d["shards"]))


def _round(x: float, align: int) -> int:
    return int(round(x / align)) * align


def specs_of(named_shapes: Sequence[tuple[str, Sequence[int]]]) -> list[ParamSpec]:
    return [ParamSpec(name, tuple(int(n) for n in shape)) for name, shape in named_shapes]
