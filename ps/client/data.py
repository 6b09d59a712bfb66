"""The data plane, client side: pull weights from and push gradients to every shard at once.

Requests go out to all shards before any reply is awaited, so a round trip costs the slowest
shard, not the sum. Gradients leave as views of the caller's buffer; pulled weights go into a
flat buffer or a `WeightSink` (`sink.py`) that keeps the received frames as its memory. Pushes
may be compressed (`ps/compression.py`, error feedback kept here), and so may reads
(`compression.pull`, `ps/reads.py`: we keep our view of each range, a read carries the change
since it). A round trip can be split in two (`start`, `finish`) so compute overlaps it.

With a shard on the same host (`ps/shm.py`) only headers travel: whether a shard is local is
learnt from its replies, and a shard that cannot map our memory says so and we use the wire.

Pushes are exactly-once: a push is identified by (worker, clock), the shard applies each id
once, so a push that got no reply is sent again after a retry interval that adapts to the
round-trip time. Every request carries its range's epoch; a shard serving the range at another
epoch, or not at all, asks us to ask again wherever the coordinator now says the range is.
"""
from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np
import zmq

from .. import protocol as P
from .. import shm, spans
from ..compression import Compressor, wire_bytes
from ..faults import FaultPlan
from ..layout import Layout
from ..reads import HeldWeights, StaleView
from ..wire import Channel, Message, RemoteError, WireError, recv
from .sink import Out, WeightSink, deliver, deliver_spans

MIN_RETRY = 0.25  # seconds before an unanswered request is sent again


@dataclasses.dataclass
class _Pending:
    """One shard's part of a round trip: what to resend, and the sequence numbers it went by."""

    shard: int
    header: dict
    arrays: tuple
    seqs: set
    sent_at: float
    retry_at: float
    attempts: int = 1
    grad: np.ndarray | None = None  # this shard's part of a push through shared memory
    grad_spans: spans.Spans | None = None  # the keys of it to push, if not all (`compression.rows`)
    grad_packed: bytes = b""  # those keys in the header's form
    grad_values: np.ndarray | None = None  # their values, packed, if the caller had them
    read_spans: spans.Spans | None = None  # the keys to read, if not all


@dataclasses.dataclass
class RoundTrip:
    """A request sent to every shard whose replies are not yet all in."""

    op: str
    out: Out
    deadline: float
    pending: dict[int, _Pending] = dataclasses.field(default_factory=dict)


