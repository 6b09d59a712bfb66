"""Who serves each key range, who backs it up, and at which epoch: the coordinator's word, pure logic.

Every range has one primary shard and, with `shards.replication: 2`, one backup shard. The
range's **epoch** counts its primaries: it is bumped each time a backup is promoted, and every
data-plane request and every replicated push carries the epoch its sender believes. A shard
refuses a request for a range it does not serve, or at another epoch, so a primary that was
deposed while it stalled (declared dead, then back) can never acknowledge a push again: its
first replicated push is refused by the promoted backup ("deposed"), and its first heartbeat
reply no longer lists the range.

A backup goes through three states, each step seen by the coordinator in a heartbeat:

    assigned   the coordinator has chosen it (its heartbeat reply says so)
    waiting    it has heard, and waits for the range's state; now the primary is told to send it
    ready      it holds the state the primary sent and every push since: it may be promoted

Only a ready backup is promoted. A backup that dies, or whose primary changes, is dropped, and
the range runs unreplicated until another live shard has become its ready backup: a shard
that comes back, or is restarted, after losing its ranges rejoins as such a backup. Each
assignment has a number of its own (`gen`), so a report about an earlier assignment is never
taken for the present one. The seconds each range spends without a ready backup while the job
runs are counted for `status` and `summary.json`.
"""
from __future__ import annotations

import dataclasses
import logging

log = logging.getLogger(__name__)

ASSIGNED, WAITING, READY = "assigned", "waiting", "ready"


@dataclasses.dataclass
class Range:
    index: int
    primary: int
    epoch: int = 1
    backup: int | None = None
    backup_state: str = ""
    gen: int = 0
    unreplicated_since: float | None = None
    unreplicated_seconds: float = 0.0

    def unreplicated(self, now: float) -> float:
        """Seconds without a ready backup so far (counted while the job runs)."""
        since = 0.0 if self.unreplicated_since is None else now - self.unreplicated_since
        return self.unreplicated_seconds + since


