"""The coordinator's state, without sockets: who is in the job, who is alive, how far the
workers have got, and what state the job is in.

`Membership` is a pure state machine: every change comes from a method call that carries the
time (`now`, from `time.monotonic()`), so the whole of it is unit-tested without a process or
a socket (tests/ps/test_membership.py). The coordinator process (`ps/coordinator.py`) decodes
messages, calls these methods, and sends what they return.

Nodes register and get a rank; their heartbeats keep them alive; one silent for longer than
`cluster.heartbeat_timeout` (`startup_timeout` before its first heartbeat) is declared dead,
and one that speaks again after that rejoins. The job starts running once every shard, the
evaluator and `workers.count + workers.external` workers have registered, finishes once every
worker is done, and fails when it can no longer go on.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from . import protocol as P
from . import reports
from .replication import holder_of_backup

log = logging.getLogger(__name__)

ALIVE, DEAD, FINISHED, LEFT = "alive", "dead", "done", "left"


class Refused(ValueError):
    """A request the coordinator turns down; `str()` is the reason sent back. `retry`: asking
    again later may succeed (a rank still held by a predecessor not yet declared dead)."""

    def __init__(self, reason: str, retry: bool = False):
        super().__init__(reason)
        self.retry = retry


@dataclasses.dataclass
class Node:
    role: str
    rank: int
    last_seen: float
    address: str = ""
    state: str = ALIVE
    stats: dict = dataclasses.field(default_factory=dict)
    registrations: int = 1
    beats: int = 0  # heartbeats received since it registered

    @property
    def name(self) -> str:
        return f"{self.role}-{self.rank}"


def expected_workers(config: dict) -> int:
    """The workers a job waits for: those the launcher starts and those that join from outside."""
    return config["workers"]["count"] + config["workers"].get("external", 0)


class Membership:
    def __init__(self, config: dict, now: float):
        self.num_shards = config["shards"]["count"]
        self.num_workers = expected_workers(config)
        self.replication = config["shards"]["replication"]
        self.heartbeat_timeout = config["cluster"]["heartbeat_timeout"]
        self.startup_timeout = config["cluster"]["startup_timeout"]
        self.nodes: dict[str, Node] = {}
        self.state = P.STARTING
        self.reason = ""
        self.events: list[dict] = []
        self.started = now
        self.ended: float | None = None
        self.checkpoint_requests = 0
        self.rolled_back: dict[str, int] = {}  # shard -> updates lost to its restart

    # ---- who is there --------------------------------------------------------------------
    def members(self, role: str, states: tuple[str, ...] = (ALIVE,)) -> list[Node]:
        return sorted((n for n in self.nodes.values() if n.role == role and n.state in states),
                      key=lambda n: n.rank)

    def live_workers(self) -> list[int]:
        return [n.rank for n in self.members(P.WORKER)]

    def node(self, name: str, now: float) -> Node:
        """The registered node that sent a request (it is alive, at least until now)."""
        node = self.nodes.get(name)
        if node is None:
            raise Refused(f"unknown node {name!r}: register first")
        node.last_seen = now
        return node

    # ---- joining -------------------------------------------------------------------------
    def register(self, role: str, body: dict, now: float) -> tuple[Node, bool]:
        """A node joins (or a restarted one joins again); returns it and whether it is a restart."""
        if self.state in P.FINAL_STATES:
            raise Refused(f"the job is over ({self.state}): not accepting {role}s")
        rank = self._assign_rank(role, body.get("rank"))
        if role == P.WORKER and rank >= self.num_workers + P.MAX_EXTRA_WORKERS:
            raise Refused(f"worker rank {rank} refused: at most {P.MAX_EXTRA_WORKERS} workers beyond "
                          f"the {self.num_workers} expected may join")
        name = f"{role}-{rank}"
        previous = self.nodes.get(name)
        node = Node(role, rank, now, address=str(body.get("address", ""))[:P.MAX_NAME_CHARS])
        if previous is not None:
            node.registrations = previous.registrations + 1
            node.stats = {"before_restart": previous.stats.get("updates", 0)}
        self.nodes[name] = node
        self.event("registered" if previous is None else "re-registered", node, now)
        log.info("%s registered%s", name, f" at {node.address}" if node.address else "")
        self._check_progress(now)
        return node, previous is not None

    def _assign_rank(self, role: str, wanted: Any) -> int:
        """The rank asked for, or the lowest free one. Shards and the evaluator have a fixed
        number of ranks; workers beyond those expected may join a running job (elastic)."""
        limit = {P.SHARD: self.num_shards, P.EVALUATOR: 1}.get(role)
        taken = {n.rank for n in self.nodes.values() if n.role == role and n.state in (ALIVE, FINISHED, LEFT)}
        if wanted is not None:
            if not reports.is_int(wanted) or wanted < 0 or (limit is not None and wanted >= limit):
                raise Refused(f"{role} rank {wanted!r} is out of range (this job has {limit} {role}s)")
            node = self.nodes.get(f"{role}-{wanted}")
            if node is not None and node.state == ALIVE:
                raise Refused(f"{role} rank {wanted} is already taken by a live node at "
                              f"{node.address or 'an unknown address'}", retry=True)
            return wanted
        rank = next((r for r in range(limit if limit is not None else 1 << 30) if r not in taken), None)
        if rank is None:
            raise Refused(f"all {limit} {role} ranks are taken")
        return rank

    # ---- what nodes say ------------------------------------------------------------------
    def beat(self, name: str, stats: dict, now: float) -> Node:
        """A heartbeat: the node is alive (again, if it had been declared dead)."""
        node = self.node(name, now)
        if node.state == DEAD:
            log.warning("%s is back after being declared dead", node.name)
            node.state = ALIVE
            self.event("rejoined", node, now)
        node.beats += 1
        self.update_stats(node, stats)
        return node

    def update_stats(self, node: Node, stats: dict) -> None:
        before = node.stats.get("before_restart")
        node.stats.update(reports.clean_stats(stats))
        if before is not None:
            restored = stats.get("restored_updates")
            lost = before - (restored if reports.is_int(restored) else 0)
            self.rolled_back[node.name] = max(0, lost)

    def done(self, node: Node, stats: dict, now: float) -> None:
        """A worker has made all its steps."""
        self.update_stats(node, stats)
        node.state = FINISHED
        self.event("finished", node, now)
        self._check_progress(now)

    def leave(self, node: Node, stats: dict) -> None:
        """A node ends in order (a shard with its final counts)."""
        self.update_stats(node, stats)
        if node.state == ALIVE:  # a finished worker stays "finished"
            node.state = LEFT

    def early_stop(self, node: Node, reason: str, clock: Any, now: float) -> None:
        """The evaluator has seen enough: the workers stop, then it scores the final weights."""
        if node.role == P.EVALUATOR and self.state == P.RUNNING:
            self.state, self.reason = P.FINISHING, reason
            self.event("early_stop", node, now, clock=clock)
            log.info("%s", reason)

    def request_checkpoint(self) -> int:
        self.checkpoint_requests += 1
        return self.checkpoint_requests

    # ---- the job's life ------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Declare the silent dead and move the job on; call it often (every 0.1 s)."""
        for node in list(self.nodes.values()):
            # Until its first heartbeat a node is still starting up (loading data, compiling).
            limit = self.heartbeat_timeout if node.beats else self.startup_timeout
            if node.state == ALIVE and now - node.last_seen > limit:
                self._declare_dead(node, now)
        live = {n.rank: n.address for n in self.members(P.SHARD)}
        for node in self.members(P.SHARD, (DEAD,)):
            if self.server_of(node.rank, live) is not None:
                continue  # its backup took over
            # A dead shard may come back (restarted from its checkpoint): wait a while for it.
            if now - node.last_seen > self.heartbeat_timeout + self.startup_timeout:
                self.finish(P.FAILED, f"{node.name} at {node.address} died and did not come back "
                                      f"within {self.startup_timeout:g} s", now)
        if self.state == P.STARTING and now - self.started > self.startup_timeout:
            self.finish(P.FAILED, f"start-up timed out after {self.startup_timeout:g} s: {self._missing()}", now)
        self._check_progress(now)

    def _declare_dead(self, node: Node, now: float) -> None:
        node.state = DEAD
        silent = now - node.last_seen
        self.event("dead", node, now, silent_seconds=round(silent, 3))
        log.warning("%s declared dead: no heartbeat for %.1f s", node.name, silent)
        if node.role == P.EVALUATOR:
            self.finish(P.FAILED, "the evaluator died", now)

    def _check_progress(self, now: float) -> None:
        if self.state == P.STARTING:
            if (len(self.members(P.SHARD)) == self.num_shards and len(self.members(P.EVALUATOR)) == 1
                    and len(self.members(P.WORKER)) >= self.num_workers):
                self.state = P.RUNNING
                log.info("all %d shards, %d workers and the evaluator registered: running",
                         self.num_shards, self.num_workers)
        elif self.state == P.RUNNING and not self.members(P.WORKER):
            if not self.members(P.WORKER, (FINISHED,)):
                self.finish(P.FAILED, "every worker died", now)
            else:
                self.state = P.FINISHING
                log.info("all workers finished: evaluating")

    def _missing(self) -> str:
        need = {P.SHARD: self.num_shards, P.WORKER: self.num_workers, P.EVALUATOR: 1}
        parts = []
        for role, count in need.items():
            have = {n.rank for n in self.members(role)}
            absent = [r for r in range(count) if r not in have]
            if absent:
                parts.append(f"waiting for {role} {', '.join(map(str, absent))}")
        return "; ".join(parts) or "nobody missing"

    def finish(self, state: str, reason: str, now: float) -> None:
        """End the job (once: the first reason stands)."""
        if self.state in P.FINAL_STATES:
            return
        self.state, self.reason, self.ended = state, reason, now
        (log.info if state == P.DONE_STATE else log.error)("job %s: %s", state, reason)

    def event(self, what: str, node: Node, now: float, **extra: Any) -> None:
        self.events.append({"time": round(now - self.started, 3), "event": what, "node": node.name, **extra})

    # ---- who serves what -----------------------------------------------------------------
    def shard_addresses(self) -> list[str] | None:
        """Who serves each range: its shard, or (replication) the live holder of its backup."""
        live = {n.rank: n.address for n in self.members(P.SHARD)}
        out = []
        for r in range(self.num_shards):
            server = self.server_of(r, live)
            if server is None:
                return None
            out.append(live[server])
        return out

    def server_of(self, rng: int, live: dict[int, str]) -> int | None:
        if rng in live:
            return rng
        holder = holder_of_backup(rng, self.num_shards)
        if self.replication > 1 and holder in live and self.nodes.get(f"{P.SHARD}-{rng}") is not None:
            return holder
        return None

    def heartbeat_reply(self, node: Node) -> dict:
        """What a node learns from each heartbeat: the job's state, the live workers and their
        slowest clock, where the shards are, and (a shard, with replication) its orders."""
        # During start-up the live set is still filling: say nothing, or shards would drop
        # the workers they were told to expect, or a primary would start without its backup.
        starting = self.state == P.STARTING
        replicated = node.role == P.SHARD and self.replication > 1 and not starting
        extra = self._replica_orders(node) if replicated else {}
        return {**extra, "state": self.state, "workers": None if starting else self.live_workers(),
                "checkpoint": self.checkpoint_requests, "clock": self.min_worker_clock(),
                "shards": None if starting else self.shard_addresses(), "reason": self.reason}

    def _replica_orders(self, node: Node) -> dict:
        """Tell a shard which ranges to serve (its own, plus a dead neighbour's it holds the
        backup of) and where its own range's backup lives (None once that holder is dead)."""
        live = {n.rank: n.address for n in self.members(P.SHARD)}
        serve = [r for r in range(self.num_shards) if self.server_of(r, live) == node.rank]
        holder = holder_of_backup(node.rank, self.num_shards)
        return {"serve": serve, "replicate_to": live.get(holder) if holder != node.rank else None}

    # ---- figures -------------------------------------------------------------------------
    def updates_per_range(self) -> list[int]:
        """Each range's update count, from whichever shard served it last (a promoted backup
        carries on the count of the primary it replaced)."""
        counts = [0] * self.num_shards
        for n in self.nodes.values():
            if n.role == P.SHARD:
                for r, updates in n.stats.get("ranges", {}).items():
                    if int(r) < self.num_shards:
                        counts[int(r)] = max(counts[int(r)], updates)
        return counts

    def min_worker_clock(self) -> int:
        return min((n.stats.get("clock", 0) for n in self.members(P.WORKER)), default=0)
