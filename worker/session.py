"""A worker-side node's membership in a job: register, hear the heartbeat, find the shards.

Workers and the evaluator both start the same way: join through the coordinator (the only
address they are given), receive the resolved job config and the layout, keep a heartbeat
going on a thread of its own, and wait until every shard has registered.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import zmq

from downpour.ps import protocol as P
from downpour.ps.client import ShardClient
from downpour.ps.control import ControlClient, Heartbeat
from downpour.ps.faults import FaultPlan
from downpour.ps.layout import Layout, layout_from_dict

log = logging.getLogger(__name__)


class JobEnded(Exception):
    """The coordinator says the job is over (stopped, failed) or can no longer be reached."""


class Session:
    def __init__(self, coordinator: str, role: str, rank: int | None = None, startup_timeout: float = 60.0,
                 configure: Callable[[zmq.Socket], None] | None = None, external: bool = False):
        """`configure` prepares every socket before it connects (CURVE keys, when the job uses them);
        `external`: a worker the user runs (`downpour.connect`), one of the job's `workers.external`."""
        self.ctx = zmq.Context()
        self.configure = configure
        self.control = ControlClient(self.ctx, coordinator, role, configure=configure)
        body: dict = {} if rank is None else {"rank": rank}
        if external:
            body["external"] = True
        info = self.control.register(body, startup_timeout).body()
        self.rank: int = info["rank"]
        self.world: int = info["world"]
        self.job_id: str = info["job_id"]
        self.config: dict = info["config"]
        self.layout: Layout = layout_from_dict(info["layout"])
        self.restarted: bool = bool(info.get("restart"))
        self.name = self.control.name
        self.role = role
        cluster = self.config["cluster"]
        self.control.timeout = cluster["request_timeout"]
        self.control.give_up = self._given_up
        self.state = P.STARTING
        self.reason = ""
        self.coordinator_lost = False  # the job ended because we could no longer reach the coordinator
        self.shards: list[str] | None = None
        self.epochs: list[int] | None = None  # each range's epoch (ps/ranges.py), with `shards`
        self.live: list[int] = []  # the live workers, as the coordinator last said
        self.min_clock = 0         # the slowest live worker's clock, as the coordinator last said
        self.clock = 0
        self.step = 0
        self._changed = threading.Condition()
        self.heartbeat = Heartbeat(self.ctx, coordinator, self.job_id, self.name,
                                   cluster["heartbeat_interval"], self._beat_body, self._on_beat,
                                   timeout=cluster["heartbeat_timeout"], configure=configure)
        self.heartbeat.start()
        # a `stall` fault strikes where the role asks whether the job goes on (`check`, `wait_for`)
        self._faults = FaultPlan(self.config["faults"], role, self.rank, self.config["seed"], self.restarted)
        self._clients: list[ShardClient] = []  # closed with the session: a socket left open blocks ctx.term

    def _beat_body(self) -> dict:
        return {"clock": self.clock, "step": self.step}

    def _on_beat(self, body: dict) -> None:
        with self._changed:
            if body.get("lost"):  # the heartbeat gave the coordinator up
                self.state, self.reason, self.coordinator_lost = P.FAILED, body["reason"], True
            elif body.get("state") != "unreachable":  # a missed beat or two: wait and see
                self.state = body["state"]
                self.reason = body.get("reason", "")
                if body.get("shards"):
                    self.shards, self.epochs = body["shards"], body.get("epochs")
                if body.get("workers") is not None:
                    self.live = body["workers"]
                self.min_clock = body.get("clock", self.min_clock)
            self._changed.notify_all()

    def wait_for(self, states: set[str], timeout: float | None = None) -> str:
        """Block until the job reaches one of `states` (or ends); return the state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._stall_point()
        with self._changed:
            while self.state not in states:
                if self.state in P.FINAL_STATES:
                    raise JobEnded(f"job {self.state}: {self.reason}")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{self.name}: job still {self.state} after {timeout:g} s")
                self._changed.wait(remaining if remaining is not None else 1.0)
            return self.state

    def check(self) -> None:
        """Raise JobEnded once the job is over, however it ended: while we were computing, or
        while a round trip waits (say after early stopping) for shards that have left."""
        self._stall_point()
        if self.state in P.FINAL_STATES:
            raise JobEnded(f"job {self.state}: {self.reason}")

    def _given_up(self) -> None:
        if self.coordinator_lost:  # a report or a goodbye would wait for nobody
            raise JobEnded(f"job {self.state}: {self.reason}")

    def _stall_point(self) -> None:
        """Carry out a `stall` fault due now: a worker counts its steps, the evaluator the
        slowest worker's clock."""
        self._faults.stall(self.step if self.control.role == P.WORKER else self.min_clock, self.heartbeat.hold)

    def shard_client(self, faults: FaultPlan | None = None) -> ShardClient:
        """A client for every shard, following them if they move (restart, promotion)."""
        self.wait_for({P.RUNNING, P.FINISHING, P.DONE_STATE}, self.config["cluster"]["startup_timeout"])
        while self.shards is None:
            time.sleep(0.01)
        cluster = self.config["cluster"]
        # Wait for a shard at least as long as the coordinator waits for it to come back.
        patience = cluster["request_timeout"] + cluster["heartbeat_timeout"] + cluster["startup_timeout"]
        compression = self.config["compression"]
        if self.role != P.WORKER:  # the evaluator scores the weights the shards hold: plain reads
            compression = {**compression, "pull": "none"}
        client = ShardClient(self.ctx, self.layout, self.shards, self.job_id, self.name, timeout=patience,
                           max_bytes=int(self.config["cluster"]["max_message_mb"] * (1 << 20)),
                           addresses_now=lambda: self.shards, epochs=self.epochs, epochs_now=lambda: self.epochs,
                           faults=faults, configure=self.configure,
                           compression=compression,
                           shared_memory=cluster["shared_memory"] and self.configure is None,
                           give_up=self.check)
        self._clients.append(client)
        return client

    def close(self, leave: bool = True) -> None:
        """Stop the heartbeat, say goodbye (unless told not to) and close every socket, however
        the role ended: an open socket would keep the process from exiting."""
        for client in self._clients:
            client.close()
        self.heartbeat.stop()
        self.heartbeat.join(timeout=5)
        if leave and not self.coordinator_lost:
            try:
                self.control.leave()
            except (TimeoutError, RuntimeError, JobEnded) as exc:
                log.info("%s: could not say goodbye: %s", self.name, exc)
        self.control.close()
        self.ctx.term()
