"""Chain replication of a shard's range (the OSDI'14 parameter server's design, with one backup).

With `shards.replication: 2` the shard holding range r keeps a backup of range r-1 (mod the
shard count). The primary forwards every push it applies to the backup holder and holds its
reply to the worker until the backup has acknowledged: an acknowledged push is on two
processes. When a primary dies, the coordinator promotes the backup holder to serve the range
and the workers re-route their unanswered pushes to it; because the backup applied the same
pushes through the same exactly-once log, a resent push is applied once, never twice, and no
acknowledged push is lost.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import zmq

from . import protocol as P
from . import spans
from .wire import Channel, WireError, recv

log = logging.getLogger(__name__)


class Replicator:
    """The primary's side: forward pushes to the backup holder, release replies on its acks."""

    def __init__(self, ctx: zmq.Context, job: str, sender: str, max_bytes: int, configure=None):
        self.ctx, self.job, self.sender = ctx, job, sender
        self.max_bytes, self.configure = max_bytes, configure
        self.target: str | None = None
        self.channel: Channel | None = None
        self.waiting: dict[int, list[Callable[[], None]]] = {}  # replicate seq -> replies it holds
        self.forwarded = 0

    @property
    def sock(self) -> zmq.Socket | None:
        return self.channel.sock if self.channel is not None else None

    def set_target(self, address: str | None) -> None:
        """Follow the coordinator's word on who holds our backup; with none, release every
        held reply (the range runs without a backup until one is there again)."""
        if address == self.target:
            return
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.waiting:  # the old holder will never answer these
            log.warning("backup holder gone: releasing %d held replies", len(self.waiting))
            self.release_all()
        self.target = address
        if address is None:
            log.warning("no backup holder: running unreplicated")
        else:
            self.channel = Channel(self.ctx, address, "backup", self.max_bytes, self.configure)
            log.info("replicating to %s", address)

    def forward(self, rng: int, worker: int, clock: int, lo: int, hi: int, grad: np.ndarray, read_version,
                keys: spans.Spans | None = None) -> int | None:
        """Send one applied push to the backup holder; the seq to hold replies on (None: no
        backup). A push by rows (`keys`, `grad` their packed values) goes on by rows."""
        if self.channel is None:
            return None
        header = {"op": P.REPLICATE, "job": self.job, "from": self.sender, "range": rng, "worker": worker,
                  "clock": clock, "lo": lo, "hi": hi, "read_version": read_version}
        if keys is not None:
            header["grad_spans"] = spans.pack(keys)
        seq = self.channel.send(header, (grad,))
        self.waiting[seq] = []
        self.forwarded += 1
        return seq

    def hold(self, seq: int, release: Callable[[], None]) -> None:
        self.waiting.setdefault(seq, []).append(release)

    def on_acks(self) -> None:
        """Release the replies whose pushes the backup has acknowledged."""
        while self.channel is not None:
            try:
                msg = recv(self.channel.sock, router=False, max_bytes=self.max_bytes, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            except WireError:
                continue
            if msg.op == P.ERROR:
                log.error("the backup refused a push: %s", msg.header.get("reason"))
            for release in self.waiting.pop(msg.seq, []):
                release()

    def release_all(self) -> None:
        for releases in self.waiting.values():
            for release in releases:
                release()
        self.waiting.clear()

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()


def backup_of(rank: int, shards: int) -> int:
    """The range whose backup shard `rank` holds."""
    return (rank - 1) % shards


def holder_of_backup(rng: int, shards: int) -> int:
    """The shard that holds range `rng`'s backup."""
    return (rng + 1) % shards
