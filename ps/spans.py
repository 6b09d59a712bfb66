"""Key spans: a read or a push that covers only part of a shard's range.

A model with a large embedding table reads a few hundred of its rows per batch, and its
gradient is zero everywhere else. With `compression.rows` a worker reads only the keys the
next batches use, and pushes (uncompressed) only the keys its batches touched: every dense
parameter whole, plus the used rows of each table. Those keys are described as spans.

A set of spans is a pair of int64 arrays `(starts, stops)`: half-open key intervals, sorted,
disjoint and non-empty. A request carries the spans of the receiving shard's range in its
header as bytes, and the values of those keys travel concatenated in span order in one
float32 frame. The shard validates them like any other header field (`unpack`), so a bad span
list gets an error reply, never an index error.

The header form is compact, because a batch of hashed features touches tens of thousands of
rows a few keys wide, scattered over the table: each span is two varints (unsigned LEB128,
7 bits a byte) of zigzag-coded integers, the gap from the previous span's stop (from key 0
for the first) and the length. A row of 7 keys among 2^22 rows costs about 3 bytes, where
(start, stop) as int64 would cost 16, more than the 28 bytes of the row's values half over again.

Gathering and scattering copy long spans (dense parameters) as slices and short ones (rows)
through one computed index, so neither a long span nor a thousand short ones costs a Python
loop over elements.
"""
from __future__ import annotations

import collections

import numpy as np

from . import protocol as P

Spans = tuple[np.ndarray, np.ndarray]
LONG = 512                         # spans of at least this many keys are copied as slices
MAX_SPANS = P.MAX_SPANS
MAX_VALUE = 1 << 40                # a gap or a length: key spaces are smaller than this
MAX_VARINT = 6                     # bytes of a zigzag varint below 2 * MAX_VALUE


class SpanError(ValueError):
    """A span list that cannot be used; `str()` says what was wrong and what was expected."""


def empty() -> Spans:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)


def whole(lo: int, hi: int) -> Spans:
    """The one span [lo, hi) (no span at all if it is empty)."""
    return (np.array([lo], np.int64), np.array([hi], np.int64)) if hi > lo else empty()


def of_rows(offset: int, width: int, rows: np.ndarray) -> Spans:
    """The keys of rows `rows` (any ints, repeats allowed) of a table of rows `width` keys
    long starting at key `offset`; consecutive rows merge into one span."""
    r = np.sort(np.asarray(rows).reshape(-1))            # a sort and a compare: np.unique costs 10x
    if r.size == 0:
        return empty()
    if r.dtype.kind not in "iu":
        r = r.astype(np.int64)
    r = r[np.concatenate(([True], r[1:] != r[:-1]))].astype(np.int64, copy=False)
    breaks = np.flatnonzero(np.diff(r) != 1) + 1
    first = r[np.concatenate(([0], breaks))]
    last = r[np.concatenate((breaks - 1, [r.size - 1]))]
    return offset + first * width, offset + (last + 1) * width


def union(*parts: Spans) -> Spans:
    """The keys of every part, as sorted disjoint spans (overlapping and touching spans merge)."""
    starts = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    stops = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    keep = stops > starts
    starts, stops = starts[keep], stops[keep]
    if starts.size == 0:
        return empty()
    order = np.argsort(starts, kind="stable")
    starts, stops = starts[order], stops[order]
    reach = np.maximum.accumulate(stops)
    new = np.concatenate(([True], starts[1:] > reach[:-1]))
    heads = np.flatnonzero(new)
    return starts[heads], np.maximum.reduceat(stops, heads)


def clip(spans: Spans, lo: int, hi: int) -> Spans:
    """The part of `spans` inside [lo, hi)."""
    starts, stops = spans
    a = int(np.searchsorted(stops, lo, side="right"))
    b = int(np.searchsorted(starts, hi, side="left"))
    starts, stops = starts[a:b].copy(), stops[a:b].copy()
    if starts.size:
        starts[0] = max(starts[0], lo)
        stops[-1] = min(stops[-1], hi)
    return starts, stops


def size(spans: Spans) -> int:
    """How many keys the spans hold."""
    return int(np.sum(spans[1] - spans[0]))


def covers(spans: Spans, lo: int, hi: int) -> bool:
    """Whether the spans are exactly [lo, hi)."""
    return spans[0].size == 1 and int(spans[0][0]) == lo and int(spans[1][0]) == hi


