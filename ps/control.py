"""The control plane: every node's line to the coordinator, and its heartbeat.

Both sides import this module: the shards (server side) and the workers and the evaluator
(worker side) register, beat and leave the same way. `ControlClient` makes one round trip per
request; `Heartbeat` beats on a thread of its own, for every role alike, and is the one place
that decides when the coordinator is lost: when its beats have gone unanswered for
`LOST_AFTER` heartbeat timeouts. A node's main loop gets each reply through `on_reply` (a
worker's session takes it under a lock; a shard, whose loop polls sockets, through a
`Mailbox`).
"""
from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import zmq

from . import protocol as P
from .wire import Channel, Message, RemoteError, WireError, raise_for_error

log = logging.getLogger(__name__)

# Heartbeat timeouts of unanswered beats before a node gives the coordinator up and ends: long
# enough to ride out a coordinator that stalls for longer than the timeout it declares others
# dead by, short enough that nothing outlives a coordinator that is gone.
LOST_AFTER = 3


class ControlClient:
    """Register, heartbeat, report, finish: every request is one round trip to the coordinator."""

    def __init__(self, ctx: zmq.Context, address: str, role: str, *, timeout: float = 30.0,
                 max_bytes: int = P.DEFAULT_MAX_MESSAGE_BYTES, configure=None):
        self.address = address
        self.role = role
        self.timeout = timeout
        self.name = role  # becomes "role-rank" once registered
        self.job = ""
        self.channel = Channel(ctx, address, "coordinator", max_bytes, configure)
        # Called while a reply is awaited, every half second: it raises to stop waiting (a
        # node whose heartbeat has given the coordinator up must not wait out `timeout`).
        self.give_up: Callable[[], None] | None = None

    def _request(self, op: str, body: dict | None = None, timeout: float | None = None,
                 arrays: Sequence[np.ndarray] = (), **fields: Any) -> Message:
        header = {"op": op, "job": self.job, "from": self.name, **fields}
        if body is not None:
            header["body"] = body
        deadline = time.monotonic() + (timeout or self.timeout)
        seq = self.channel.send(header, arrays)
        while True:
            try:
                msg = self.channel.receive(seq, timeout=min(0.5, max(0.0, deadline - time.monotonic())))
                break
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no reply from the coordinator at {self.address} within "
                                       f"{timeout or self.timeout:g} s") from None
                if self.give_up is not None:
                    self.give_up()
        raise_for_error(msg, self.channel)
        return msg

    def register(self, body: dict, startup_timeout: float = 60.0) -> Message:
        """Join the job, retrying until the coordinator answers or `startup_timeout` passes. Every
        try carries one token, so a coordinator that answered a try too late to be heard gives the
        next the same rank rather than a second one."""
        body = {**body, "token": secrets.token_hex(8)}
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                msg = self._request(P.REGISTER, body, timeout=min(2.0, startup_timeout), role=self.role)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"waiting for the coordinator at {self.address}: "
                                       f"no reply for {startup_timeout:g} s") from None
                log.info("waiting for the coordinator at %s", self.address)
            except RemoteError as err:  # e.g. our rank is still held by our dead predecessor
                if not err.retry or time.monotonic() > deadline:
                    raise
                log.info("%s; asking again", err)
                time.sleep(0.5)
        reply = msg.body()
        self.job = reply["job_id"]
        self.name = f"{self.role}-{reply['rank']}"
        return msg

    def heartbeat(self, body: dict) -> dict:
        return self._request(P.HEARTBEAT, body).body()

    def report(self, record: dict) -> None:
        self._request(P.REPORT, record)

    def done(self, body: dict | None = None) -> dict:
        return self._request(P.DONE, body or {}).body()

    def result(self, metrics: dict, weights: np.ndarray | None = None) -> dict:
        """The evaluator's final metrics, with the weights they were measured on (to export)."""
        return self._request(P.RESULT, metrics, arrays=() if weights is None else (weights,)).body()

    def leave(self, final_stats: dict | None = None) -> None:
        self._request(P.LEAVE, final_stats or {})

    def status(self) -> dict:
        return self._request(P.STATUS).body()

    def attach(self) -> dict:
        """Learn the job id from the coordinator's status (stop and checkpoint need it)."""
        status = self.status()
        self.job = status["job_id"]
        return status

    def stop(self, reason: str = "stopped by request") -> dict:
        if not self.job:
            self.attach()
        return self._request(P.STOP, {"reason": reason}).body()

    def checkpoint(self) -> dict:
        if not self.job:
            self.attach()
        return self._request(P.CHECKPOINT).body()

    def close(self) -> None:
        self.channel.close()


