"""A parameter-server shard: one contiguous key range, its update rule, and the consistency model.

One thread, one ROUTER socket for the data plane, one DEALER line to the coordinator. Reads
that the consistency model cannot serve yet are parked and answered as soon as an update or a
change of membership allows; the socket keeps serving everybody else in the meantime.

Updates are applied in place to one flat float32 buffer. A reply never sends a view of that
buffer: ZeroMQ sends frames asynchronously from its I/O thread, so a view could be torn by the
next in-place update. Each reply instead gets one snapshot copy, taken at most once per
version of the weights and shared by every read of that version.
"""
from __future__ import annotations

import collections
import ipaddress
import logging
import pathlib
import socket
import time
from typing import Any

import numpy as np
import zmq

from model import optim

from . import checkpoint
from . import protocol as P
from .client.control import ControlClient
from .consistency import Consistency
from .layout import layout_from_dict
from .wire import Message, WireError, recv, reply, reply_error

log = logging.getLogger(__name__)


class Shard:
    def __init__(self, ctx: zmq.Context, coordinator: str, bind: str, advertise: str | None = None,
                 rank: int | None = None, run_dir: str | None = None):
        self.ctx = ctx
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.sock.bind(bind)
        endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.address = _advertised(endpoint, advertise, coordinator)
        self.control = ControlClient(ctx, coordinator, P.SHARD)
        self.requested_rank = rank
        self.run_dir = pathlib.Path(run_dir) if run_dir else None
        self.parked: list[tuple[Message, int]] = []  # reads waiting for the consistency model
        self.bsp_sums: dict[int, np.ndarray] = {}
        self.bsp_counts: collections.Counter = collections.Counter()
        self.pushes_applied = 0
        self.updates_applied = 0
        self.pulls_served = 0
        self.push_staleness: collections.Counter = collections.Counter()
        self.errors = 0
        self._snapshot: tuple[int, np.ndarray] | None = None

    # ---- start-up ------------------------------------------------------------------------
    def join(self, startup_timeout: float = 60.0) -> None:
        """Register with the coordinator; receive the job, the layout and the initial weights."""
        body: dict[str, Any] = {"address": self.address}
        if self.requested_rank is not None:
            body["rank"] = self.requested_rank
        msg = self.control.register(body, startup_timeout)
        info = msg.body()
        self.rank = info["rank"]
        self.job_id = info["job_id"]
        self.config = info["config"]
        self.layout = layout_from_dict(info["layout"])
        self.lo, self.hi = self.layout.ranges[self.rank]
        cluster = self.config["cluster"]
        self.max_bytes = int(cluster["max_message_mb"] * (1 << 20))
        self.sock.setsockopt(zmq.MAXMSGSIZE, 4 * self.max_bytes)  # hard memory bound per frame
        self.heartbeat_interval = cluster["heartbeat_interval"]
        self.coordinator_timeout = cluster["heartbeat_timeout"] * 3
        opt = dict(self.config["optimizer"])
        self.rule = optim.make(opt.pop("type"), **opt)
        mode = self.config["consistency"]
        self.consistency = Consistency(mode["mode"], mode["staleness"], info["workers"])
        if not msg.arrays or msg.arrays[0].shape != (self.hi - self.lo,):
            raise RuntimeError("coordinator sent no initial weights for this shard's range")
        self.weights = np.array(msg.arrays[0], dtype=np.float32)  # our own, writable copy
        self.rule.bind(self.weights)
        log.info("shard %d serving keys [%d, %d) (%.2f MB) at %s, %s consistency",
                 self.rank, self.lo, self.hi, self.weights.nbytes / 1e6, self.address, mode["mode"])

    # ---- the loop ------------------------------------------------------------------------
    def serve(self) -> str:
        """Serve until the coordinator declares the job over; return the final job state."""
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.control.channel.sock, zmq.POLLIN)
        next_beat = 0.0
        beat_seq = None
        last_reply = time.monotonic()
        state = P.RUNNING
        while state not in P.FINAL_STATES:
            now = time.monotonic()
            if now >= next_beat:
                beat_seq = self.control.channel.send(
                    {"op": P.HEARTBEAT, "job": self.job_id, "from": self.control.name, "body": self.stats()})
                next_beat = now + self.heartbeat_interval
            if now - last_reply > self.coordinator_timeout:
                log.error("coordinator at %s silent for %.1f s: shutting down", self.control.address,
                          now - last_reply)
                return P.FAILED
            events = dict(poller.poll(max(1, int((next_beat - time.monotonic()) * 1000))))
            if self.sock in events:
                for _ in range(256):  # drain a burst, but keep heartbeats on time
                    try:
                        self._handle_raw()
                    except zmq.Again:
                        break
            if self.control.channel.sock in events:
                msg = recv(self.control.channel.sock, router=False, flags=zmq.NOBLOCK)
                if msg.seq == beat_seq and msg.op == P.OK:
                    last_reply = time.monotonic()
                    state = self._on_heartbeat_reply(msg.body())
        return state

    def _on_heartbeat_reply(self, body: dict) -> str:
        if body.get("workers") is not None:
            self._applied(self.consistency.set_live(body["workers"]))
        self._serve_parked()
        return body.get("state", P.RUNNING)

    def _handle_raw(self) -> None:
        try:
            msg = recv(self.sock, router=True, max_bytes=self.max_bytes, flags=zmq.NOBLOCK)
        except WireError as err:
            self.errors += 1
            reply_error(self.sock, getattr(err, "envelope", []), 0, str(err))
            return
        try:
            self._handle(msg)
        except WireError as err:
            self.errors += 1
            reply_error(self.sock, msg.envelope, msg.seq, str(err))

    # ---- the data plane ------------------------------------------------------------------
    def _handle(self, msg: Message) -> None:
        h = msg.header
        if msg.op not in P.DATA_OPS:
            raise WireError(f"operation {msg.op!r} is not served by a shard")
        if h["job"] != self.job_id:
            raise WireError(f"job {h['job']!r} is not this shard's job")
        lo, hi = h["lo"], h["hi"]
        if not self.lo <= lo <= hi <= self.hi:
            raise WireError(f"range [{lo}, {hi}) is outside this shard's range [{self.lo}, {self.hi})")
        role, rank = _sender(h["from"])
        clock = h["clock"]
        if msg.op in (P.PUSH, P.PUSH_PULL):
            if role != P.WORKER:
                raise WireError(f"{h['from']!r} may not push: only workers push gradients")
            if len(msg.arrays) != 1 or msg.arrays[0].dtype != np.float32 or msg.arrays[0].shape != (hi - lo,):
                got = [(a.dtype.name, a.shape) for a in msg.arrays]
                raise WireError(f"push to [{lo}, {hi}) needs one float32 array of shape ({hi - lo},), got {got}")
            self._push(rank, clock, lo, hi, msg.arrays[0], h.get("read_version", self.updates_applied))
        if msg.op == P.PUSH:
            reply(self.sock, msg, version=self.updates_applied)
            return
        read_clock = clock + 1 if msg.op == P.PUSH_PULL else clock
        if role != P.WORKER or self.consistency.can_read(rank, read_clock):
            self._read(msg, rank if role == P.WORKER else None, read_clock)
        else:
            self.parked.append((msg, read_clock))
        self._serve_parked()

    def _push(self, worker: int, clock: int, lo: int, hi: int, grad: np.ndarray, read_version: Any) -> None:
        try:
            apply_now, completed = self.consistency.push(worker, clock)
        except ValueError as exc:
            raise WireError(str(exc)) from None
        if apply_now:
            if isinstance(read_version, int):
                self.push_staleness[max(0, self.updates_applied - read_version)] += 1
            self._step(lo, hi, grad)
        else:
            total = self.bsp_sums.get(clock)
            if total is None:
                total = self.bsp_sums[clock] = np.zeros_like(self.weights)
            total[lo - self.lo:hi - self.lo] += grad
            self.bsp_counts[clock] += 1
        self.pushes_applied += 1
        self._applied(completed)

    def _applied(self, completed_clocks: list[int]) -> None:
        """Apply the mean of each completed bsp clock, in clock order."""
        for c in completed_clocks:
            total = self.bsp_sums.pop(c)
            total /= self.bsp_counts.pop(c)
            self._step(self.lo, self.hi, total)

    def _step(self, lo: int, hi: int, grad: np.ndarray) -> None:
        if lo == self.lo and hi == self.hi:
            self.rule.step(self.weights, grad)
        else:
            a, b = lo - self.lo, hi - self.lo
            self.rule.step(self.weights[a:b], grad, index=slice(a, b))
        self.updates_applied += 1

    def _read(self, msg: Message, worker: int | None, clock: int) -> None:
        if worker is not None:
            self.consistency.record_read(worker, clock)
        h = msg.header
        a, b = h["lo"] - self.lo, h["hi"] - self.lo
        reply(self.sock, msg, arrays=(self._weights_snapshot()[a:b],), version=self.updates_applied)
        self.pulls_served += 1

    def _weights_snapshot(self) -> np.ndarray:
        if self._snapshot is None or self._snapshot[0] != self.updates_applied:
            self._snapshot = (self.updates_applied, self.weights.copy())
        return self._snapshot[1]

    def _serve_parked(self) -> None:
        if not self.parked:
            return
        still = []
        for msg, clock in self.parked:
            _, rank = _sender(msg.header["from"])
            if self.consistency.can_read(rank, clock):
                self._read(msg, rank, clock)
            else:
                still.append((msg, clock))
        self.parked = still

    # ---- state ---------------------------------------------------------------------------
    def stats(self) -> dict:
        return {"rank": self.rank, "address": self.address, "pushes": self.pushes_applied,
                "updates": self.updates_applied, "pulls": self.pulls_served, "errors": self.errors,
                "clock": self.consistency.min_clock(), "parked": len(self.parked),
                "read_staleness": {str(k): v for k, v in sorted(self.consistency.staleness_seen.items())},
                "push_staleness": {str(k): v for k, v in sorted(self.push_staleness.items())}}

    def save_checkpoint(self, path: pathlib.Path) -> None:
        arrays = {"weights": self.weights}
        arrays.update({f"rule.{k}": np.asarray(v) for k, v in self.rule.state_dict().items()
                       if isinstance(v, np.ndarray)})
        meta = {"rank": self.rank, "lo": self.lo, "hi": self.hi, "job_id": self.job_id,
                "updates": self.updates_applied, "pushes": self.pushes_applied,
                "rule": {k: v for k, v in self.rule.state_dict().items() if not isinstance(v, np.ndarray)},
                "clocks": {str(k): v for k, v in self.consistency.clocks.items()},
                "layout": self.layout.fingerprint(), "time": time.time()}
        checkpoint.save(path, arrays, meta)

    def finish(self, state: str) -> None:
        """Write the final checkpoint and tell the coordinator we are leaving."""
        if self.run_dir is not None:
            self.save_checkpoint(self.run_dir / "checkpoints" / f"shard-{self.rank}.npz")
        if state != P.FAILED:
            try:
                self.control.leave(self.stats())
            except (TimeoutError, RuntimeError) as exc:
                log.warning("could not say goodbye to the coordinator: %s", exc)
        log.info("shard %d done: %d pushes, %d updates, %d pulls, %d bad messages",
                 self.rank, self.pushes_applied, self.updates_applied, self.pulls_served, self.errors)

    def close(self) -> None:
        self.sock.close(0)
        self.control.close()


