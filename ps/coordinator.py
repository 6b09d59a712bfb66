"""The coordinator: the one address everybody knows.

Nodes register and get a rank; it hands out the job (the resolved config), the layout and the
initial weights (each shard its own range), tracks heartbeats and clocks, declares the dead,
decides when the job is done, answers `status`, and writes the run directory's
`metrics.jsonl` and `summary.json`. It never touches gradients: that is the shards' work.

The state lives in `membership.Membership`, a pure state machine; this module is the process
around it: one ROUTER socket, a handler per operation (`HANDLERS`), and the run's files.
"""
from __future__ import annotations

import json
import logging
import pathlib
import secrets
import time
from collections.abc import Callable, Sequence

import numpy as np
import zmq

from . import export, reports
from . import protocol as P
from .faults import FaultPlan
from .layout import make_layout
from .membership import ALIVE, Membership, Node, Refused
from .wire import Message, WireError, bind_socket, recv, reply, reply_error

log = logging.getLogger(__name__)

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
        self.max_bytes = int(config["cluster"]["max_message_mb"] * (1 << 20))
        self.heartbeat_timeout = config["cluster"]["heartbeat_timeout"]
        self.members = Membership(config, time.monotonic())
        self.faults = FaultPlan(config["faults"], P.COORDINATOR, 0, config["seed"])
        self.results: dict = {}
        self.latest: dict[str, dict] = {}  # the newest report of each worker
        self.started = time.time()
        self.summary_written = False
        self._metrics = open(self.run_dir / "metrics.jsonl", "a") if self.run_dir else None
        self.handlers: dict[str, Callable[[Message], None]] = {
            P.STATUS: self._status, P.REGISTER: self._register, P.STOP: self._stop,
            P.CHECKPOINT: self._checkpoint, P.HEARTBEAT: self._heartbeat, P.REPORT: self._report,
            P.DONE: self._done, P.RESULT: self._result, P.LEAVE: self._leave}

    @property
    def state(self) -> str:
        return self.members.state

    # ---- requests ------------------------------------------------------------------------
    def handle(self, msg: Message) -> None:
        """Act on one decoded message (the wire has checked its fields and its sender's role)."""
        handler = self.handlers.get(msg.op)
        if handler is None:
            raise WireError(f"operation {msg.op!r} is not served by the coordinator")
        if msg.op not in (P.STATUS, P.REGISTER) and msg.header["job"] != self.job_id:
            raise WireError(f"job {msg.header['job']!r} is not this coordinator's job {self.job_id!r}")
        try:
            handler(msg)
        except Refused as err:
            raise WireError(str(err), retry=err.retry) from None
        self._settle()

    def _sender(self, msg: Message) -> Node:
        return self.members.node(msg.header["from"], time.monotonic())

    def _status(self, msg: Message) -> None:
        reply(self.sock, msg, body=self.status())

    def _register(self, msg: Message) -> None:
        role = msg.header["role"]
        node, restart = self.members.register(role, msg.body(), time.monotonic())
        n = self.members.num_workers
        info = {"rank": node.rank, "job_id": self.job_id, "config": self.config, "restart": restart,
                "layout": self.layout.to_dict(), "workers": list(range(n)),
                "world": max(n, node.rank + 1) if role == P.WORKER else n}
        arrays = ()
        if role == P.SHARD:  # the ranges it serves (its own, unless promoted away), at their initial weights
            info["serve"] = self.members.ranges.orders(node.rank, {})["serve"]
            arrays = tuple(self.initial[slice(*self.layout.ranges[int(r)])] for r in info["serve"])
        reply(self.sock, msg, body=info, arrays=arrays)

    def _stop(self, msg: Message) -> None:
        reason = msg.body().get("reason")
        self.members.finish(P.STOPPED, reason if isinstance(reason, str) else "stopped by request", time.monotonic())
        reply(self.sock, msg, body={"state": self.state})

    def _checkpoint(self, msg: Message) -> None:
        reply(self.sock, msg, body={"checkpoint": self.members.request_checkpoint()})

    def _heartbeat(self, msg: Message) -> None:
        node = self.members.beat(msg.header["from"], msg.body(), time.monotonic())
        reply(self.sock, msg, body=self.members.heartbeat_reply(node))

    def _report(self, msg: Message) -> None:
        self._record(self._sender(msg), reports.json_safe(msg.body()))
        reply(self.sock, msg)

    def _done(self, msg: Message) -> None:
        self.members.done(self._sender(msg), msg.body(), time.monotonic())
        reply(self.sock, msg, body={"state": self.state})

    def _result(self, msg: Message) -> None:
        node = self._sender(msg)
        self._export(msg)
        self.results = {k: v for k, v in reports.json_safe(msg.body()).items() if isinstance(v, (int, float))}
        self._record(node, dict(self.results, kind="test"))
        reply(self.sock, msg)
        self.members.finish(P.DONE_STATE, self.members.reason or "finished", time.monotonic())

    def _leave(self, msg: Message) -> None:
        self.members.leave(self._sender(msg), msg.body(), time.monotonic())
        reply(self.sock, msg)

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

    def _record(self, node: Node, record: dict) -> None:
        now = time.monotonic()
        record = dict(record, time=round(time.time(), 3), role=node.role, rank=node.rank)
        if record.get("kind") == "early_stop":
            self.members.early_stop(node, str(record.get("message"))[:300], record.get("clock"), now)
        if record.get("kind") == "alarm":
            log.error("ALARM from %s at clock %s: %s", node.name, record.get("clock"), record.get("message"))
            self.members.event("alarm", node, now, message=str(record.get("message"))[:300], clock=record.get("clock"))
            if record.get("fatal"):
                self.members.finish(P.FAILED, f"{node.name} at clock {record.get('clock')}: {record.get('message')}",
                                    now)
        if node.role == P.WORKER and record.get("kind") == "train":  # not an alarm
            self.latest[node.name] = record
        if self._metrics:
            self._metrics.write(json.dumps(record) + "\n")
            self._metrics.flush()

    # ---- the job's files -----------------------------------------------------------------
    def _settle(self) -> None:
        """Write the summary as soon as the job has ended (once; `serve` writes it again last)."""
        if self.state in P.FINAL_STATES and not self.summary_written:
            self.summary_written = True
            self.write_summary()

    def status(self) -> dict:
        m = self.members
        now = time.monotonic()
        updates, pushes = m.per_range("ranges"), m.per_range("range_pushes")
        routes = m.ranges.routes(m.shard_addresses())
        ended = None if m.ended is None else self.started + (m.ended - m.started)
        return {"job_id": self.job_id, "name": self.config["name"], "state": m.state, "reason": m.reason,
                "elapsed": round((ended or time.time()) - self.started, 3),
                "consistency": self.config["consistency"]["mode"],
                "steps_per_worker": self.config["train"]["steps"],
                # A model update counts once every range has applied it (whoever serves the range).
                "updates_applied": min(updates, default=0), "pushes_applied": min(pushes, default=0),
                "updates_per_range": updates, "pushes_per_range": pushes,
                "ranges": m.ranges.table(now),
                "pushes_sent": sum(n.stats.get("clock", 0) for n in m.nodes.values() if n.role == P.WORKER),
                "nodes": [{"name": n.name, "role": n.role, "rank": n.rank, "address": n.address,
                           "state": n.state, "last_heartbeat": round(now - n.last_seen, 3),
                           "stats": n.stats, "latest": self.latest.get(n.name, {})}
                          for n in sorted(m.nodes.values(), key=lambda n: (n.role, n.rank))],
                "events": m.events[-50:], "results": self.results,
                # what a read-only client (downpour.connect) needs to reach the shards
                "layout": self.layout.to_dict(), "shards": routes and routes[0], "epochs": routes and routes[1]}

    def write_summary(self) -> None:
        if self.run_dir is not None:
            m = self.members
            reports.write_summary(self.run_dir / "summary.json", self.status(), self.config, self.results,
                                  sum(m.rolled_back.values()), m.events)

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
                nodes_out = all(n.state != ALIVE for n in self.members.nodes.values())
                if nodes_out or time.monotonic() > linger_until:
                    break
            self.faults.stall(self.members.min_worker_clock())
            ready = poller.poll(100)
            self.members.tick(time.monotonic())  # first: it excuses a gap in our own running
            if ready:
                self._drain()
            self._settle()
        self.write_summary()
        return 0 if self.state == P.DONE_STATE else 1

    def _drain(self) -> None:
        """Handle what has arrived, up to a burst, answering every bad message with an error."""
        for _ in range(256):
            try:
                msg = recv(self.sock, router=True, max_bytes=self.max_bytes, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            except WireError as err:
                reply_error(self.sock, getattr(err, "envelope", []), 0, str(err))
                continue
            try:
                self.handle(msg)
            except WireError as err:
                reply_error(self.sock, msg.envelope, msg.seq, str(err), retry=err.retry)

    def close(self) -> None:
        if self._metrics:
            self._metrics.close()
        self.sock.close(0)
