"""The control plane, client side: a node's line to the coordinator."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import zmq

from .. import protocol as P
from ..wire import Channel, Message, RemoteError

log = logging.getLogger(__name__)


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

    def _request(self, op: str, body: dict | None = None, timeout: float | None = None,
                 arrays: Sequence[np.ndarray] = (), **fields: Any) -> Message:
        header = {"op": op, "job": self.job, "from": self.name, **fields}
        if body is not None:
            header["body"] = body
        return self.channel.request(header, arrays, timeout=timeout or self.timeout)

    def register(self, body: dict, startup_timeout: float = 60.0) -> Message:
        """Join the job, retrying until the coordinator answers or `startup_timeout` passes."""
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
    not thread-safe) and hands each reply to `on_reply`; the node's main loop stays busy."""

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
        self.stopped = threading.Event()
        self.last_reply = time.monotonic()
        self.paused: Callable[[], bool] = lambda: False  # a `partition` fault silences us

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                if self.paused():
                    self.stopped.wait(self.interval)
                    continue
                try:
                    seq = self.channel.send(dict(self.header, body=self.body()))
                    msg = self.channel.receive(seq, timeout=self.timeout)
                    if msg.op == P.OK:
                        self.last_reply = time.monotonic()
                        self.on_reply(msg.body())
                    else:
                        log.warning("heartbeat refused: %s", msg.header.get("reason"))
                except (TimeoutError, RemoteError) as exc:
                    log.warning("heartbeat: %s", exc)
                    self.on_reply({"state": "unreachable", "error": str(exc)})
                self.stopped.wait(self.interval)
        finally:
            self.channel.close()

    def stop(self) -> None:
        self.stopped.set()
