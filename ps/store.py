"""A shard's state for one key range, without sockets: weights, update rule, clocks, push log.

`ParameterStore` applies pushes (exactly once), holds bsp clocks until they complete, serves
reads the consistency model allows, and turns itself into a checkpoint and back, so all of
the shard's arithmetic and bookkeeping can be tested without a network.
"""
from __future__ import annotations

import collections
from typing import Any

import numpy as np

from downpour.model import optim
from downpour.model.optim import schedule

from . import spans
from .consistency import MAX_GAP, Consistency
from .dedupe import PushLog


class StalePush(ValueError):
    """A push for a clock that was already applied without it (the worker fell behind)."""


class ParameterStore:
    def __init__(self, lo: int, hi: int, weights: np.ndarray, optimizer: dict, mode: str,
                 staleness: int, workers: list[int], planned_updates: int = 1, buffer: np.ndarray | None = None):
        """`buffer`, if given, is where the weights live (a shared-memory segment, `ps/shm.py`);
        otherwise the store keeps its own copy."""
        self.lo, self.hi = lo, hi
        if buffer is None:
            self.weights = np.array(weights, dtype=np.float32)
        else:
            self.weights = buffer
            self.weights[...] = weights
        opt, self.schedule = schedule.split(optimizer, planned_updates)
        self.rule = optim.make(opt.pop("type"), **opt)
        self.rule.bind(self.weights)
        _warm_up(self.rule, hi - lo)
        self.consistency = Consistency(mode, staleness, workers)
        self.pushes = PushLog()
        self.bsp_sums: dict[int, np.ndarray] = {}
        self.bsp_counts: collections.Counter = collections.Counter()
        # the keys each pending bsp clock was pushed at, while all its pushes came by rows (else None)
        self.bsp_keys: dict[int, list[spans.Spans] | None] = {}
        self.pushes_applied = 0
        self.duplicates = 0
        self.updates_applied = 0
        self.key_updates = 0  # keys stepped, summed over updates: a push by rows counts its keys only
        self.push_staleness: collections.Counter = collections.Counter()
        self._snapshot: tuple[int, np.ndarray] | None = None
        self._scratch = np.empty(0, np.float32)  # pushes by rows spread here when the rule needs every key

    # ---- writes --------------------------------------------------------------------------
    def push(self, worker: int, clock: int, lo: int, hi: int, grad: np.ndarray, read_version: Any = None,
             keys: spans.Spans | None = None) -> bool:
        """Apply (or, in bsp, hold) one push; False if this push id was applied before.

        With `keys` (a push by rows), `grad` holds the values of those keys only, packed, and
        the gradient is zero everywhere else: where the update rule lets a zero change nothing
        (or is a lazy variant), only those keys are stepped; otherwise the push is spread to
        [lo, hi) first."""
        if self.pushes.seen(worker, clock, lo, hi):
            self.duplicates += 1
            return False
        try:
            apply_now, completed = self.consistency.push(worker, clock)
        except ValueError as exc:
            raise StalePush(str(exc)) from None
        if apply_now:
            if isinstance(read_version, int) and not isinstance(read_version, bool):
                self.push_staleness[min(MAX_GAP, max(0, self.updates_applied - read_version))] += 1
            if keys is not None and self.rule.steps_by_rows:
                self._step_at(spans.index(keys, self.lo), grad)
            else:
                self._step(lo, hi, grad if keys is None else self._spread(lo, hi, keys, grad))
        else:
            total = self.bsp_sums.get(clock)
            if total is None:
                total = self.bsp_sums[clock] = np.zeros_like(self.weights)
            if keys is None:
                total[lo - self.lo:hi - self.lo] += grad
            else:
                total[spans.positions(*keys) - self.lo] += grad
            held = self.bsp_keys.get(clock, [])
            self.bsp_keys[clock] = None if keys is None or held is None else [*held, keys]
            self.bsp_counts[clock] += 1
        self.pushes.add(worker, clock, lo, hi)
        self.pushes_applied += 1
        self.apply_completed(completed)
        return True

    def apply_completed(self, clocks: list[int]) -> None:
        """Apply the mean of each completed bsp clock, in clock order: at the keys its pushes
        named, when they all came by rows and the rule steps rows alone (a clock restored from
        a checkpoint, whose keys are not kept, steps every key)."""
        for c in clocks:
            total = self.bsp_sums.pop(c, None)
            count = self.bsp_counts.pop(c, 0)
            keys = self.bsp_keys.pop(c, None)
            if total is None or not count:
                continue
            if keys and self.rule.steps_by_rows:
                positions = spans.positions(*spans.union(*keys)) - self.lo
                values = total[positions]
                values /= count
                self._step_at(positions, values)
            else:
                total /= count
                self._step(self.lo, self.hi, total)

    def set_live(self, workers: list[int]) -> None:
        self.apply_completed(self.consistency.set_live(workers))

    def _spread(self, lo: int, hi: int, keys: spans.Spans, values: np.ndarray) -> np.ndarray:
        """The dense gradient of [lo, hi) that a push by rows stands for, in a scratch buffer
        that the step consumes at once."""
        if self._scratch.size < hi - lo:
            self._scratch = np.empty(hi - lo, np.float32)
        dense = self._scratch[:hi - lo]
        dense.fill(0.0)
        spans.scatter(dense, lo, keys, values)
        return dense

    def _step_at(self, positions: np.ndarray, values: np.ndarray) -> None:
        """Step only the pushed keys (positions in the range): the rule leaves the others as a
        zero gradient would (or, lazy, as they are)."""
        self._set_lr()
        self.rule.step_at(self.weights, values, positions)
        self.updates_applied += 1
        self.key_updates += positions.size

    def _set_lr(self) -> None:
        if self.schedule.kind != "constant":
            self.rule.lr = self.schedule.lr_at(self.updates_applied)

    def _step(self, lo: int, hi: int, grad: np.ndarray) -> None:
        self._set_lr()
        if lo == self.lo and hi == self.hi:
            self.rule.step(self.weights, grad)
        else:
            a, b = lo - self.lo, hi - self.lo
            self.rule.step(self.weights[a:b], grad, index=slice(a, b))
        self.updates_applied += 1
        self.key_updates += hi - lo

    @property
    def nbytes(self) -> int:
        """The bytes of the range's weights and of its update rule's state."""
        return int(self.weights.nbytes) + self.rule.state_nbytes

    # ---- reads ---------------------------------------------------------------------------
    def can_read(self, worker: int | None, clock: int) -> bool:
        return worker is None or self.consistency.can_read(worker, clock)

    def read(self, worker: int | None, clock: int, lo: int, hi: int) -> tuple[np.ndarray, int]:
        """A snapshot of [lo, hi) and the clock we have on record for the reader.

        Snapshot, not view: ZeroMQ sends from its own thread, so a view could be torn by the
        next in-place update. One copy per version of the weights serves every reader."""
        on_record = self.admit_read(worker, clock)
        if self._snapshot is None or self._snapshot[0] != self.updates_applied:
            self._snapshot = (self.updates_applied, self.weights.copy())
        return self.snapshot[lo - self.lo:hi - self.lo], on_record

    @property
    def snapshot(self) -> np.ndarray | None:
        """The copy of the weights that reads are served from (a new one per version)."""
        return self._snapshot[1] if self._snapshot is not None else None

    def admit_read(self, worker: int | None, clock: int) -> int:
        """Record a read at `clock` (one the consistency model allows); return the clock we
        have on record for the reader. A reader through shared memory copies the weights itself."""
        if worker is None:
            return clock
        self.consistency.join(worker)          # a (re)joining worker is waited for from now on
        self.consistency.record_read(worker, clock)
        return max(clock, self.consistency.clocks.get(worker, clock))

    # ---- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays and JSON-friendly metadata that `load_state_dict` restores bit for bit."""
        rule = self.rule.state_dict()
        arrays = {"weights": self.weights}
        arrays.update({f"rule.{k}": v for k, v in rule.items() if isinstance(v, np.ndarray)})
        arrays.update({f"bsp.{c}": s for c, s in self.bsp_sums.items()})
        c = self.consistency
        meta = {"lo": self.lo, "hi": self.hi, "updates": self.updates_applied, "pushes": self.pushes_applied,
                "key_updates": self.key_updates,
                "rule": {k: v for k, v in rule.items() if not isinstance(v, np.ndarray)},
                "clocks": {str(w): k for w, k in c.clocks.items()}, "applied_clock": c.applied_clock,
                "departed": {str(w): k for w, k in c.departed.items()},
                "pending": {str(k): sorted(v) for k, v in c.pending.items()},
                "bsp_counts": {str(k): v for k, v in self.bsp_counts.items()},
                "push_log": self.pushes.state()}
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        if (meta["lo"], meta["hi"]) != (self.lo, self.hi):
            raise ValueError(f"checkpoint holds keys [{meta['lo']}, {meta['hi']}), not [{self.lo}, {self.hi})")
        self.weights[...] = arrays["weights"]
        rule = dict(meta["rule"])
        rule.update({k[5:]: v for k, v in arrays.items() if k.startswith("rule.")})
        self.rule.load_state_dict(rule)
        self.rule.bind(self.weights)
        c = self.consistency
        c.clocks = {int(w): k for w, k in meta["clocks"].items()}
        c.departed = {int(w): k for w, k in meta.get("departed", {}).items()}
        c.applied_clock = meta["applied_clock"]
        c.pending = collections.defaultdict(set, {int(k): set(v) for k, v in meta["pending"].items()})
        self.bsp_sums = {int(k[4:]): np.array(v) for k, v in arrays.items() if k.startswith("bsp.")}
        self.bsp_counts = collections.Counter({int(k): v for k, v in meta["bsp_counts"].items()})
        self.bsp_keys = {}
        self.pushes = PushLog.from_state(meta["push_log"])
        self.updates_applied, self.pushes_applied = meta["updates"], meta["pushes"]
        self.key_updates = meta.get("key_updates", 0)
        self._snapshot = None


def _warm_up(like: optim.Rule, size: int) -> None:
    """Compile the update rule's kernel now, on a throwaway buffer, rather than on the first
    push, when a long pause would hold up the heartbeats that keep this shard alive. A range
    too small for the kernel (`optim.fused`) has nothing to compile."""
    if not optim.fused.use_kernel(size):
        return
    rule = optim.make(like.name, **like.hparams)
    buf = np.zeros(optim.fused.MIN_ELEMENTS, np.float32)
    rule.step(buf, np.zeros_like(buf))
