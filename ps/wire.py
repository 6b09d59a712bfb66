"""The wire: one ZeroMQ multipart message = a msgpack header frame + raw array frames.

Arrays travel without copies: senders hand NumPy buffers to ZeroMQ (`copy=False`), receivers
view the received frames with `np.frombuffer`. Every incoming message is decoded and validated
here (framing, header types, array descriptors against frame sizes, the size limit) before
anybody acts on it; what fails becomes a `WireError` whose reason goes back as an ERROR reply.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack
import numpy as np
import zmq

from . import protocol as P


class WireError(ValueError):
    """A message that cannot be acted upon; `str()` is the reason sent back to the peer.
    `retry` marks a refusal that may pass later (the peer is told it may ask again); `fields`
    go into the ERROR reply's header (e.g. `local=False`: send the arrays over the wire)."""

    def __init__(self, reason: str, retry: bool = False, **fields: Any):
        super().__init__(reason)
        self.retry = retry
        self.fields = fields


@dataclasses.dataclass
class Message:
    header: dict
    arrays: list[np.ndarray]
    envelope: list[bytes] = dataclasses.field(default_factory=list)  # ROUTER routing frames

    @property
    def op(self) -> str:
        return self.header["op"]

    @property
    def seq(self) -> int:
        return self.header.get("seq", 0)

    def body(self) -> dict:
        return self.header.get("body") or {}


# dtype name <-> NumPy dtype for what may travel: NumPy computes `dtype.name` in Python on
# every call, and a hot path that sends a message per update notices.
_NAMES = {np.dtype(name): name for name in P.WIRE_DTYPES}
_DTYPES = {name: np.dtype(name) for name in P.WIRE_DTYPES}
_KNOWN_OPS = P.CONTROL_OPS | P.DATA_OPS | P.REPLY_OPS
ZERO_COPY_BYTES = zmq.COPY_THRESHOLD  # frames from this size on are sent without a copy
MAX_EXTENT = 1 << 40  # the largest extent of one array axis on the wire


class SharedFrame:
    """An array sent as one ZeroMQ frame that every message carrying it shares: libzmq counts
    references to it, where a fresh zero-copy frame per message costs pyzmq a Frame object and
    a release through its garbage thread. For a shard answering many reads of one version of
    its weights. The array must not change while the frame lives."""

    __slots__ = ("array", "frame")

    def __init__(self, array: np.ndarray):
        self.array = np.ascontiguousarray(array)
        self.frame = zmq.Frame(memoryview(self.array).cast("B"), copy=False)


# ---- encoding ------------------------------------------------------------------------------

def encode(header: dict, arrays: Sequence[np.ndarray | SharedFrame] = ()) -> list:
    """Frames for a message: the packed header (with array descriptors) then each array's buffer."""
    frames: list = [None]
    described = []
    for a in arrays:
        if isinstance(a, SharedFrame):
            frames.append(a.frame)
            a = a.array
        else:
            a = np.ascontiguousarray(a)
            frames.append(memoryview(a if a.ndim == 1 else a.reshape(-1)).cast("B"))  # (0, 4) casts only flat
        described.append([_NAMES.get(a.dtype) or a.dtype.name, list(a.shape)])
    header = dict(header)
    header["v"] = P.VERSION
    header["arrays"] = described
    frames[0] = msgpack.packb(header, use_bin_type=True)
    return frames


def send(sock: zmq.Socket, header: dict, arrays: Sequence[np.ndarray | SharedFrame] = (),
         envelope: Sequence[bytes] = ()) -> None:
    """Send one message. Large arrays go by reference; routing ids, the header and small
    arrays are copied, which costs less than pyzmq's bookkeeping for a zero-copy frame."""
    frames = [*envelope, *encode(header, arrays)]
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, zmq.SNDMORE if i < last else 0, copy=len(frame) < ZERO_COPY_BYTES)


def reply(sock: zmq.Socket, request: Message, op: str = P.OK, body: dict | None = None,
          arrays: Sequence[np.ndarray | SharedFrame] = (), **fields: Any) -> None:
    """Answer `request` on a ROUTER socket, echoing its sequence number."""
    header = {"op": op, "seq": request.header.get("seq", 0) if isinstance(request.header, dict) else 0}
    header.update(fields)
    if body is not None:
        header["body"] = body
    send(sock, header, arrays, request.envelope)


def reply_error(sock: zmq.Socket, envelope: Sequence[bytes], seq: Any, reason: str, retry: bool = False,
                **fields: Any) -> None:
    """An ERROR reply; usable even when the request's header could not be decoded. `retry`
    says the message arrived garbled, so sending it again may succeed."""
    seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else 0
    header = {**fields, "op": P.ERROR, "seq": seq, "reason": reason[:1000]}
    if retry:
        header["retry"] = True
    send(sock, header, (), envelope)


# ---- decoding and validation ---------------------------------------------------------------

