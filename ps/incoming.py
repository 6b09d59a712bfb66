"""A push's gradient as the shard's update rule needs it: one dense float32 array of the range.

A worker sends it in one of four ways, and each has its own checks:

    plain       one float32 frame of the range
    codec       compressed (ps/compression.py), decoded here
    grad_spans  the values of some keys only (`compression.rows`, ps/spans.py), zeros elsewhere:
                handed on packed, with the keys, for the store to step those keys alone
    grad_at     left in the worker's shared memory (ps/shm.py), read where it lies; with
                `grad_spans` (no frame), the keys outside which it is zero, gathered packed

Decoded gradients land in one scratch buffer, which the update rule consumes before the next
push is read; `borrowed` tells the shard when it must copy a gradient that it keeps longer (to
forward to its backup).
"""
from __future__ import annotations

import collections
from typing import Any

import numpy as np

from . import protocol as P
from . import shm, spans
from .compression import CodecError, decode
from .wire import Message, WireError

WAYS = ("codec", "grad_at", "grad_spans")
RECENT = 16  # span lists remembered by their bytes: a batch's read and, a step later, its push name the same
_recent: collections.OrderedDict = collections.OrderedDict()


class Incoming:
    def __init__(self, local: bool):
        self.local = local                     # whether pushes through shared memory are taken
        self.scratch = np.empty(0, np.float32)  # grown as needed
        self.attached = shm.Attached()          # local workers' gradient buffers

    def gradient(self, msg: Message, lo: int, hi: int) -> tuple[np.ndarray, spans.Spans | None]:
        """(the dense gradient of [lo, hi), None), or for a push by rows (the values of its
        keys, packed, the keys); a WireError names what is wrong."""
        ways = [f for f in WAYS if f in msg.header]
        if len(ways) > 1 and ways != ["grad_at", "grad_spans"]:
            raise WireError(f"push with both {ways[0]!r} and {ways[1]!r}: expected at most one way to carry it")
        if "codec" in msg.header:
            return self._decoded(msg, lo, hi), None
        if "grad_at" in msg.header:
            if msg.arrays:
                raise WireError(f"push through shared memory with {len(msg.arrays)} array frames: expected none")
            grad = self._shared(msg.header["grad_at"], lo, hi)
            if "grad_spans" not in msg.header:
                return grad, None
            keys = header_spans(msg.header["grad_spans"], lo, hi, "grad_spans")
            return spans.gather(grad, lo, keys), keys
        if "grad_spans" in msg.header:
            return self._packed(msg, lo, hi)
        if len(msg.arrays) != 1 or msg.arrays[0].dtype != np.float32 or msg.arrays[0].shape != (hi - lo,):
            got = [(a.dtype.name, a.shape) for a in msg.arrays]
            raise WireError(f"push to [{lo}, {hi}) needs one float32 array of shape ({hi - lo},), got {got}")
        return msg.arrays[0], None

    def borrowed(self, grad: np.ndarray) -> bool:
        """Whether `grad` lives in the scratch buffer, which the next push overwrites."""
        return grad.base is self.scratch

    def _scratch(self, n: int) -> np.ndarray:
        if self.scratch.size < n:
            self.scratch = np.empty(n, np.float32)
        return self.scratch[:n]

    def _decoded(self, msg: Message, lo: int, hi: int) -> np.ndarray:
        """A compressed push, decoded. Replication forwards it dense."""
        if msg.op == P.REPLICATE:
            raise WireError("a replicated push carries its dense gradient: no codec expected")
        try:
            return decode(msg.header, msg.arrays, hi - lo, self._scratch(hi - lo))
        except CodecError as err:
            raise WireError(f"push to [{lo}, {hi}): {err}") from None

    def _packed(self, msg: Message, lo: int, hi: int) -> tuple[np.ndarray, spans.Spans]:
        """A push of some keys only: their values, as they came, and the keys."""
        pushed = header_spans(msg.header["grad_spans"], lo, hi, "grad_spans")
        n = spans.size(pushed)
        if len(msg.arrays) != 1 or msg.arrays[0].dtype != np.float32 or msg.arrays[0].shape != (n,):
            got = [(a.dtype.name, a.shape) for a in msg.arrays]
            raise WireError(f"push of {n} keys by spans needs one float32 array of shape ({n},), got {got}")
        return msg.arrays[0], pushed

    def _shared(self, ref: Any, lo: int, hi: int) -> np.ndarray:
        """A local worker's gradient, read where the worker wrote it: no copy. The worker
        leaves that buffer alone until the shard has answered."""
        if not self.local:
            raise WireError("this shard takes no pushes through shared memory", retry=True, local=False)
        offset = ref.get("offset") if isinstance(ref, dict) else None
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise WireError("header field 'grad_at': expected a segment reference with an offset")
        try:
            seg = self.attached.get(ref)
        except shm.SegmentError as exc:
            raise WireError(f"cannot map the pushed gradient: {exc}", retry=True, local=False) from None
        if offset + (hi - lo) > seg.count:
            raise WireError(f"gradient at offset {offset} of {hi - lo} values overruns a segment of {seg.count}")
        return seg.array[offset:offset + hi - lo]

    def close(self) -> None:
        self.attached.close()


def header_spans(raw: Any, lo: int, hi: int, field: str) -> spans.Spans:
    """Key spans from header field `field`, checked against [lo, hi). The last few are kept
    (read-only) by their bytes: by rows, the push of a batch names the keys its read named a
    step before, and reading them again would cost as much as the push's own step."""
    key = (raw, lo, hi) if isinstance(raw, bytes) else None
    found = _recent.get(key) if key is not None else None
    if found is not None:
        return found
    try:
        found = spans.unpack(raw, lo, hi)
    except spans.SpanError as err:
        raise WireError(f"header field {field!r}: {err}") from None
    for array in found:
        array.flags.writeable = False
    if key is not None:
        _recent[key] = found
        while len(_recent) > RECENT:
            _recent.popitem(last=False)
    return found