class ShardClient:
    def __init__(self, ctx: zmq.Context, layout: Layout, addresses: Sequence[str], job: str,
                 sender: str, *, timeout: float = 30.0, max_bytes: int = P.DEFAULT_MAX_MESSAGE_BYTES,
                 configure=None, addresses_now: Callable[[], Sequence[str] | None] | None = None,
                 epochs: Sequence[int] | None = None, epochs_now: Callable[[], Sequence[int] | None] | None = None,
                 faults: FaultPlan | None = None, compression: dict | None = None,
                 shared_memory: bool = True, give_up: Callable[[], None] | None = None):
        """`give_up` is called whenever a round trip has waited a retry interval in vain; it
        raises to abandon the round trip (a worker's when the coordinator says the job ended,
        so that it does not wait out `timeout` for shards that have already left)."""
        if len(addresses) != layout.num_shards:
            raise ValueError(f"layout has {layout.num_shards} shards, got {len(addresses)} addresses")
        self.ctx = ctx
        self.layout = layout
        self.job = job
        self.sender = sender
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.configure = configure
        self.addresses_now = addresses_now
        self.epochs_now = epochs_now
        self.give_up = give_up
        self.faults = faults
        self.compressor = Compressor(compression or {}, layout.ranges)
        compressed_reads = (compression or {}).get("pull", "none") != "none"
        self.held = HeldWeights(layout.ranges) if compressed_reads else None  # our views (ps/reads.py)
        self.addresses = list(addresses)
        self.epochs: list[int | None] = list(epochs) if epochs is not None else [None] * layout.num_shards
        self.channels = [self._channel(i, a) for i, a in enumerate(addresses)]
        self._polled: zmq.Poller | None = None
        self.versions = [0] * layout.num_shards  # each shard's update count when last read
        self.shard_clocks = [0] * layout.num_shards  # the clock each shard has on record for us
        self.bytes_sent = 0
        self.bytes_received = 0
        self.retries = 0
        self.waited = 0.0  # seconds spent blocked in `finish`: communication that compute did not hide
        self._rtts: collections.deque[float] = collections.deque(maxlen=32)
        self._retry_after = MIN_RETRY
        self.shared_memory = shared_memory
        self.local: list[shm.Segment | None] = [None] * layout.num_shards  # shards whose memory we map
        self._unmappable: set[tuple] = set()  # segment references that failed to map from here
        self._wire_only: set[int] = set()     # shards that cannot map our memory (until they move)
        self._attached = shm.Attached(limit=4 * layout.num_shards)
        self._grads: shm.Segment | None = None
        self._parts = spans.Parts(layout.ranges)  # each shard's part of the last few span lists

    def gradient_buffers(self, n: int) -> list[np.ndarray]:
        """`n` flat buffers for outgoing gradients. Pushed from one of these, a gradient reaches
        a shard on this host without a copy (in shared memory); elsewhere it is sent as usual."""
        size = self.layout.total
        if self.shared_memory and self.compressor.codec == "none":  # compressed pushes are encoded anyway
            try:
                self._grads = shm.Segment.create(n * size, self.sender)
                return [self._grads.array[i * size:(i + 1) * size] for i in range(n)]
            except OSError:  # a sandbox without memfd_create: the wire it is
                pass
        return [np.zeros(size, np.float32) for _ in range(n)]

    def _channel(self, shard: int, address: str) -> Channel:
        return Channel(self.ctx, address, f"shard {shard}", self.max_bytes, self.configure)

    # ---- the three operations ------------------------------------------------------------
    def pull(self, clock: int, out: np.ndarray | WeightSink) -> None:
        """Fill `out` (the whole flat model, or a sink) with every shard's current weights."""
        self.finish(self.start(P.PULL, clock, None, out))

    def push(self, grad: np.ndarray, clock: int) -> None:
        """Send the flat gradient `grad`, each shard its own range; wait for every ack."""
        self.finish(self.start(P.PUSH, clock, grad, None))

    def push_pull(self, grad: np.ndarray, clock: int, out: np.ndarray | WeightSink) -> None:
        """Push `grad` at `clock` and read the weights at clock + 1, one round trip per shard."""
        self.finish(self.start(P.PUSH_PULL, clock, grad, out))

    # ---- split in two, so that a worker can compute while the round trip is under way ------
    def start(self, op: str, clock: int, grad: np.ndarray | None, out: Out, *,
              grad_spans: spans.Spans | None = None, read_spans: spans.Spans | None = None,
              grad_values: np.ndarray | None = None) -> RoundTrip:
        """Send `op` to every shard and return at once. Until `finish`, `grad` must stay as it
        is (it leaves without a copy and a retry sends it again) and `out` is not written.

        `grad_spans` and `read_spans` (model-wide key spans, `ps/spans.py`) limit what is pushed
        (the gradient must be zero outside them) and what is read: the keys outside them in
        `out` keep what they held; `grad_values` (if the caller has them): `grad` at `grad_spans`, packed."""
        self._reroute()
        now = time.monotonic()
        trip = RoundTrip(op, out, now + self.timeout)
        # where `grad` starts in our gradient segment, if it is in there
        shared = None if grad is None or self._grads is None else shm.offset_in(self._grads.array, grad)
        for shard, (lo, hi) in enumerate(self.layout.ranges):
            header = {"op": op, "job": self.job, "from": self.sender, "clock": clock, "lo": lo, "hi": hi,
                      "read_version": self.versions[shard]}
            if self.epochs[shard] is not None:
                header["epoch"] = self.epochs[shard]
            p = _Pending(shard, header, (), set(), now, now + self._retry_after)
            local = self.local[shard] is not None
            if local and out is not None:
                header["shm"] = True
            elif out is not None and self.held is not None:  # the change since the view we name
                header["view"] = self.held.token(shard)
            if out is not None and read_spans is not None:
                p.read_spans, packed, _ = self._parts(read_spans, shard)
                if p.read_spans is not None:  # also through shared memory: if we fall back to the wire
                    header["read_spans"] = packed
                    self.bytes_sent += len(packed)  # the keys named are payload too
            if grad is not None:
                p.grad = grad[lo:hi]
                if grad_spans is not None:
                    p.grad_spans, p.grad_packed, p.grad_values = self._parts(grad_spans, shard, grad_values)
                if local and shared is not None:
                    header["grad_at"] = {**self._grads.ref, "offset": shared + lo}
                    if p.grad_spans is not None:  # no values: the shard reads them; it may step only these
                        header["grad_spans"] = p.grad_packed
                        self.bytes_sent += len(p.grad_packed)
                else:
                    self._encode(p)
            self._send(p, now)
            trip.pending[shard] = p
        return trip

    def _encode(self, p: _Pending) -> None:
        """Put the push's frames into `p`: once per push, as a retry resends these very frames."""
        lo = self.layout.ranges[p.shard][0]
        if p.grad_spans is not None and self.compressor.codec == "none":
            p.header["grad_spans"] = p.grad_packed
            self.bytes_sent += len(p.header["grad_spans"])
            p.arrays = (spans.gather(p.grad, lo, p.grad_spans) if p.grad_values is None else p.grad_values,)
        else:
            fields, p.arrays = self.compressor.encode(p.shard, p.grad)
            p.header.update(fields)
        self.bytes_sent += wire_bytes(p.arrays)

    def finish(self, trip: RoundTrip) -> None:
        """Wait for every shard's reply to `trip` (resending what goes unanswered) and hand the
        weights it carries to the `out` given to `start`."""
        began = time.monotonic()
        try:
            self._wait(trip)
        finally:
            self.waited += time.monotonic() - began

    def _wait(self, trip: RoundTrip) -> None:
        pending = trip.pending
        poller = self._poller()
        while pending:
            now = time.monotonic()
            if now > trip.deadline:
                missing = ", ".join(f"shard {s} at {self.addresses[s]}" for s in pending)
                raise TimeoutError(f"{trip.op}: no reply within {self.timeout:g} s from {missing}")
            wake = min([p.retry_at for p in pending.values()] + [trip.deadline])
            events = dict(poller.poll(max(1, int((wake - now) * 1000))))
            for shard, channel in enumerate(self.channels):
                sock = channel.sock
                while sock in events:
                    try:
                        msg = recv(sock, router=False, max_bytes=self.max_bytes, flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    except WireError:
                        continue  # a garbled reply: the retry timer will ask again
                    p = pending.get(shard)  # else an answer to an older request: dropped
                    if p is not None and msg.seq in p.seqs and self._accept(msg, p, trip.out):
                        self._measured(time.monotonic() - p.sent_at)
                        del pending[shard]
                        break
            now = time.monotonic()
            if any(p.retry_at <= now for p in pending.values()):
                if self.give_up is not None:
                    self.give_up()
                moved = self._reroute()
                if moved:
                    poller = self._poller()
                for p in pending.values():
                    if p.shard in moved and self.epochs[p.shard] is not None:
                        p.header["epoch"] = self.epochs[p.shard]
                    if p.retry_at <= now or p.shard in moved:
                        p.attempts += 1
                        p.retry_at = now + self._retry_after * min(2 ** (p.attempts - 1), 16)
                        self.retries += 1
                        self._send(p, now)

    def resume_clock(self, bsp: bool) -> int:
        """The clock to carry on from after a restart: the lowest any shard has for us (one further
        along ignores repeats); in bsp the highest (a clock applied without us is so everywhere)."""
        return max(self.shard_clocks) if bsp else min(self.shard_clocks)

    # ---- the machinery -------------------------------------------------------------------
    def _poller(self) -> zmq.Poller:
        """One poller over every shard's socket, kept until a shard moves: a socket whose
        request was answered may still deliver late replies, which `_wait` reads and drops."""
        if self._polled is None:
            self._polled = zmq.Poller()
            for channel in self.channels:
                self._polled.register(channel.sock, zmq.POLLIN)
        return self._polled

    def _measured(self, rtt: float) -> None:
        """Keep the retry interval at four typical round trips (the median of the last 32)."""
        self._rtts.append(rtt)
        self._retry_after = max(MIN_RETRY, 4 * sorted(self._rtts)[len(self._rtts) // 2])

    def _send(self, p: _Pending, now: float) -> None:
        ch = self.channels[p.shard]
        if self.faults is not None and p.header["op"] != P.PULL:
            self.faults.delay("push")
            if self.faults.fires("drop", "push"):   # lost on the way: the retry timer resends it
                p.seqs.add(ch.next_seq())
                return
            if self.faults.fires("corrupt", "push"):
                garbled = ch.next_seq()
                p.seqs.add(garbled)
                ch.sock.send_multipart([b"\x00corrupted\xff" + bytes(8)], copy=False)
            if self.faults.fires("duplicate", "push"):
                p.seqs.add(ch.send(p.header, p.arrays))
        p.seqs.add(ch.send(p.header, p.arrays))

    def _accept(self, msg: Message, p: _Pending, out: Out) -> bool:
        """Take a reply; False if it asks us to try again (the request was garbled on the way,
        or the range has moved: then ask the coordinator's map again soon, without backing off)."""
        lo, hi = self.layout.ranges[p.shard]
        if msg.op == P.ERROR:
            if msg.header.get("local") is False:  # the shard cannot map our memory: use the wire
                self._wire_only.add(p.shard)
                self._to_wire(p)
            if msg.header.get("moved"):
                p.attempts, p.retry_at = 1, time.monotonic() + self._retry_after
            if msg.header.get("retry"):
                return False
            raise RemoteError(f"shard {p.shard} at {self.addresses[p.shard]} replied with an error: "
                              f"{msg.header.get('reason')}")
        self.versions[p.shard] = msg.header.get("version", self.versions[p.shard])
        clock = msg.header.get("clock")
        if isinstance(clock, int):
            self.shard_clocks[p.shard] = clock
        seg = self._map(p.shard, msg.header) if out is not None else None
        if out is not None and self.held is not None:
            if "view" in msg.header:
                return self._take_change(msg, p, out)
            self.held.drop(p.shard)  # a plain read came (shared memory, or the shard's memory budget)
        if out is not None and not msg.arrays:  # the weights are in the shard's memory
            offset = msg.header.get("offset")
            if seg is None or not isinstance(offset, int) or not 0 <= offset <= seg.count - (hi - lo):
                self._to_wire(p)  # it moved somewhere we cannot map: ask again over the wire
                return False
            weights = seg.array[offset:offset + hi - lo]
            if p.read_spans is None:
                deliver(out, lo, hi, weights, keep=False)  # it keeps changing
            else:
                deliver_spans(out, p.read_spans, weights, keep=False, base=lo)  # copied from where they lie
        elif out is not None:
            n = hi - lo if p.read_spans is None else spans.size(p.read_spans)
            if len(msg.arrays) != 1 or msg.arrays[0].shape != (n,):
                raise RemoteError(f"shard {p.shard} sent weights of the wrong shape for range [{lo}, {hi})")
            if p.read_spans is None:
                deliver(out, lo, hi, msg.arrays[0], keep=True)  # a frame nobody else holds
            else:
                deliver_spans(out, p.read_spans, msg.arrays[0], keep=True)
            self.bytes_received += msg.arrays[0].nbytes
        return True

    def _take_change(self, msg: Message, p: _Pending, out: np.ndarray | WeightSink) -> bool:
        """A compressed read (the change since our view, or a full one); a stale view asks for a full read."""
        try:
            values, keys, keep = self.held.take(p.shard, msg.header, msg.arrays, p.read_spans)
        except StaleView:
            p.header["view"] = 0
            p.retry_at = time.monotonic()
            return False
        except ValueError as err:  # CodecError included
            raise RemoteError(f"shard {p.shard} at {self.addresses[p.shard]} sent a read we cannot use: "
                              f"{err}") from None
        if keys is None:
            deliver(out, *self.layout.ranges[p.shard], values, keep=keep)
        else:
            deliver_spans(out, keys, values, keep=keep)
        self.bytes_received += wire_bytes(msg.arrays)
        return True

    # ---- shared memory with shards on this host --------------------------------------------
    def _map(self, shard: int, header: dict) -> shm.Segment | None:
        """The shard's segment named in a reply, mapped (once) if we can; None if not."""
        ref = header.get("segment")
        self.local[shard] = None
        if not self.shared_memory or ref is None or shard in self._wire_only:
            return None
        try:
            key = shm.ref_key(ref)
        except shm.SegmentError:
            return None
        if key not in self._unmappable:
            try:
                self.local[shard] = self._attached.get(ref)
            except shm.SegmentError:
                self._unmappable.add(key)
        return self.local[shard]

    def _to_wire(self, p: _Pending) -> None:
        """Send this shard's part again without shared memory, and use the wire from now on."""
        self.local[p.shard] = None
        p.header.pop("shm", None)
        if p.header.pop("grad_at", None) is not None:
            self._encode(p)
        p.retry_at = time.monotonic()  # resend at once

    def _reroute(self) -> set[int]:
        """Follow ranges that moved (the coordinator's current map: a shard restarted elsewhere,
        or a backup promoted at a new epoch); return the ones that did."""
        if self.addresses_now is None:
            return set()
        current, epochs = self.addresses_now(), self.epochs_now() if self.epochs_now is not None else None
        if not current or len(current) != len(self.addresses):
            return set()
        epochs = list(epochs) if epochs and len(epochs) == len(current) else self.epochs
        moved = {i for i in range(len(current)) if (current[i], epochs[i]) != (self.addresses[i], self.epochs[i])}
        for i in moved:
            self.local[i] = None
            self._wire_only.discard(i)
            if current[i] != self.addresses[i]:
                self._polled = None
                self.channels[i].close()
                self.channels[i] = self._channel(i, current[i])
        self.addresses, self.epochs = list(current), list(epochs)
        return moved

    def close(self) -> None:
        """Close every socket and unmap shared memory (again: nothing)."""
        for ch in self.channels:
            ch.close()
        self._attached.close()
        if self._grads is not None:
            self._grads.close()
            self._grads = None