def recv(sock: zmq.Socket, *, router: bool, max_bytes: int = P.DEFAULT_MAX_MESSAGE_BYTES,
         flags: int = 0) -> Message:
    """Receive and decode one message. On a ROUTER socket the routing envelope is split off
    first (including the empty delimiter a REQ peer adds), so a reply can always be routed,
    even when decoding fails: the raised WireError then carries `.envelope`."""
    frames = sock.recv_multipart(flags=flags, copy=False)
    envelope: list[bytes] = []
    if router:
        envelope = [frames[0].bytes]
        frames = frames[1:]
        if frames and len(frames[0]) == 0:  # a REQ peer's delimiter
            envelope.append(b"")
            frames = frames[1:]
    try:
        msg = decode(frames, max_bytes=max_bytes)
    except WireError as err:
        err.envelope = envelope  # type: ignore[attr-defined]
        raise
    msg.envelope = envelope
    return msg


def decode(frames: Sequence[Any], max_bytes: int = P.DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    """Turn received frames into a validated Message (arrays are read-only views, no copy)."""
    if not frames:
        raise WireError("empty message: expected a header frame")
    if len(frames) - 1 > P.MAX_FRAMES:
        raise WireError(f"too many frames: {len(frames)} (limit {P.MAX_FRAMES + 1})")
    total = sum(len(f) for f in frames)
    if total > max_bytes:
        raise WireError(f"message of {total} bytes is over the size limit of {max_bytes} bytes")
    raw = _bytes(frames[0])
    if len(raw) > P.MAX_HEADER_BYTES:
        raise WireError(f"header of {len(raw)} bytes is over the limit of {P.MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise WireError(f"malformed header: not msgpack ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise WireError(f"malformed header: expected a map, got {type(header).__name__}")
    version = header.get("v")
    if version != P.VERSION:
        raise WireError(f"protocol version {version!r} not supported (expected {P.VERSION})")
    op = header.get("op")
    if not isinstance(op, str) or op not in _KNOWN_OPS:
        raise WireError(f"unknown operation {op!r}")
    _check_fields(header, COMMON_FIELDS)
    _check_fields(header, OP_FIELDS.get(op, {}))
    present = {k: v for k, v in OPTIONAL_FIELDS.items() if k in header}
    if present:
        _check_fields(header, present)
    allowed = P.SENDERS[op]
    if allowed is not None and P.role_of(header["from"])[0] not in allowed:
        raise WireError(f"{header['from']!r} may not send {op!r}: only {' and '.join(sorted(allowed))}s do")
    arrays = _arrays(header.get("arrays", []), frames[1:])
    return Message(header, arrays)


def _bytes(frame: Any) -> bytes:
    return frame.bytes if isinstance(frame, zmq.Frame) else bytes(frame)


def _buffer(frame: Any) -> Any:
    return frame.buffer if isinstance(frame, zmq.Frame) else frame


def _arrays(descriptors: Any, frames: Sequence[Any]) -> list[np.ndarray]:
    if not isinstance(descriptors, list):
        raise WireError("header field 'arrays': expected a list of [dtype, shape]")
    if len(descriptors) != len(frames):
        raise WireError(f"header describes {len(descriptors)} arrays but {len(frames)} frames followed")
    out = []
    for i, (desc, frame) in enumerate(zip(descriptors, frames)):
        if not (isinstance(desc, list) and len(desc) == 2 and isinstance(desc[0], str)
                and isinstance(desc[1], list)):
            raise WireError(f"array {i}: expected [dtype, shape], got {desc!r}"[:200])
        dtype, shape = desc
        if dtype not in P.WIRE_DTYPES:
            raise WireError(f"array {i}: dtype {dtype!r} not allowed (expected one of {sorted(P.WIRE_DTYPES)})")
        # Each extent bounded too: [2**62, 0] holds no bytes, yet NumPy cannot make such an array.
        if len(shape) > 8 or not all(_is_int(n) and 0 <= n < MAX_EXTENT for n in shape):
            raise WireError(f"array {i}: shape {shape!r} is not a list of non-negative ints below {MAX_EXTENT}"[:200])
        dtype = _DTYPES[dtype]
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes != len(frame):
            raise WireError(f"array {i}: shape {shape} of {dtype} needs {nbytes} bytes, frame has {len(frame)}")
        out.append(np.frombuffer(_buffer(frame), dtype=dtype).reshape(shape))
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _nonneg_int(x: Any) -> bool:
    return _is_int(x) and 0 <= x < 1 << 62


def _short_str(x: Any) -> bool:
    return isinstance(x, str) and len(x) <= P.MAX_NAME_CHARS


# Field checks: name -> (predicate, what was expected). Missing fields are errors.
COMMON_FIELDS = {"seq": (_nonneg_int, "a non-negative integer")}
_DATA = {
    "job": (_short_str, "a job id string"),
    "from": (_short_str, "a sender name"),
    "clock": (_nonneg_int, "a non-negative integer"),
    "lo": (_nonneg_int, "a non-negative integer"),
    "hi": (_nonneg_int, "a non-negative integer"),
}
_NODE = {"job": (_short_str, "a job id string"), "from": (_short_str, "a sender name")}
_PEER = {**_DATA, "range": (_nonneg_int, "a range number"), "epoch": (_nonneg_int, "an epoch"),
         "gen": (_nonneg_int, "a backup assignment number")}
# Checked only when present.
OPTIONAL_FIELDS = {"epoch": (_nonneg_int, "a non-negative integer (the range's epoch)"),
                   "view": (_nonneg_int, f"an integer in [0, {P.MAX_VIEW_TOKEN}] (a read's view token, 0: none)")}
OP_FIELDS: dict[str, dict] = {
    P.PULL: _DATA,
    P.PUSH: _DATA,
    P.PUSH_PULL: _DATA,
    P.REPLICATE: {**_PEER, "worker": (_nonneg_int, "a worker rank")},
    P.STATE: {**_PEER, "part": (_nonneg_int, "a part number"), "parts": (lambda n: _is_int(n) and 0 < n <= 1024,
                                                                        "a number of parts from 1 to 1024"),
              "name": (_short_str, "an array name")},
    P.REGISTER: {"role": (lambda r: isinstance(r, str) and r in P.ROLES, f"one of {sorted(P.ROLES)}"),
                 "body": (lambda b: isinstance(b, dict), "a map")},
    P.HEARTBEAT: {**_NODE, "body": (lambda b: isinstance(b, dict), "a map")},
    P.REPORT: {**_NODE, "body": (lambda b: isinstance(b, dict), "a map")},
    P.DONE: _NODE,
    P.RESULT: {**_NODE, "body": (lambda b: isinstance(b, dict), "a map")},
    P.LEAVE: _NODE,
    P.STOP: {"job": (_short_str, "a job id string")},
    P.CHECKPOINT: {"job": (_short_str, "a job id string")},
    P.ERROR: {"reason": (lambda r: isinstance(r, str), "a string")},
}


def _check_fields(header: dict, fields: dict) -> None:
    if "body" in header and not isinstance(header["body"], dict):
        raise WireError(f"header field 'body': expected a map, got {type(header['body']).__name__}")
    for name, (ok, expected) in fields.items():
        if name not in header:
            raise WireError(f"header field {name!r} missing (expected {expected})")
        if not ok(header[name]):
            raise WireError(f"header field {name!r}: expected {expected}, got {header[name]!r}"[:300])


def bind_socket(sock: zmq.Socket, endpoint: str) -> None:
    """Bind, turning 'address in use' into a message that names the port. On failure the
    socket is closed, so that its context can still terminate."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        if exc.errno == zmq.EADDRINUSE:
            port = endpoint.rsplit(":", 1)[-1]
            raise RuntimeError(f"cannot bind {endpoint}: port {port} is already in use") from None
        raise RuntimeError(f"cannot bind {endpoint}: {exc}") from None


# ---- request/reply over a DEALER socket ------------------------------------------------------

class Channel:
    """A DEALER socket to one peer, matching replies to requests by sequence number.

    DEALER rather than REQ: a lost reply never wedges the socket, and several requests to
    several peers can be in flight at once (the client polls all shards together)."""

    def __init__(self, ctx: zmq.Context, address: str, name: str,
                 max_bytes: int = P.DEFAULT_MAX_MESSAGE_BYTES, configure=None):
        self.address = address
        self.name = name
        self.max_bytes = max_bytes
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if configure is not None:
            configure(self.sock)
        self.sock.connect(address)
        self._seq = 0

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def send(self, header: dict, arrays: Sequence[np.ndarray] = ()) -> int:
        seq = self.next_seq()
        send(self.sock, dict(header, seq=seq), arrays)
        return seq

    def receive(self, seq: int, timeout: float) -> Message:
        """The reply to request `seq`; older replies (answers to timed-out requests) are dropped.
        Past the deadline the socket is still read once: a process that was stopped (SIGSTOP)
        finds there the reply that came while it slept, rather than timing out on it."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            if not self.sock.poll(int(remaining * 1000) + 1):
                raise TimeoutError(f"no reply from {self.name} at {self.address} within {timeout:g} s")
            msg = recv(self.sock, router=False, max_bytes=self.max_bytes)
            if msg.seq == seq:
                return msg

    def request(self, header: dict, arrays: Sequence[np.ndarray] = (), timeout: float = 30.0) -> Message:
        """Send and wait for the reply; an ERROR reply raises RemoteError."""
        msg = self.receive(self.send(header, arrays), timeout)
        raise_for_error(msg, self)
        return msg

    def close(self) -> None:
        self.sock.close(0)


class RemoteError(RuntimeError):
    """The peer answered with an ERROR reply; `retry` if it said asking again may succeed."""

    def __init__(self, message: str, retry: bool = False):
        super().__init__(message)
        self.retry = retry


def raise_for_error(msg: Message, channel: Channel | None = None) -> None:
    if msg.op == P.ERROR:
        where = f"{channel.name} at {channel.address}" if channel else "peer"
        raise RemoteError(f"{where} replied with an error: {msg.header.get('reason')}",
                          retry=bool(msg.header.get("retry")))


def close_all(channels: Iterable[Channel]) -> None:
    for ch in channels:
        ch.close()