def _sender(name: str) -> tuple[str, int]:
    role, _, rank = name.rpartition("-")
    return (role, int(rank)) if rank.isdigit() else (name, -1)


def _advertised(endpoint: str, advertise: str | None, coordinator: str | None = None) -> str:
    """The address peers should dial: `advertise` (HOST or HOST:PORT) if given, else the bound
    endpoint. A wildcard bind (0.0.0.0) has no address of its own: it becomes this host's
    address on the interface that reaches the coordinator (the container's IP on a compose
    network, the pod IP in Kubernetes, the namespace's IP in the multi-host test), falling
    back to the host name only when the coordinator is on loopback or cannot be resolved."""
    port = endpoint.rsplit(":", 1)[1]
    if advertise:
        host = advertise if ":" not in advertise.removeprefix("tcp://") else None
        if host is None:
            return advertise if advertise.startswith("tcp://") else f"tcp://{advertise}"
        return f"tcp://{host}:{port}"
    host = endpoint.removeprefix("tcp://").rsplit(":", 1)[0]
    if host in ("0.0.0.0", "*", "[::]"):
        host = _route_address(coordinator) or socket.gethostname()
    return f"tcp://{host}:{port}"


def _route_address(coordinator: str | None) -> str | None:
    """This host's source address towards the coordinator, or None if that is loopback.

    A UDP `connect` only asks the kernel for a route; no packet is sent."""
    if not coordinator or not coordinator.startswith("tcp://"):
        return None
    host, _, port = coordinator.removeprefix("tcp://").rpartition(":")
    try:
        family, kind, proto, _, target = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.connect(target)
            address = probe.getsockname()[0]
    except (OSError, ValueError):
        return None
    if ipaddress.ip_address(address.split("%")[0]).is_loopback:
        return None
    return f"[{address}]" if ":" in address else address


def run(coordinator: str, bind: str, advertise: str | None = None, rank: int | None = None,
        run_dir: str | None = None, startup_timeout: float = 60.0) -> int:
    """The `downpour shard` role: join, serve, checkpoint, leave. Returns an exit code."""
    ctx = zmq.Context()
    shard = Shard(ctx, coordinator, bind, advertise, rank, run_dir)
    try:
        shard.join(startup_timeout)
        state = shard.serve()
        shard.finish(state)
        return 0 if state != P.FAILED else 1
    finally:
        shard.close()
        ctx.term()