class Ranges:
    def __init__(self, count: int, replication: int):
        self.replication = replication
        self.ranges = [Range(r, primary=r) for r in range(count)]
        self.next_gen = 1
        self.counting = False  # unreplicated time counts from `start` to `stop`

    def __iter__(self):
        return iter(self.ranges)

    def __getitem__(self, index: int) -> Range:
        return self.ranges[index]

    # ---- the coordinator's decisions -------------------------------------------------------
    def settle(self, live: set[int], now: float) -> list[dict]:
        """Bring the placement in line with the live shards: drop dead backups, promote a ready
        backup where the primary is dead, choose backups where a range has none. Returns what
        changed, as events ({"event", "range", "shard", ...})."""
        changes = []
        for rng in self.ranges:
            if rng.backup is not None and rng.backup not in live:
                changes.append({"event": "backup_lost", "range": rng.index, "shard": rng.backup})
                self._drop_backup(rng, now)
            if rng.primary not in live and rng.backup is not None and rng.backup_state == READY:
                deposed, rng.primary, rng.epoch = rng.primary, rng.backup, rng.epoch + 1
                changes.append({"event": "promoted", "range": rng.index, "shard": rng.primary,
                                "epoch": rng.epoch, "deposed": deposed})
                self._drop_backup(rng, now)
        if self.replication > 1:
            for rng in self.ranges:
                if rng.backup is None and rng.primary in live:
                    chosen = self._choose_backup(rng, live)
                    if chosen is not None:
                        rng.backup, rng.backup_state, rng.gen = chosen, ASSIGNED, self.next_gen
                        self.next_gen += 1
                        changes.append({"event": "backup_assigned", "range": rng.index, "shard": chosen,
                                        "gen": rng.gen})
        return changes

    def _drop_backup(self, rng: Range, now: float) -> None:
        rng.backup, rng.backup_state = None, ""
        if self.counting and rng.unreplicated_since is None:
            rng.unreplicated_since = now

    def _choose_backup(self, rng: Range, live: set[int]) -> int | None:
        """A live shard other than the primary: the range's natural neighbour (the next rank)
        if it can, else the one with the least to do, the lowest rank first."""
        candidates = sorted(live - {rng.primary})
        if not candidates:
            return None
        neighbour = (rng.index + 1) % len(self.ranges)
        if neighbour in candidates:
            return neighbour
        load = {s: sum(r.primary == s or r.backup == s for r in self.ranges) for s in candidates}
        return min(candidates, key=lambda s: (load[s], s))

    def backup_report(self, shard: int, held: dict[int, tuple[int, bool]], now: float) -> list[dict]:
        """A shard says which backups it holds: {range: (gen, has the state)}. Moves its
        assignments on (assigned -> waiting -> ready); returns the events of those now ready."""
        became = []
        for rng in self.ranges:
            if rng.backup != shard or rng.index not in held or held[rng.index][0] != rng.gen:
                continue
            synced = held[rng.index][1]
            if rng.backup_state == ASSIGNED:
                rng.backup_state = WAITING
            if synced and rng.backup_state == WAITING:
                rng.backup_state = READY
                if rng.unreplicated_since is not None:
                    rng.unreplicated_seconds += now - rng.unreplicated_since
                    rng.unreplicated_since = None
                became.append({"event": "backup_ready", "range": rng.index, "shard": shard, "gen": rng.gen})
        return became

    def all_ready(self) -> bool:
        """Whether every range that can have a backup has a ready one."""
        return self.replication == 1 or len(self.ranges) < 2 or all(r.backup_state == READY for r in self.ranges)

    # ---- the job's clock -------------------------------------------------------------------
    def start(self, now: float) -> None:
        """The job runs: from now on, time without a ready backup counts."""
        if self.replication > 1 and not self.counting:
            self.counting = True
            for rng in self.ranges:
                if rng.backup_state != READY:
                    rng.unreplicated_since = now

    def stop(self, now: float) -> None:
        for rng in self.ranges:
            if rng.unreplicated_since is not None:
                rng.unreplicated_seconds += now - rng.unreplicated_since
                rng.unreplicated_since = None
        self.counting = False

    # ---- what each shard is told -----------------------------------------------------------
    def orders(self, shard: int, addresses: dict[int, str]) -> dict:
        """A shard's orders: the ranges it serves ({range: epoch}); for each, where to send
        its replicated pushes (None: run alone); the backups it holds ({range: {gen, epoch}})."""
        serve, replicate, backups = {}, {}, {}
        for rng in self.ranges:
            key = str(rng.index)
            if rng.primary == shard:
                serve[key] = rng.epoch
                to = addresses.get(rng.backup) if rng.backup_state in (WAITING, READY) else None
                replicate[key] = {"to": to, "gen": rng.gen} if to else None
            if rng.backup == shard:
                backups[key] = {"gen": rng.gen, "epoch": rng.epoch}
        return {"serve": serve, "replicate": replicate, "backups": backups}

    def routes(self, addresses: dict[int, str]) -> tuple[list[str], list[int]] | None:
        """Each range's primary address and epoch, for the workers; None while one has no live primary."""
        if any(r.primary not in addresses for r in self.ranges):
            return None
        return [addresses[r.primary] for r in self.ranges], [r.epoch for r in self.ranges]

    def table(self, now: float) -> list[dict]:
        """Each range's primary, backup and epoch, and its unreplicated seconds (replication only)."""
        return [{"range": r.index, "primary": f"shard-{r.primary}", "epoch": r.epoch,
                 "backup": None if r.backup is None else f"shard-{r.backup}", "backup_state": r.backup_state or None,
                 "unreplicated_seconds": round(r.unreplicated(now), 3) if self.replication > 1 else None}
                for r in self.ranges]
