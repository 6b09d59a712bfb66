"""Replication, the backup's side: the ranges this shard backs up, each as its primary sent it.

The coordinator assigns a backup (`ranges.py`): the shard hears it in a heartbeat reply
(`follow`) and reports it (`report`: assignment number, whether it holds the state yet). The
range's primary then sends the state, one array per STATE message, the last one with the
metadata (`state_part`); on a line of its own, so every replicated push that follows it
arrives after it. From then on the backup applies each replicated push (`receiving` checks
that it comes from the primary of the range's present epoch and assignment), and may be
promoted to serve the range (`promote`). Anything else is refused: a sender at an older epoch
is told it was deposed, one that arrives before the assignment is asked to send again.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np

from .dedupe import PushLog
from .store import ParameterStore
from .wire import Message, WireError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Backup:
    rng: int
    gen: int      # the assignment, as the coordinator numbered it
    epoch: int    # the range's epoch: whose pushes we take
    store: ParameterStore | None = None  # None until the primary's state is in
    parts: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


class Backups:
    def __init__(self, rank: int):
        self.rank = rank
        self.held: dict[int, Backup] = {}

    def follow(self, assigned: dict[str, dict]) -> None:
        """Adopt the coordinator's word: {range: {gen, epoch}}. A backup it no longer lists, or
        lists under another assignment, is dropped (its state may have missed pushes)."""
        wanted = {int(r): (a["gen"], a["epoch"]) for r, a in assigned.items()}
        for rng in list(self.held):
            if wanted.get(rng, (None,))[0] != self.held[rng].gen:
                log.info("shard %d: no longer the backup of range %d (#%d)", self.rank, rng, self.held[rng].gen)
                del self.held[rng]
        for rng, (gen, epoch) in wanted.items():
            if rng not in self.held:
                log.info("shard %d: backup of range %d (#%d): waiting for its state", self.rank, rng, gen)
                self.held[rng] = Backup(rng, gen, epoch)
            self.held[rng].epoch = epoch

    def report(self) -> dict[str, list]:
        """For the heartbeat: {range: [assignment, holds the state]}."""
        return {str(b.rng): [b.gen, b.store is not None] for b in self.held.values()}

    def stores(self) -> list[ParameterStore]:
        return [b.store for b in self.held.values() if b.store is not None]

    def _assigned(self, msg: Message) -> Backup:
        """The backup a replicated push or a state part is for, if its sender is the primary
        we back up: same range, epoch and assignment."""
        h = msg.header
        backup = self.held.get(h["range"])
        if backup is None or backup.gen != h["gen"]:
            raise WireError(f"shard {self.rank} is not the backup of range {h['range']} (#{h['gen']}) "
                            f"yet: send the state again once the coordinator confirms", retry=True)
        if h["epoch"] < backup.epoch:
            raise WireError(f"range {h['range']} is at epoch {backup.epoch}, not {h['epoch']}: "
                            f"the sender was deposed", deposed=True, epoch=backup.epoch)
        if h["epoch"] > backup.epoch:
            raise WireError(f"shard {self.rank} backs up range {h['range']} at epoch {backup.epoch}, "
                            f"not yet {h['epoch']}: ask again", retry=True)
        return backup

    def receiving(self, msg: Message) -> ParameterStore:
        """The store a replicated push applies to (a WireError says why none)."""
        backup = self._assigned(msg)
        if backup.store is None:
            raise WireError(f"shard {self.rank} holds no state of range {backup.rng} yet: send it first",
                            retry=True)
        return backup.store

    def state_part(self, msg: Message, make_store: Callable[[int], ParameterStore]) -> bool:
        """Take one part of a range's state; with the last one, install it. Whether it did."""
        backup = self._assigned(msg)
        h = msg.header
        if len(msg.arrays) != 1:
            raise WireError(f"a state part carries one array, got {len(msg.arrays)}")
        if h["part"] == 0:
            backup.parts = {}
        backup.parts[h["name"]] = np.array(msg.arrays[0])  # a copy: the frame is ZeroMQ's
        if h["part"] != h["parts"] - 1:
            return False
        parts, backup.parts = backup.parts, {}
        if len(parts) != h["parts"] or "weights" not in parts or "push_log" not in parts:
            raise WireError(f"state of range {backup.rng} incomplete: got {sorted(parts)} of {h['parts']} parts",
                            retry=True)
        store = make_store(backup.rng)
        meta = dict(msg.body(), push_log={})
        try:
            store.load_state_dict(parts, meta)
        except (KeyError, ValueError, TypeError) as exc:
            raise WireError(f"state of range {backup.rng} does not fit: {exc}") from None
        store.pushes = PushLog.from_array(parts["push_log"])
        backup.store = store
        log.info("shard %d: holds range %d's state (%d updates): a ready backup (#%d)", self.rank, backup.rng,
                 store.updates_applied, backup.gen)
        return True

    def promote(self, rng: int) -> ParameterStore | None:
        """Hand over the store of range `rng` to be served (None if we hold no state of it)."""
        backup = self.held.pop(rng, None)
        return backup.store if backup is not None else None


def state_of(store: ParameterStore) -> tuple[dict[str, np.ndarray], dict]:
    """A range's whole state as a primary sends it: the checkpoint's arrays and metadata, with
    the push log as an array (`push_log`) rather than in the metadata. Copies: ZeroMQ sends
    them later, while the next push changes the store's arrays in place."""
    arrays, meta = store.state_dict()
    meta = {k: v for k, v in meta.items() if k != "push_log"}
    return {**{k: np.array(v) for k, v in arrays.items()}, "push_log": store.pushes.to_array()}, meta
