"""Compressed reads (`compression.pull`): each reader's view on the shard, and the change since it.

A read normally carries a shard's whole range as float32, to every worker, every time: the
shard's outgoing link carries the reads of all the workers and sets the pace of a job on a
slow network. With `compression.pull` set, the shard keeps, per reader and per range, that
reader's *view*: the weights exactly as the reader holds them. A read then carries the change
since that view, encoded by the codec, and both ends bring their copy of the view up to date
with the same decoded change in the same float32 arithmetic, so the two copies stay equal bit
for bit. What a lossy codec leaves out is `weights - view`, which stays on the shard: that is
the residual, one per reader, and the next read sends what has grown largest in it (error
feedback without a separate buffer; Li et al., OSDI'14, cut server-to-worker traffic the same
way, by sending what changed).

    sparse  the keys whose bits changed, with their new values (set, not added: exact)
    topk    the k = ceil(ratio * n) keys that changed most, with their new values (set);
            fewer if fewer changed
    fp16    the change, scaled to float16 as a push is (added)
    onebit  the change's signs and mean magnitude (added)
    twobit  +-threshold where the change reaches it (added)
    none    every key the read names, as is: sent instead whenever the codec's frames would
            be as big (say `sparse` on a model whose every weight moved)

A *full read* sends the whole range as float32 and starts the view anew: on a reader's first
read; whenever the shard holds no view that matches the one the reader names (the shard or the
worker restarted, a backup was promoted, a reply was lost); every `pull_full_every` reads of a
reader, when set. Each view is named by a random token that the reply carries and the reader
sends back with its next read, so a view can never be taken for another.

Cost: one float32 copy of the range per reader on the shard (4 bytes x keys x readers) and one
of the model on each worker. Beyond `pull_memory_mb` per shard, the shard keeps no new view:
those readers get plain reads, counted in the shard's `reads.over_budget` (and the job's summary).

Reads through shared memory (a shard on the same host) never carry a change: nothing crosses a
network there. The evaluator reads plainly: it scores the weights the shards hold.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import math
import random
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from . import compression as C
from . import protocol as P
from . import spans

log = logging.getLogger(__name__)

MAX_TOKEN = P.MAX_VIEW_TOKEN


class StaleView(ValueError):
    """A change was sent against a view the reader no longer holds: read in full."""


@dataclasses.dataclass(frozen=True)
class Answer:
    """How the shard answers a read: header fields, and the change's frames, or None to send
    the weights as a plain read does (the whole range, whatever keys the read named, if `whole`)."""

    fields: dict
    arrays: tuple[np.ndarray, ...] | None = None
    whole: bool = False


PLAIN = Answer({})


@dataclasses.dataclass
class _View:
    token: int
    weights: np.ndarray   # float32, the range as the reader holds it
    reads: int = 0        # change reads since the last full read


class ReaderViews:
    """The shard's side: every reader's view of every range it reads, and the budget they share."""

    def __init__(self, spec: dict[str, Any], seed: int | None = None):
        """`spec` is the job's `compression` section (pull, ratio, threshold, pull_full_every,
        pull_memory_mb)."""
        self.codec = spec.get("pull", "none")
        if self.codec not in C.CODECS:
            raise ValueError(f"compression.pull {self.codec!r}: expected one of {', '.join(C.CODECS)}")
        self.ratio = float(spec.get("ratio", 0.01))
        self.threshold = float(spec.get("threshold", 0.5))
        self.full_every = int(spec.get("pull_full_every") or 0)
        self.budget = int(float(spec.get("pull_memory_mb", 1024.0)) * (1 << 20))
        self.views: dict[tuple[str, int, int], _View] = {}
        self.nbytes = 0
        self.counts: collections.Counter = collections.Counter()
        self._random = random.Random(seed)
        self._warned = False

    def answer(self, header: dict, weights: np.ndarray, base: int, wanted: spans.Spans | None) -> Answer:
        """The answer to a read whose header is `header`, of keys [lo, hi) of `weights` (which
        holds keys [base, ...), the store's live weights), or only the keys `wanted`. A read
        that names no view (no "view" field) gets a plain read."""
        if self.codec == "none" or "view" not in header:
            return PLAIN
        reader, lo, hi, token = header["from"], header["lo"], header["hi"], header["view"]
        current = weights[lo - base:hi - base]
        view = self.views.get((reader, lo, hi))
        due = self.full_every and view is not None and view.reads >= self.full_every - 1
        if view is None or token == 0 or view.token != token or due:
            return self._full(reader, lo, hi, current, wanted)
        if wanted is None:
            fields, frames = self._change(current, view.weights, copy=True)
        else:
            held = spans.gather(view.weights, lo, wanted)
            fields, frames = self._change(spans.gather(current, lo, wanted), held, copy=False)
            spans.scatter(view.weights, lo, wanted, held)
        old, view.token = view.token, self._token()
        view.reads += 1
        self.counts["change"] += 1
        return Answer({**fields, "view": view.token, "base": old}, frames)

    def _change(self, current: np.ndarray, held: np.ndarray, copy: bool) -> tuple[dict, tuple[np.ndarray, ...]]:
        """The message for the change from `held` to `current`, with `held` brought up to date
        by it: the codec's, or every value as it is (`none`) where that is no bigger or the
        change is not finite (weights that hold inf or NaN). Frames never share memory with
        `current` when `copy`."""
        fields, frames = self._encode(current, held)
        if C.wire_bytes(frames) < current.nbytes:
            if fields["codec"] in ("topk", "sparse"):  # our own keys and values: no need to check them
                held[frames[0]] = frames[1]
                return fields, frames
            try:
                apply_change(held, fields, frames)
                return fields, frames
            except C.CodecError:
                pass
        values = current.copy() if copy else current
        held[...] = values
        return {"codec": "none"}, (values,)

    def _encode(self, current: np.ndarray, held: np.ndarray) -> tuple[dict, tuple[np.ndarray, ...]]:
        """The codec's message for the change, or `current` itself as `none` where a sparse one
        is sure to be no smaller (counted before the keys are gathered)."""
        codec = self.codec
        if codec == "sparse":   # by bits: -0.0 for 0.0 is a change, and so is every NaN
            changed = current.view(np.uint32) != held.view(np.uint32)
            if 2 * np.count_nonzero(changed) >= changed.size:   # 8 bytes a key would be no smaller
                return {"codec": "none"}, (current,)
            idx = np.flatnonzero(changed).astype(np.uint32)
            fields, frames = {"count": int(idx.size)}, (idx, current[idx])
        elif codec == "topk":
            idx = top_changes(current - held, self.ratio)
            fields, frames = {"count": int(idx.size)}, (idx, current[idx])
        elif codec == "fp16":
            fields, frames = C.encode_fp16(current - held)
        elif codec == "onebit":
            fields, frames = C.encode_onebit(current - held)
        else:
            fields, frames = C.encode_twobit(current - held, self.threshold)
        return {"codec": codec, **fields}, frames

    def _full(self, reader: str, lo: int, hi: int, current: np.ndarray, wanted: spans.Spans | None) -> Answer:
        """A full read, and the view it starts, unless the budget is spent: then a plain read."""
        old = self.views.pop((reader, lo, hi), None)
        if old is not None:
            self.nbytes -= old.weights.nbytes
        if self.nbytes + current.nbytes > self.budget:
            self.counts["over_budget"] += 1
            if not self._warned:
                self._warned = True
                log.warning("compressed reads: views of %.1f MB would exceed compression.pull_memory_mb "
                            "(%.1f MB): %s and further readers get plain reads", (self.nbytes + current.nbytes) / 2**20,
                            self.budget / 2**20, reader)
            return PLAIN
        view = self.views[(reader, lo, hi)] = _View(self._token(), np.array(current, np.float32))
        self.nbytes += view.weights.nbytes
        self.counts["full"] += 1
        return Answer({"view": view.token, **({"whole": True} if wanted is not None else {})}, None, whole=True)

    def _token(self) -> int:
        return self._random.getrandbits(62) or 1

    def drop(self, reader: str, lo: int, hi: int) -> None:
        """Forget a reader's view of [lo, hi) (it reads through shared memory now)."""
        view = self.views.pop((reader, lo, hi), None)
        if view is not None:
            self.nbytes -= view.weights.nbytes

    def retain(self, workers: Iterable[int]) -> None:
        """Forget the views of workers that are no longer live (the coordinator's list): one
        that comes back reads in full. Readers that are not workers keep theirs."""
        live = {f"{P.WORKER}-{rank}" for rank in workers}
        for reader, lo, hi in list(self.views):
            if reader.startswith(f"{P.WORKER}-") and reader not in live:
                self.drop(reader, lo, hi)

    def stats(self) -> dict[str, int]:
        """What the shard reports: reads by kind, and the bytes its views hold."""
        return {"full": self.counts["full"], "change": self.counts["change"],
                "over_budget": self.counts["over_budget"], "view_bytes": self.nbytes}


def top_changes(change: np.ndarray, ratio: float) -> np.ndarray:
    """The keys (sorted uint32) of the k = ceil(ratio * n) largest non-zero changes, or of every
    non-zero change if there are no more than k. Found by a sampled threshold over all the
    magnitudes (`C.above_sampled`: only non-zero ones reach it) where that works, else among the
    non-zero ones only: weights that did not move (a dead unit, a blank pixel) tie at zero, and
    ties make NumPy's introselect 10-20x slower (measured: 38 400 values, 90% zeros, 3.4 ms
    against 0.2 ms). Sampling first spares the gather of the moved keys (38 917 changes, 10%
    zeros: 100 -> 39 us)."""
    k = min(change.size, max(1, math.ceil(ratio * change.size)))
    magnitude = np.abs(change)
    found = C.above_sampled(magnitude, k) if k < change.size else None
    if found is None:
        found = np.flatnonzero(magnitude != 0)   # 10x faster than flatnonzero(magnitude) on float32
        if found.size > k:
            found = found[C.largest(magnitude[found], k)]
    found.sort()
    return found.astype(np.uint32)


def apply_change(view: np.ndarray, header: dict, arrays: Sequence[np.ndarray]) -> None:
    """Bring `view` (the keys a read named, packed) up to date with a change message: set the
    keys `none`, `topk` and `sparse` carry, add what the other codecs decode to. The shard and
    the reader both call this on the same message, so their views stay equal bit for bit.
    Raises CodecError on a malformed message."""
    codec = C.checked_codec(header, arrays)
    if codec == "none":
        view[...] = C.decode(header, arrays, view.size)
    elif codec in ("topk", "sparse"):   # weights, as a plain read sends them: inf and NaN included
        idx, values = C.indexed(header, arrays, view.size, finite=False)
        view[idx] = values
    else:
        view += C.decode(header, arrays, view.size)


class HeldWeights:
    """The reader's side: its copy of its view of each shard's range, and the token naming it."""

    def __init__(self, ranges: Sequence[tuple[int, int]]):
        self.ranges = [(int(lo), int(hi)) for lo, hi in ranges]
        self.views: list[np.ndarray | None] = [None] * len(self.ranges)
        self.tokens = [0] * len(self.ranges)

    def token(self, shard: int) -> int:
        """The view to name in the next read of `shard` (0: none held, read in full)."""
        return self.tokens[shard]

    def drop(self, shard: int) -> None:
        """Forget the view of `shard` (a plain read came instead)."""
        self.views[shard], self.tokens[shard] = None, 0

    def take(self, shard: int, header: dict, arrays: Sequence[np.ndarray],
             wanted: spans.Spans | None) -> tuple[np.ndarray, spans.Spans | None, bool]:
        """The weights a reply with a "view" field brings, as (values, keys, keep): the values of
        the whole range (keys None) or of `keys` packed; with `keep`, the values are the caller's
        to keep. Raises StaleView if the reply changes a view we do not hold, CodecError or
        ValueError if it is malformed."""
        lo, hi = self.ranges[shard]
        token = header["view"]
        if not isinstance(token, int) or isinstance(token, bool) or not 0 < token <= MAX_TOKEN:
            raise ValueError(f"reply field 'view': expected an integer in [1, {MAX_TOKEN}], got {str(token)[:40]}")
        if "base" not in header:   # a full read: the whole range, and the view starts anew
            if len(arrays) != 1 or arrays[0].dtype != np.float32 or arrays[0].shape != (hi - lo,):
                raise ValueError(f"a full read of [{lo}, {hi}) needs one float32 array of shape ({hi - lo},)")
            self.views[shard], self.tokens[shard] = np.array(arrays[0]), token
            return arrays[0], None, True
        view = self.views[shard]
        if view is None or header["base"] != self.tokens[shard]:
            self.drop(shard)
            raise StaleView(f"a change to view {str(header['base'])[:40]}, not the one held")
        self.tokens[shard] = 0   # until the change is in: a malformed one leaves no view behind
        if wanted is None:
            apply_change(view, header, arrays)
            self.tokens[shard] = token
            return view, None, False   # the view changes with the next read: copy it
        part = spans.gather(view, lo, wanted)
        apply_change(part, header, arrays)
        spans.scatter(view, lo, wanted, part)
        self.tokens[shard] = token
        return part, wanted, True
