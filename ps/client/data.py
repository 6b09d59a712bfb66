"""The data plane, client side: pull weights from and push gradients to every shard at once.

Requests go out to all shards before any reply is awaited, so a pull costs one round trip to
the slowest shard, not the sum. Gradients leave as views of the caller's buffer (no copy);
pulled weights are copied once, from the received frame into the caller's buffer.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import zmq

from .. import protocol as P
from ..layout import Layout
from ..wire import Channel, Message, RemoteError


class ShardClient:
    def __init__(self, ctx: zmq.Context, layout: Layout, addresses: Sequence[str], job: str,
                 sender: str, *, timeout: float = 30.0, max_bytes: int = P.DEFAULT_MAX_MESSAGE_BYTES,
                 configure=None):
        if len(addresses) != layout.num_shards:
            raise ValueError(f"layout has {layout.num_shards} shards, got {len(addresses)} addresses")
        self.layout = layout
        self.job = job
        self.sender = sender
        self.timeout = timeout
        self.channels = [Channel(ctx, a, f"shard {i}", max_bytes, configure) for i, a in enumerate(addresses)]
        self.versions = [0] * layout.num_shards  # each shard's update count when last read
        self.bytes_sent = 0
        self.bytes_received = 0

    def pull(self, clock: int, out: np.ndarray) -> None:
        """Fill `out` (the whole flat model) with every shard's current weights."""
        self._round_trip(P.PULL, clock, None, out)

    def push(self, grad: np.ndarray, clock: int) -> None:
        """Send the flat gradient `grad`, each shard its own range; wait for every ack."""
        self._round_trip(P.PUSH, clock, grad, None)

    def push_pull(self, grad: np.ndarray, clock: int, out: np.ndarray) -> None:
        """Push `grad` at `clock` and read the weights at clock + 1, one round trip per shard."""
        self._round_trip(P.PUSH_PULL, clock, grad, out)

    def staleness_versions(self) -> list[int]:
        return list(self.versions)

    def _round_trip(self, op: str, clock: int, grad: np.ndarray | None, out: np.ndarray | None) -> None:
        pending: dict[zmq.Socket, tuple[int, int, Channel]] = {}
        for shard, ch in enumerate(self.channels):
            lo, hi = self.layout.ranges[shard]
            header = {"op": op, "job": self.job, "from": self.sender, "clock": clock, "lo": lo, "hi": hi,
                      "read_version": self.versions[shard]}
            arrays = (grad[lo:hi],) if grad is not None else ()
            pending[ch.sock] = (ch.send(header, arrays), shard, ch)
            if grad is not None:
                self.bytes_sent += (hi - lo) * grad.itemsize
        poller = zmq.Poller()
        for sock in pending:
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + self.timeout
        while pending:
            remaining = deadline - time.monotonic()
            events = dict(poller.poll(max(0, int(remaining * 1000)))) if remaining > 0 else {}
            if not events:
                missing = ", ".join(f"{ch.name} at {ch.address}" for _, _, ch in pending.values())
                raise TimeoutError(f"{op}: no reply within {self.timeout:g} s from {missing}")
            for sock in events:
                seq, shard, ch = pending[sock]
                msg = ch.receive(seq, timeout=max(0.001, deadline - time.monotonic()))
                self._accept(msg, shard, ch, out)
                poller.unregister(sock)
                del pending[sock]

    def _accept(self, msg: Message, shard: int, ch: Channel, out: np.ndarray | None) -> None:
        if msg.op == P.ERROR:
            raise RemoteError(f"{ch.name} at {ch.address} replied with an error: {msg.header.get('reason')}")
        self.versions[shard] = msg.header.get("version", self.versions[shard])
        if out is not None:
            lo, hi = self.layout.ranges[shard]
            if len(msg.arrays) != 1 or msg.arrays[0].shape != (hi - lo,):
                raise RemoteError(f"{ch.name} sent weights of the wrong shape for range [{lo}, {hi})")
            np.copyto(out[lo:hi], msg.arrays[0])
            self.bytes_received += msg.arrays[0].nbytes

    def close(self) -> None:
        for ch in self.channels:
            ch.close()