class Heartbeat(threading.Thread):
    """Sends a heartbeat every `interval` seconds on a socket of its own (ZeroMQ sockets are
    not thread-safe) and hands each reply body to `on_reply`; the node's main loop stays busy.

    A beat that fails hands on `{"state": "unreachable", "error": ...}`; once beats have failed
    for `LOST_AFTER` x `timeout` seconds, `{"state": "failed", "lost": True, "reason": ...}`:
    the node should end, its coordinator is gone."""

    def __init__(self, ctx: zmq.Context, address: str, job: str, name: str, interval: float,
                 body: Callable[[], dict], on_reply: Callable[[dict], None], timeout: float = 30.0,
                 configure=None):
        super().__init__(name=f"heartbeat-{name}", daemon=True)
        self.channel = Channel(ctx, address, "coordinator", configure=configure)
        self.header = {"op": P.HEARTBEAT, "job": job, "from": name}
        self.interval = interval
        self.body = body
        self.on_reply = on_reply
        self.timeout = timeout
        self.lost_after = LOST_AFTER * timeout
        self.stopped = threading.Event()
        self.last_reply = time.monotonic()
        self.failing_since: float | None = None
        self.silent_until = 0.0  # `hold`: a stall fault silences us
        self.paused: Callable[[], bool] = lambda: False  # a `partition` fault silences us

    def hold(self, seconds: float) -> None:
        """Send nothing for `seconds` (the node is stalled on purpose)."""
        self.silent_until = max(self.silent_until, time.monotonic() + seconds)

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                if self.paused() or time.monotonic() < self.silent_until:
                    self.stopped.wait(min(self.interval, 0.05))
                    continue
                self.on_reply(self.beat())
                self.stopped.wait(self.interval)
        finally:
            self.channel.close()

    def beat(self) -> dict:
        """One heartbeat round trip: the reply's body, or what to make of its failure."""
        sent = time.monotonic()
        try:
            msg = self.channel.receive(self.channel.send(dict(self.header, body=self.body())), timeout=self.timeout)
            if msg.op == P.OK:
                self.last_reply, self.failing_since = time.monotonic(), None
                return msg.body()
            error = f"refused: {msg.header.get('reason')}"
        except (TimeoutError, WireError) as exc:
            error = str(exc)
        log.warning("heartbeat: %s", error)
        self.failing_since = self.failing_since or sent
        silent = time.monotonic() - self.failing_since
        if silent >= self.lost_after:
            return {"state": P.FAILED, "lost": True,
                    "reason": f"coordinator at {self.channel.address} silent for {silent:.1f} s ({error})"}
        return {"state": "unreachable", "error": error}

    def stop(self) -> None:
        self.stopped.set()


class Mailbox:
    """Heartbeat replies handed from the heartbeat thread to a loop that polls ZeroMQ sockets:
    a queue, and a pipe whose read end (`fd`) the loop polls beside its sockets to wake up."""

    def __init__(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.fd, self._wake = os.pipe()
        os.set_blocking(self.fd, False)
        os.set_blocking(self._wake, False)

    def put(self, item: Any) -> None:
        self._queue.put(item)
        try:
            os.write(self._wake, b"\0")
        except BlockingIOError:  # the loop has wake-ups waiting already
            pass

    def take(self) -> list:
        """Everything put since the last call, oldest first."""
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def close(self) -> None:
        os.close(self.fd)
        os.close(self._wake)
