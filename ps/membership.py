"""The coordinator's state, without sockets: who is in the job, who is alive, how far the
workers have got, and what state the job is in.

`Membership` is a pure state machine: every change comes from a method call that carries the
time (`now`, from `time.monotonic()`), so the whole of it is unit-tested without a process or
a socket (tests/ps/test_membership.py). The coordinator process (`ps/coordinator.py`) decodes
messages, calls these methods, and sends what they return.

Nodes register and get a rank; their heartbeats keep them alive; one silent for longer than
`cluster.heartbeat_timeout` (`startup_timeout` before its first heartbeat) is declared dead,
and one that speaks again after that rejoins. Which shard serves and backs up each range, at
which epoch, is `ranges.Ranges`, settled again whenever a shard dies, rejoins or reports on its
backups. The job starts running once every shard, the evaluator and `workers.count +
workers.external` workers have registered (and, with replication, every range has a ready
backup), finishes once every worker is done, and fails when it can no longer go on: every
worker dead, or a range's only copy (or the evaluator) gone for longer than
`heartbeat_timeout + startup_timeout` without coming back.

A coordinator that was itself stopped (a stall, SIGSTOP, a swapped-out machine) holds nobody's
silence during that time against them: `tick` notices the gap in its own clock and excuses it.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from . import protocol as P
from . import reports
from .config import expected_workers
from .ranges import Ranges

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
    token: str = ""  # the registration's own id: a request sent again is the same registration

    @property
    def name(self) -> str:
        return f"{self.role}-{self.rank}"


class Membership:
    def __init__(self, config: dict, now: float):
        self.num_shards = config["shards"]["count"]
        self.num_workers = expected_workers(config)
        self.builtin_workers = config["workers"]["count"]  # external workers take ranks from here on
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
        self.ranges = Ranges(self.num_shards, self.replication)
        self.last_tick = now

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
        token = str(body.get("token") or "")[:P.MAX_NAME_CHARS]
        again = next((n for n in self.nodes.values() if token and n.token == token and n.role == role
                      and n.state == ALIVE), None)
        if again is not None:  # its reply was late or lost and it asked again: the same node, the same rank
            again.last_seen = now
            return again, again.registrations > 1
        # an external worker (downpour.connect) never takes a rank the launcher's workers ask for
        first = self.builtin_workers if role == P.WORKER and body.get("external") else 0
        rank = self._assign_rank(role, body.get("rank"), first)
        if role == P.WORKER and rank >= self.num_workers + P.MAX_EXTRA_WORKERS:
            raise Refused(f"worker rank {rank} refused: at most {P.MAX_EXTRA_WORKERS} workers beyond "
                          f"the {self.num_workers} expected may join")
        name = f"{role}-{rank}"
        previous = self.nodes.get(name)
        node = Node(role, rank, now, address=str(body.get("address", ""))[:P.MAX_NAME_CHARS], token=token)
        if previous is not None:
            node.registrations = previous.registrations + 1
            node.stats = {"before_restart": previous.stats.get("updates", 0)}
        self.nodes[name] = node
        self.event("registered" if previous is None else "re-registered", node, now)
        log.info("%s registered%s", name, f" at {node.address}" if node.address else "")
        if role == P.SHARD:
            self._place(now)
        self._check_progress(now)
        return node, previous is not None

    def _assign_rank(self, role: str, wanted: Any, first: int = 0) -> int:
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
        rank = next((r for r in range(first, limit if limit is not None else 1 << 30) if r not in taken), None)
        if rank is None:
            raise Refused(f"all {limit} {role} ranks are taken")
        return rank

    # ---- what nodes say ------------------------------------------------------------------
    def beat(self, name: str, stats: dict, now: float) -> Node:
        """A heartbeat: the node is alive (again, if it had been declared dead)."""
        node = self.node(name, now)
        node.beats += 1
        self.update_stats(node, stats)
        if node.state == DEAD:
            log.warning("%s is back after being declared dead", node.name)
            node.state = ALIVE
            self.event("rejoined", node, now)
            if node.role == P.SHARD:
                self._place(now)
        if node.role == P.SHARD and node.state == ALIVE:
            held = {int(r): (gen, synced) for r, (gen, synced) in node.stats.get("backups", {}).items()}
            for change in self.ranges.backup_report(node.rank, held, now):
                self._range_event(change, now)
            self._check_progress(now)
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

    def leave(self, node: Node, stats: dict, now: float) -> None:
        """A node ends in order (a shard with its final counts)."""
        self.update_stats(node, stats)
        if node.state == ALIVE:  # a finished worker stays "finished"
            node.state = LEFT
            if node.role == P.SHARD:
                self._place(now)
        if node.role == P.EVALUATOR and self.state not in P.FINAL_STATES:  # it ends the job, or it failed
            self.finish(P.FAILED, "the evaluator left before the job was over (see its log)", now)

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
        self._excuse_own_stall(now)
        died = False
        for node in list(self.nodes.values()):
            # Until its first heartbeat a node is still starting up (loading data, compiling).
            limit = self.heartbeat_timeout if node.beats else self.startup_timeout
            if node.state == ALIVE and now - node.last_seen > limit:
                self._declare_dead(node, now)
                died = died or node.role == P.SHARD
        if died:
            self._place(now)
        for name in [f"{P.SHARD}-{r.primary}" for r in self.ranges] + [f"{P.EVALUATOR}-0"]:
            self._wait_for(self.nodes.get(name), now)  # a range's only copy, the evaluator: may come back
        if self.state == P.STARTING and now - self.started > self.startup_timeout:
            self.finish(P.FAILED, f"start-up timed out after {self.startup_timeout:g} s: {self._missing()}", now)
        self._check_progress(now)

    def _excuse_own_stall(self, now: float) -> None:
        """If we ourselves did not run for a while, nobody's silence in that time counts."""
        gap, self.last_tick = now - self.last_tick, now
        if gap <= self.heartbeat_timeout / 2:
            return
        for node in self.nodes.values():
            node.last_seen = max(node.last_seen, min(now, node.last_seen + gap))
        log.warning("the coordinator did not run for %.1f s: that silence is held against nobody", gap)
        self.events.append({"time": round(now - self.started, 3), "event": "coordinator_stalled",
                            "node": "coordinator-0", "seconds": round(gap, 3)})

    def _declare_dead(self, node: Node, now: float) -> None:
        node.state = DEAD
        silent = now - node.last_seen
        self.event("dead", node, now, silent_seconds=round(silent, 3))
        log.warning("%s declared dead: no heartbeat for %.1f s", node.name, silent)

    def _wait_for(self, node: Node | None, now: float) -> None:
        """A dead node nobody can stand in for fails the job once it has had time to come back
        (restarted from its checkpoint, or continued after a stall)."""
        if node is None or node.state != DEAD or self.state in P.FINAL_STATES:
            return
        if now - node.last_seen > self.heartbeat_timeout + self.startup_timeout:
            self.finish(P.FAILED, f"{node.name} at {node.address or 'its address'} died and did not come back "
                                  f"within {self.startup_timeout:g} s", now)

    def _place(self, now: float) -> None:
        """Settle who serves and backs up each range, now that the live shards have changed."""
        live = {n.rank for n in self.members(P.SHARD)}
        if self.state in P.FINAL_STATES or (self.state == P.STARTING and len(live) < self.num_shards):
            return  # (start-up: the first placement waits for every shard, so it is the natural ring)
        for change in self.ranges.settle(live, now):
            self._range_event(change, now)

    def _range_event(self, change: dict, now: float) -> None:
        what, shard = change.pop("event"), change.pop("shard")
        self.event(what, f"{P.SHARD}-{shard}", now, **change)
        rng = change["range"]
        if what == "promoted":
            log.warning("range %d: shard-%d promoted at epoch %d (shard-%d deposed)", rng, shard, change["epoch"],
                        change["deposed"])
        elif what == "backup_lost":
            log.warning("range %d: its backup shard-%d is gone: running unreplicated", rng, shard)
        else:
            log.info("range %d: shard-%d %s", rng, shard, "assigned as its backup" if what == "backup_assigned"
                     else "holds its state: a ready backup")

    def _check_progress(self, now: float) -> None:
        if self.state == P.STARTING:
            if (len(self.members(P.SHARD)) == self.num_shards and len(self.members(P.EVALUATOR)) == 1
                    and len(self.members(P.WORKER)) >= self.num_workers and self.ranges.all_ready()):
                self.state = P.RUNNING
                self.ranges.start(now)
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
        self.ranges.stop(now)
        (log.info if state == P.DONE_STATE else log.error)("job %s: %s", state, reason)

    def event(self, what: str, node: Node | str, now: float, **extra: Any) -> None:
        name = node if isinstance(node, str) else node.name
        self.events.append({"time": round(now - self.started, 3), "event": what, "node": name, **extra})

    # ---- who serves what -----------------------------------------------------------------
    def shard_addresses(self) -> dict[int, str]:
        return {n.rank: n.address for n in self.members(P.SHARD)}

    def heartbeat_reply(self, node: Node) -> dict:
        """What a node learns from each heartbeat: the job's state, the live workers and their
        slowest clock, each range's primary and epoch, and (a shard) its orders."""
        # During start-up the live set is still filling: say nothing, or shards would drop the
        # workers they were told to expect. The shards' orders go out at once: the backups
        # take their ranges' state before the job runs.
        starting = self.state == P.STARTING
        addresses = self.shard_addresses()
        routes = None if starting else self.ranges.routes(addresses)
        reply = {"state": self.state, "workers": None if starting else self.live_workers(),
                 "checkpoint": self.checkpoint_requests, "clock": self.min_worker_clock(),
                 "shards": routes and routes[0], "epochs": routes and routes[1], "reason": self.reason}
        if node.role == P.SHARD:
            reply.update(self.ranges.orders(node.rank, addresses))
        return reply

    # ---- figures -------------------------------------------------------------------------
    def per_range(self, figure: str) -> list[int]:
        """A figure each shard reports per range it serves ("ranges": updates, "range_pushes":
        pushes), taken from the range's primary (a promoted backup carries on the count of the
        primary it replaced; a deposed primary's word no longer counts)."""
        out = []
        for rng in self.ranges:
            node = self.nodes.get(f"{P.SHARD}-{rng.primary}")
            told = node.stats.get(figure, {}) if node is not None else {}
            if str(rng.index) not in told:  # not yet reported by a newly promoted primary
                told = {str(rng.index): max((n.stats.get(figure, {}).get(str(rng.index), 0)
                                             for n in self.members(P.SHARD, (ALIVE, DEAD, LEFT))), default=0)}
            out.append(told[str(rng.index)])
        return out

    def min_worker_clock(self) -> int:
        return min((n.stats.get("clock", 0) for n in self.members(P.WORKER)), default=0)