def positions(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Every key of the spans, in order, as one index array: a running sum of steps of one,
    with each span's first key reached by one jump from the previous span's last."""
    starts, stops = np.asarray(starts, np.int64), np.asarray(stops, np.int64)
    lengths = stops - starts
    if lengths.size and not lengths.all():              # an empty span adds no key
        starts, stops, lengths = starts[lengths > 0], stops[lengths > 0], lengths[lengths > 0]
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    step = np.ones(total, np.int64)
    step[0] = starts[0]
    step[np.cumsum(lengths[:-1])] = starts[1:] - stops[:-1] + 1
    return np.cumsum(step, out=step)


_indexed: collections.deque = collections.deque(maxlen=8)  # (spans, base, their index), the last few
INDEX_KEPT = 1 << 20  # keys: a larger index is built again each time rather than held (8 bytes a key)


def index(spans: Spans, base: int) -> np.ndarray:
    """Every key of `spans` less `base` (read-only). Kept for the last few span lists by their
    identity: a worker gathers a push's keys and clears them two steps later, a shard gathers a
    read's keys and steps them when the batch's push names them again (`ps/incoming.py`)."""
    for held, at, keys in _indexed:
        if held is spans and at == base:
            return keys
    keys = positions(*spans)
    keys -= base
    keys.flags.writeable = False
    if keys.size <= INDEX_KEPT:
        _indexed.append((spans, base, keys))
    return keys


def pieces(spans: Spans, base: int) -> tuple[list[tuple[int, int, int]], np.ndarray, list[tuple[int, int, int]]]:
    """How to copy the keys of `spans` between a buffer holding keys [base, ...) and their values
    packed: the long spans as slices (first key - base, last key - base + 1, first value); the
    short ones through one index (their keys less base), whose values lie in the packed array
    in runs between the long spans (first value, first of the short values, count)."""
    starts, stops = spans
    lengths = stops - starts
    long = lengths >= LONG
    if not long.any():
        keys = index(spans, base)
        return [], keys, [(0, 0, keys.size)] if keys.size else []
    at = np.cumsum(lengths) - lengths                # each span's first value in the packed array
    slices = list(zip((starts[long] - base).tolist(), (stops[long] - base).tolist(), at[long].tolist()))
    keys = positions(starts[~long], stops[~long]) - base
    runs, cursor, done = [], 0, 0
    for a, b, o in [*slices, (0, 0, int(at[-1] + lengths[-1]))]:
        if o > cursor:
            runs.append((cursor, done, o - cursor))
            done += o - cursor
        cursor = o + b - a
    return slices, keys, runs


def short_values(values: np.ndarray, runs: list[tuple[int, int, int]]) -> np.ndarray:
    """The values of the short spans (`pieces`' runs) out of all the packed values: a view if
    they lie in one run."""
    if len(runs) == 1:
        o, _, n = runs[0]
        return values[o:o + n]
    return np.concatenate([values[o:o + n] for o, _, n in runs]) if runs else values[:0]


def gather(source: np.ndarray, base: int, spans: Spans) -> np.ndarray:
    """A new array of the keys in `spans` from `source`, which holds keys [base, base + len)."""
    slices, keys, runs = pieces(spans, base)
    if not slices:
        return source[keys]
    out = np.empty(size(spans), source.dtype)
    for a, b, o in slices:
        out[o:o + b - a] = source[a:b]
    if keys.size:
        short = source[keys]
        for o, s, n in runs:
            out[o:o + n] = short[s:s + n]
    return out


def scatter(dest: np.ndarray, base: int, spans: Spans, values: np.ndarray) -> None:
    """Write `values` (the keys of `spans`, packed) into `dest`, which holds keys [base, ...)."""
    slices, keys, runs = pieces(spans, base)
    for a, b, o in slices:
        dest[a:b] = values[o:o + b - a]
    if keys.size:
        dest[keys] = short_values(values, runs)


def clear(dest: np.ndarray, base: int, spans: Spans) -> None:
    """Zero the keys of `spans` in `dest`, which holds keys [base, ...)."""
    slices, keys, _ = pieces(spans, base)
    for a, b, _ in slices:
        dest[a:b] = 0
    if keys.size:
        dest[keys] = 0


def pack(spans: Spans) -> bytes:
    """The header form: zigzag LEB128 varints of (gap from the previous stop, length) per span."""
    starts, stops = (np.asarray(a, np.int64) for a in spans)
    if starts.size == 0:
        return b""
    signed = np.empty(2 * starts.size, np.int64)
    signed[0] = starts[0]
    np.subtract(starts[1:], stops[:-1], out=signed[2::2])
    np.subtract(stops, starts, out=signed[1::2])
    values = np.left_shift(signed, 1)                                   # zigzag: small magnitudes, small codes
    values ^= signed >> 63
    values = values.view(np.uint64)
    count = max(1, (int(values.max()).bit_length() + 6) // 7)          # bytes of the widest varint
    width = np.ones(values.size, np.int64)
    for k in range(1, count):
        width += values >= np.uint64(1 << (7 * k))
    at = np.cumsum(width)
    out = np.empty(int(at[-1]), np.uint8)
    at -= width                                                         # where each varint starts
    out[at] = (values & np.uint64(0x7F)).astype(np.uint8)
    for j in range(1, count):                                           # byte j of the varints that have one
        longer = np.flatnonzero(width > j)
        out[at[longer] + (j - 1)] |= 0x80
        out[at[longer] + j] = ((values[longer] >> np.uint64(7 * j)) & np.uint64(0x7F)).astype(np.uint8)
    return out.tobytes()


def unpack(raw: object, lo: int, hi: int) -> Spans:
    """Spans from a header, checked against the range [lo, hi) they must lie in."""
    if not isinstance(raw, bytes):
        raise SpanError(f"spans: expected bytes of varint (gap, length) pairs, got {type(raw).__name__}")
    if len(raw) > 2 * MAX_VARINT * MAX_SPANS:
        raise SpanError(f"spans of {len(raw)} bytes: expected at most {MAX_SPANS} (gap, length) pairs")
    if not raw:
        return empty()
    b = np.frombuffer(raw, np.uint8)
    last = np.flatnonzero(b < 0x80)                                      # the last byte of each varint
    if b[-1] >= 0x80:
        raise SpanError(f"spans of {len(raw)} bytes: the last varint is cut off (expected (gap, length) pairs "
                        "of LEB128 varints)")
    first = np.concatenate(([0], last[:-1] + 1))
    width = last - first + 1
    if width.max() > MAX_VARINT or width.size % 2 or width.size // 2 > MAX_SPANS:
        raise SpanError(f"spans of {len(raw)} bytes: expected at most {MAX_SPANS} (gap, length) pairs of "
                        f"LEB128 varints of at most {MAX_VARINT} bytes, got {width.size} varints")
    values = (b[first] & 0x7F).astype(np.uint64)
    for j in range(1, int(width.max())):                                 # byte j of the varints that have one
        longer = np.flatnonzero(width > j)
        values[longer] |= (b[first[longer] + j] & 0x7F).astype(np.uint64) << np.uint64(7 * j)
    signed = (values >> np.uint64(1)).view(np.int64) ^ -(values & np.uint64(1)).view(np.int64)
    gaps, lengths = signed[0::2], signed[1::2]
    if np.any(np.abs(signed) >= MAX_VALUE):
        raise SpanError(f"spans: a gap or length beyond {MAX_VALUE}: expected keys of the range [{lo}, {hi})")
    stops = np.cumsum(gaps + lengths)
    starts = stops - lengths
    if not np.all(lengths > 0):
        raise SpanError("spans: expected every stop greater than its start")
    if np.any(gaps[1:] < 0):
        raise SpanError("spans: expected sorted spans that do not overlap")
    if starts[0] < lo or stops[-1] > hi:
        raise SpanError(f"spans [{int(starts[0])}, {int(stops[-1])}) reach outside the range [{lo}, {hi})")
    return starts, stops


def part(model_spans: Spans, lo: int, hi: int) -> Spans | None:
    """A shard's part of model-wide spans; None for its whole range: when that is what they
    cover, or when they are too many for a header (then all of it moves, which is never wrong)."""
    piece = clip(model_spans, lo, hi)
    return None if covers(piece, lo, hi) or piece[0].size > MAX_SPANS else piece


class Parts:
    """Each shard's part of the last few model-wide span lists (`part`) and its header form,
    worked out once per list: the read that fetches a batch's rows and the push of its
    gradient, steps later, name the same spans (`worker/rows.py` hands out one object for both)."""

    def __init__(self, ranges: list[tuple[int, int]], keep: int = 8):
        self.ranges = ranges
        self._recent: collections.deque = collections.deque(maxlen=keep)  # (spans, {shard: part})

    def __call__(self, model_spans: Spans, shard: int,
                 values: np.ndarray | None = None) -> tuple[Spans | None, bytes, np.ndarray | None]:
        """(the part, or None for the whole range; its packed form; its share of `values`, the
        values of `model_spans` packed, if given and the part is not None)."""
        parts = next((known for held, known in self._recent if held is model_spans), None)
        if parts is None:
            parts = {}
            self._recent.append((model_spans, parts))
        if shard not in parts:
            lo, hi = self.ranges[shard]
            piece = part(model_spans, lo, hi)
            parts[shard] = (piece, b"" if piece is None else pack(piece), below(model_spans, lo))
        piece, packed, first = parts[shard]
        share = None if values is None or piece is None else values[first:first + size(piece)]
        return piece, packed, share


def below(spans: Spans, key: int) -> int:
    """How many keys of `spans` are less than `key`."""
    starts, stops = spans
    whole = int(np.searchsorted(stops, key, side="right"))          # spans that end at or before it
    count = int(np.sum(stops[:whole] - starts[:whole]))
    if whole < starts.size and starts[whole] < key:
        count += key - int(starts[whole])
    return count
