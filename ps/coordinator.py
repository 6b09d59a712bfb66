"""The coordinator: the one address everybody knows.

Nodes register and get a rank; it hands out the job (the resolved config), the layout and the
initial weights (each shard its own range), tracks heartbeats and clocks, declares the dead,
decides when the job is done, answers `status`, and writes the run directory's
`metrics.jsonl` and `summary.json`. It never touches gradients: that is the shards' work.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import secrets
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq

from . import export, reports
from . import protocol as P
from .layout import make_layout
from .replication import backup_of, holder_of_backup
from .wire import Message, WireError, bind_socket, recv, reply, reply_error

log = logging.getLogger(__name__)

EVALUATOR = P.EVALUATOR
ALIVE, DEAD, FINISHED, LEFT = "alive", "dead", "done", "left"


@dataclasses.dataclass
class Node:
    role: str
    rank: int
    address: str = ""
    state: str = ALIVE
    last_seen: float = dataclasses.field(default_factory=time.monotonic)
    joined: float = dataclasses.field(default_factory=time.time)
    stats: dict = dataclasses.field(default_factory=dict)
    registrations: int = 1
    beats: int = 0  # heartbeats received since it registered

    @property
    def name(self) -> str:
        return f"{self.role}-{self.rank}"


class Coordinator:
    def __init__(self, ctx: zmq.Context, config: dict, params: Sequence[tuple[str, np.ndarray]],
                 bind: str, run_dir: str | None = None, configure=None):
        self.config = config
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if configure is not None:  # CURVE: must come before bind
            configure(self.sock)
        bind_socket(self.sock, bind)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.run_dir = pathlib.Path(run_dir) if run_dir else None
        self.job_id = f"{config['name']}-{secrets.token_hex(4)}"
        self.layout = make_layout([(n, a.shape) for n, a in params], config["shards"]["count"])
        self.initial = np.concatenate([np.asarray(a, np.float32).ravel() for _, a in params]) \
            if params else np.zeros(0, np.float32)
        self.num_shards = config["shards"]["count"]
        self.num_workers = config["workers"]["count"] + config["workers"]["external"]  # built-in + external
        self.replication = config["shards"]["replication"]
        cluster = config["cluster"]
        self.max_bytes = int(cluster["max_message_mb"] * (1 << 20))
        self.heartbeat_timeout = cluster["heartbeat_timeout"]
        self.startup_timeout = cluster["startup_timeout"]
        self.nodes: dict[str, Node] = {}
        self.state = P.STARTING
        self.reason = ""
        self.events: list[dict] = []
        self.results: dict = {}
        self.checkpoint_requests = 0
        self.rolled_back: dict[str, int] = {}  # shard -> updates lost to its restart
        self.latest: dict[str, dict] = {}  # the newest report of each worker
        self.started = time.time()
        self.started_mono = time.monotonic()
        self.ended: float | None = None
        self._metrics = open(self.run_dir / "metrics.jsonl", "a") if self.run_dir else None

    # ---- membership ----------------------------------------------------------------------
    def _members(self, role: str, states: tuple[str, ...] = (ALIVE,)) -> list[Node]:
        return sorted((n for n in self.nodes.values() if n.role == role and n.state in states),
                      key=lambda n: n.rank)

    def live_workers(self) -> list[int]:
        return [n.rank for n in self._members(P.WORKER)]

    def shard_addresses(self) -> list[str] | None:
        """Who serves each range: its shard, or (replication) the live holder of its backup."""
        live = {n.rank: n.address for n in self._members(P.SHARD)}
        out = []
        for r in range(self.num_shards):
            server = self._server_of(r, live)
            if server is None:
                return None
            out.append(live[server])
        return out

    def _server_of(self, rng: int, live: dict[int, str]) -> int | None:
        if rng in live:
            return rng
        holder = holder_of_backup(rng, self.num_shards)
        if self.replication > 1 and holder in live and self.nodes.get(f"{P.SHARD}-{rng}") is not None:
            return holder
        return None

    def _assign_rank(self, role: str, wanted: Any, first: int = 0) -> int:
        """The rank asked for, or the lowest free one. Shards and the evaluator have a fixed
        number of ranks; workers beyond `workers.count` may join a running job (elastic)."""
        limit = {P.SHARD: self.num_shards, EVALUATOR: 1}.get(role)
        taken = {n.rank for n in self.nodes.values() if n.role == role and n.state in (ALIVE, FINISHED, LEFT)}
        if wanted is not None:
            if not reports.is_int(wanted) or wanted < 0 or (limit is not None and wanted >= limit):
                raise WireError(f"{role} rank {wanted!r} is out of range (this job has {limit} {role}s)")
            node = self.nodes.get(f"{role}-{wanted}")
            if node is not None and node.state == ALIVE:
                raise WireError(f"{role} rank {wanted} is already taken by a live node at "
                                f"{node.address or 'an unknown address'}", retry=True)
            return wanted
        rank = next((r for r in range(first, limit if limit is not None else 1 << 30) if r not in taken), None)
        if rank is None:
            raise WireError(f"all {limit} {role} ranks are taken")
        return rank

    # ---- requests ------------------------------------------------------------------------
    def handle(self, msg: Message) -> None:
        op = msg.op
        if op == P.STATUS:
            reply(self.sock, msg, body=self.status())
            return
        if op == P.REGISTER:
            self._register(msg)
            return
        if op not in P.CONTROL_OPS:
            raise WireError(f"operation {op!r} is not served by the coordinator")
        if msg.header["job"] != self.job_id:
            raise WireError(f"job {msg.header['job']!r} is not this coordinator's job {self.job_id!r}")
        if op == P.STOP:
            reason = msg.body().get("reason")
            self._finish(P.STOPPED, reason if isinstance(reason, str) else "stopped by request")
            reply(self.sock, msg, body={"state": self.state})
            return
        if op == P.CHECKPOINT:
            self.checkpoint_requests += 1
            reply(self.sock, msg, body={"checkpoint": self.checkpoint_requests})
            return
        node = self.nodes.get(msg.header["from"])
        if node is None:
            raise WireError(f"unknown node {msg.header['from']!r}: register first")
        node.last_seen = time.monotonic()
        if node.state == DEAD and op == P.HEARTBEAT:
            log.warning("%s is back after being declared dead", node.name)
            node.state = ALIVE
            self._event("rejoined", node)
        if op == P.HEARTBEAT:
            node.beats += 1
            self._update_stats(node, msg.body())
            reply(self.sock, msg, body=self._heartbeat_reply(node))
        elif op == P.REPORT:
            self._record(node, reports.json_safe(msg.body()))
            reply(self.sock, msg)
        elif op in (P.DONE, P.RESULT) and node.role != {P.DONE: P.WORKER, P.RESULT: EVALUATOR}[op]:
            raise WireError(f"{node.name} may not send {op!r}")
        elif op == P.DONE:
            self._update_stats(node, msg.body())
            node.state = FINISHED
            self._event("finished", node)
            reply(self.sock, msg, body={"state": self.state})
            self._check_progress()
        elif op == P.RESULT:
            self._export(msg)
            self.results = {k: v for k, v in reports.json_safe(msg.body()).items() if isinstance(v, (int, float))}
            self._record(node, dict(self.results, kind="test"))
            reply(self.sock, msg)
            self._finish(P.DONE_STATE, self.reason or "finished")
        elif op == P.LEAVE:
            self._update_stats(node, msg.body())  # a shard's final counts
            if node.state == ALIVE:  # a finished worker stays "finished"
                node.state = LEFT
            reply(self.sock, msg)

    def _register(self, msg: Message) -> None:
        role = msg.header["role"]
        if self.state in P.FINAL_STATES:
            raise WireError(f"the job is over ({self.state}): not accepting {role}s")
        body = msg.body()
        # an external worker (downpour.connect) never takes a rank the launcher's workers ask for
        rank = self._assign_rank(role, body.get("rank"), self.config["workers"]["count"] if body.get("external") else 0)
        if role == P.WORKER and rank >= self.num_workers + P.MAX_EXTRA_WORKERS:
            raise WireError(f"worker rank {rank} refused: at most {P.MAX_EXTRA_WORKERS} workers beyond "
                            f"workers.count={self.num_workers} may join")
        name = f"{role}-{rank}"
        previous = self.nodes.get(name)
        node = Node(role, rank, address=str(body.get("address", ""))[:P.MAX_NAME_CHARS])
        if previous is not None:
            node.registrations = previous.registrations + 1
            node.stats = {"before_restart": previous.stats.get("updates", 0)}
        self.nodes[name] = node
        self._event("registered" if previous is None else "re-registered", node)
        log.info("%s registered%s", name, f" at {node.address}" if node.address else "")
        info = {"rank": rank, "job_id": self.job_id, "config": self.config, "restart": previous is not None,
                "layout": self.layout.to_dict(), "workers": list(range(self.num_workers)),
                "world": max(self.num_workers, rank + 1) if role == P.WORKER else self.num_workers}
        arrays = ()
        if role == P.SHARD:
            ranges = [rank] + ([backup_of(rank, self.num_shards)] if self.replication > 1 else [])
            arrays = tuple(self.initial[slice(*self.layout.ranges[r])] for r in ranges)
        reply(self.sock, msg, body=info, arrays=arrays)
        self._check_progress()

    def _update_stats(self, node: Node, stats: dict) -> None:
        before = node.stats.get("before_restart")
        node.stats.update(reports.clean_stats(stats))
        if before is not None:
            restored = stats.get("restored_updates")
            lost = before - (restored if isinstance(restored, int) else 0)
            self.rolled_back[node.name] = max(0, lost)

    def _export(self, msg: Message) -> None:
        """Write the evaluated weights, by parameter name, into RUN_DIR/model/weights.npz."""
        if not msg.arrays:
            return
        weights = msg.arrays[0]
        if weights.dtype != np.float32 or weights.shape != (self.layout.total,):
            raise WireError(f"result weights must be float32 of shape ({self.layout.total},), "
                            f"got {weights.dtype} {weights.shape}")
        if self.run_dir is not None:
            export.save(self.run_dir / "model" / "weights.npz", export.unflatten(weights, self.layout))

    def _heartbeat_reply(self, node: Node) -> dict:
        # During start-up the live set is still filling: say nothing, or shards would drop
        # the workers they were told to expect, or a primary would start without its backup.
        clocks = [n.stats.get("clock", 0) for n in self._members(P.WORKER)]
        replicated = node.role == P.SHARD and self.replication > 1 and self.state != P.STARTING
        extra = self._replica_orders(node) if replicated else {}
        return {**extra, "state": self.state, "workers": None if self.state == P.STARTING else self.live_workers(),
                "checkpoint": self.checkpoint_requests, "clock": min(clocks, default=0),
                "shards": self.shard_addresses() if self.state != P.STARTING else None,
                "reason": self.reason}

    def _replica_orders(self, node: Node) -> dict:
        """Tell a shard which ranges to serve (its own, plus a dead neighbour's it holds the
        backup of) and where its own range's backup lives (None once that holder is dead)."""
        live = {n.rank: n.address for n in self._members(P.SHARD)}
        serve = [r for r in range(self.num_shards) if self._server_of(r, live) == node.rank]
        holder = holder_of_backup(node.rank, self.num_shards)
        return {"serve": serve, "replicate_to": live.get(holder) if holder != node.rank else None}

    def _record(self, node: Node, record: dict) -> None:
        record = dict(record, time=round(time.time(), 3), role=node.role, rank=node.rank)
        if record.get("kind") == "early_stop" and node.role == EVALUATOR and self.state == P.RUNNING:
            self.state, self.reason = P.FINISHING, str(record.get("message"))[:300]
            self._event("early_stop", node, clock=record.get("clock"))
            log.info("%s", self.reason)
        if record.get("kind") == "alarm":
            log.error("ALARM from %s at clock %s: %s", node.name, record.get("clock"), record.get("message"))
            self._event("alarm", node, message=str(record.get("message"))[:300], clock=record.get("clock"))
            if record.get("fatal"):
                self._finish(P.FAILED, f"{node.name} at clock {record.get('clock')}: {record.get('message')}")
        if node.role == P.WORKER and record.get("kind") == "train":  # not an alarm
            self.latest[node.name] = record
        if self._metrics:
            self._metrics.write(json.dumps(record) + "\n")
            self._metrics.flush()

    def _event(self, what: str, node: Node, **extra: Any) -> None:
        self.events.append({"time": round(time.time() - self.started, 3), "event": what,
                            "node": node.name, **extra})

    # ---- the job's life ------------------------------------------------------------------
    def _check_progress(self) -> None:
        if self.state == P.STARTING:
            if (len(self._members(P.SHARD)) == self.num_shards and len(self._members(EVALUATOR)) == 1
                    and len(self._members(P.WORKER)) >= self.num_workers):
                self.state = P.RUNNING
                self.running_since = time.monotonic()
                log.info("all %d shards, %d workers and the evaluator registered: running",
                         self.num_shards, self.num_workers)
        elif self.state == P.RUNNING and not self._members(P.WORKER):
            finished = self._members(P.WORKER, (FINISHED,))
            if not finished:
                self._finish(P.FAILED, "every worker died")
            else:
                self.state = P.FINISHING
                log.info("all workers finished: evaluating")

    def check_liveness(self) -> None:
        now = time.monotonic()
        for node in list(self.nodes.values()):
            # Until its first heartbeat a node is still starting up (loading data, compiling).
            limit = self.heartbeat_timeout if node.beats else self.startup_timeout
            if node.state == ALIVE and now - node.last_seen > limit:
                node.state = DEAD
                silent = now - node.last_seen
                self._event("dead", node, silent_seconds=round(silent, 3))
                log.warning("%s declared dead: no heartbeat for %.1f s", node.name, silent)
                if node.role == EVALUATOR and self.state not in P.FINAL_STATES:
                    self._finish(P.FAILED, "the evaluator died")
        live = {n.rank: n.address for n in self._members(P.SHARD)}
        for node in self._members(P.SHARD, (DEAD,)):
            if self._server_of(node.rank, live) is not None:
                continue  # its backup took over
            # A dead shard may come back (restarted from its checkpoint): wait a while for it.
            waited = now - node.last_seen
            if waited > self.heartbeat_timeout + self.startup_timeout and self.state not in P.FINAL_STATES:
                self._finish(P.FAILED, f"{node.name} at {node.address} died and did not come back "
                                       f"within {self.startup_timeout:g} s")
        if self.state == P.STARTING and now - self.started_mono > self.startup_timeout:
            self._finish(P.FAILED, f"start-up timed out after {self.startup_timeout:g} s: {self._missing()}")
        self._check_progress()

    def _missing(self) -> str:
        need = {P.SHARD: self.num_shards, P.WORKER: self.num_workers, EVALUATOR: 1}
        parts = []
        for role, count in need.items():
            have = {n.rank for n in self._members(role)}
            absent = [r for r in range(count) if r not in have]
            if absent:
                parts.append(f"waiting for {role} {', '.join(map(str, absent))}")
        return "; ".join(parts) or "nobody missing"

    def _finish(self, state: str, reason: str) -> None:
        if self.state in P.FINAL_STATES:
            return
        self.state, self.reason, self.ended = state, reason, time.time()
        (log.info if state == P.DONE_STATE else log.error)("job %s: %s", state, reason)
        self.write_summary()

    def status(self) -> dict:
        shards = self._members(P.SHARD, (ALIVE, DEAD, LEFT))
        return {"job_id": self.job_id, "name": self.config["name"], "state": self.state, "reason": self.reason,
                "elapsed": round((self.ended or time.time()) - self.started, 3),
                "consistency": self.config["consistency"]["mode"],
                "layout": self.layout.to_dict(), "shards": self.shard_addresses(),  # for read-only clients
                "steps_per_worker": self.config["train"]["steps"],
                # A model update counts once every range has applied it (whoever serves the range).
                "updates_applied": min(self._updates_per_range(), default=0),
                "pushes_applied": min((n.stats.get("pushes", 0) for n in shards), default=0),
                "pushes_sent": sum(n.stats.get("clock", 0) for n in self.nodes.values() if n.role == P.WORKER),
                "nodes": [{"name": n.name, "role": n.role, "rank": n.rank, "address": n.address,
                           "state": n.state, "last_heartbeat": round(time.monotonic() - n.last_seen, 3),
                           "stats": n.stats, "latest": self.latest.get(n.name, {})}
                          for n in sorted(self.nodes.values(), key=lambda n: (n.role, n.rank))],
                "events": self.events[-50:], "results": self.results}

    def _updates_per_range(self) -> list[int]:
        """Each range's update count, from whichever shard served it last (a promoted backup
        carries on the count of the primary it replaced)."""
        counts = [0] * self.num_shards
        for n in self.nodes.values():
            if n.role == P.SHARD:
                for r, updates in n.stats.get("ranges", {}).items():
                    if int(r) < self.num_shards:
                        counts[int(r)] = max(counts[int(r)], updates)
        return counts

    def write_summary(self) -> None:
        if self.run_dir is not None:
            reports.write_summary(self.run_dir / "summary.json", self.status(), self.config, self.results,
                                  self._updates_per_range(), sum(self.rolled_back.values()), self.events)

    # ---- the loop ------------------------------------------------------------------------
    def serve(self) -> int:
        """Serve until the job is over and every shard has left (or a grace period ends)."""
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        linger_until = None
        while True:
            if self.state in P.FINAL_STATES:
                if linger_until is None:
                    linger_until = time.monotonic() + 2 * self.heartbeat_timeout
                nodes_out = all(n.state != ALIVE for n in self.nodes.values())
                if nodes_out or time.monotonic() > linger_until:
                    break
            if poller.poll(100):
                for _ in range(256):
                    try:
                        msg = recv(self.sock, router=True, max_bytes=self.max_bytes, flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    except WireError as err:
                        reply_error(self.sock, getattr(err, "envelope", []), 0, str(err))
                        continue
                    try:
                        self.handle(msg)
                    except WireError as err:
                        reply_error(self.sock, msg.envelope, msg.seq, str(err), retry=err.retry)
            self.check_liveness()
        self.write_summary()
        return 0 if self.state == P.DONE_STATE else 1

    def close(self) -> None:
        if self._metrics:
            self._metrics.close()
        self.sock.close(0)
