"""A seeded generator of hostile wire messages: random frames, and valid messages bent out of shape.

Why a hand-written mutator and not hypothesis: the fuzz test needs 100 000 messages against
live processes in well under a minute, and hypothesis spends most of its time on example
bookkeeping and shrinking, which is worthless here (a failure is a dead process, found from
its log, not a minimal example). A seeded `random.Random` replays the same stream on every
run, so a crash found once is found again.

Three kinds of message, each built from valid templates (the header as a dict with its own
"v" and "arrays" fields, then the array frames), so that most of them get far into validation:
- random: 1..4 frames of random bytes, or random msgpack objects (maps, lists, scalars);
- header mutations: a field set to a hostile value (huge, negative, float, NaN, None, bytes,
  long strings, nested maps and lists, msgpack extension types), removed, or added; the op,
  the version or the array descriptors changed;
- frame mutations: bytes flipped, frames truncated, extended, dropped, duplicated, swapped,
  inserted, an empty first frame (what a REQ socket sends).
"""
from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from downpour.ps import protocol as P

Frames = list[bytes]
Template = tuple[dict, list[np.ndarray]]

ALL_OPS = sorted(P.CONTROL_OPS | P.DATA_OPS | P.REPLY_OPS)
DTYPES = sorted(P.WIRE_DTYPES) + ["object", "complex64", "<f4", "", "V8", "float128"]
LONG = 3000  # characters: long enough to exceed every name limit, short enough to keep disks calm


def pack(header: dict, frames: Frames) -> Frames:
    return [msgpack.packb(header, use_bin_type=True)] + list(frames)


def template_frames(header: dict, arrays: list[np.ndarray]) -> Frames:
    """A valid message's frames, with "v" and "arrays" written into the header by us."""
    header = dict(header, v=P.VERSION, arrays=[[a.dtype.name, list(a.shape)] for a in arrays])
    return pack(header, [a.tobytes() for a in arrays])


class Mutator:
    def __init__(self, seed: int, templates: list[Template], accept: Callable[[Frames], Frames] = lambda f: f):
        """`accept` may rewrite a finished message (the test uses it to keep fuzzed messages
        from being requests that a legitimate peer may send with legitimate effects)."""
        self.rng = random.Random(seed)
        self.templates = templates
        self.accept = accept

    def __iter__(self):
        return self

    def __next__(self) -> Frames:
        r = self.rng.random()
        if r < 0.10:
            frames = self.random_bytes()
        elif r < 0.20:
            frames = [msgpack.packb(self.value(3), use_bin_type=True) for _ in range(self.rng.randint(1, 3))]
        elif r < 0.25:
            frames = self.valid()
        elif r < 0.70:
            frames = self.mutate_header()
        else:
            frames = self.mutate_frames(self.mutate_header() if self.rng.random() < 0.3 else self.valid())
        return self.accept(frames)

    # ---- values ------------------------------------------------------------------------------
    def integer(self) -> int:
        rng = self.rng
        return rng.choice([0, 1, -1, 2, 255, 256, 2**31 - 1, 2**31, 2**32, 2**53, 2**62 - 1, 2**62,
                           2**63 - 1, 2**64 - 1, -2**31, -2**63, rng.randint(-2**63, 2**64 - 1),
                           rng.randint(-1000, 10**6), rng.randint(0, 2**40)])

    def text(self) -> str:
        rng = self.rng
        return rng.choice(["", "worker-0", "worker-", "worker-x", "shard-0", "evaluator-0", "worker-99999999999",
                           "-1", "x" * rng.randint(200, LONG), "\u00e9\u4e2d\U0001f600" * rng.randint(1, 100),
                           "\x00" * rng.randint(1, 10), f"worker-{self.integer()}", rng.choice(ALL_OPS)])

    def value(self, depth: int = 2) -> Any:
        rng = self.rng
        kind = rng.randrange(12 if depth > 0 else 9)
        if kind == 0:
            return self.integer()
        if kind == 1:
            return rng.choice([0.0, -0.0, 0.5, 1e308, -1e308, float("nan"), float("inf"), float("-inf"), 3.4e38])
        if kind == 2:
            return self.text()
        if kind == 3:
            return rng.randbytes(rng.choice([0, 1, 8, 40, 1000]))
        if kind == 4:
            return rng.choice([None, True, False])
        if kind == 5:
            return msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.randrange(16)))
        if kind == 6:
            return msgpack.Timestamp(rng.randrange(2**32), rng.randrange(10**9))
        if kind == 7:
            return [rng.randrange(-3, 2**33) for _ in range(rng.randrange(12))]  # shape-like lists
        if kind == 8:
            deep: Any = 0
            for _ in range(rng.choice([10, 200, 500])):  # msgpack refuses to pack deeper
                deep = [deep]
            return deep
        if kind == 9:
            return [self.value(depth - 1) for _ in range(rng.randrange(6))]
        if kind == 10:
            return {self.key(): self.value(depth - 1) for _ in range(rng.randrange(6))}
        return {rng.randbytes(4): self.value(depth - 1)}  # a bytes key: msgpack allows it, JSON does not

    def key(self) -> str:
        return self.rng.choice(["op", "seq", "job", "from", "clock", "lo", "hi", "body", "role", "rank",
                                "address", "arrays", "v", "reason", "read_version", "updates", "pushes",
                                "clock", "kind", "loss", "step", "message", "fatal", "retry", "state",
                                "restored_updates", "read_staleness", "push_staleness", self.text()])

    # ---- messages ----------------------------------------------------------------------------
    def random_bytes(self) -> Frames:
        rng = self.rng
        if rng.random() < 0.1:  # msgpack bombs: deep nesting, lengths far beyond the data
            return [rng.choice([b"\x91" * rng.choice([600, 5000, 60_000]) + b"\xc0",
                                b"\xdf\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff\xc0",
                                b"\xdb\xff\xff\xff\xffabc", b"\xc6\x7f\xff\xff\xff",
                                b"\x81\xa2op" + b"\xdf\x00\x01\x00\x00"])]
        sizes = [rng.choice([0, 1, 2, 7, 16, 100, 1000, 4096, rng.randrange(70_000)]) for _ in range(rng.randint(1, 4))]
        return [rng.randbytes(n) for n in sizes]

    def _template(self) -> Template:
        header, arrays = self.rng.choice(self.templates)
        return dict(header), list(arrays)

    def valid(self) -> Frames:
        return template_frames(*self._template())

    def mutate_header(self) -> Frames:
        rng = self.rng
        header, arrays = self._template()
        header = dict(header, v=P.VERSION, arrays=[[a.dtype.name, list(a.shape)] for a in arrays])
        frames = [a.tobytes() for a in arrays]
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            what = rng.randrange(10)
            if what <= 2:      # a hostile value in a field it has
                header[rng.choice(list(header))] = self.value()
            elif what == 3:    # a field missing
                header.pop(rng.choice(list(header)), None)
            elif what == 4:    # a field it should not have, or a body field
                if isinstance(header.get("body"), dict) and rng.random() < 0.7:
                    header["body"] = dict(header["body"], **{self.key(): self.value()})
                else:
                    header[self.key()] = self.value()
            elif what == 5:
                header["op"] = rng.choice(ALL_OPS + ["", "PULL", "pull ", "explode"])
            elif what == 6:
                header["v"] = rng.choice([0, 2, -1, "1", 1.0, None, True])
            elif what == 7:    # array descriptors that disagree with the frames
                header["arrays"] = self.descriptors(len(frames))
            elif what == 8:    # arrays of another dtype or size, described correctly
                arrays = self.arrays()
                header["arrays"] = [[a.dtype.name, list(a.shape)] for a in arrays]
                frames = [a.tobytes() for a in arrays]
            else:
                header["body"] = self.value()
        return pack(header, frames)

    def descriptors(self, count: int) -> Any:
        rng = self.rng
        if rng.random() < 0.2:
            return self.value()
        n = count + rng.choice([0, 0, 0, -1, 1, 5])
        return [[rng.choice(DTYPES), self.value(0) if rng.random() < 0.2 else
                 [rng.choice([0, 1, 3, 650, 651, -1, 2**40, 2**62]) for _ in range(rng.choice([0, 1, 1, 2, 9]))]]
                for _ in range(max(0, n))]

    def arrays(self) -> list[np.ndarray]:
        rng = self.rng
        out = []
        for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
            dtype = rng.choice(sorted(P.WIRE_DTYPES))
            n = rng.choice([0, 1, 649, 650, 651, 1000, rng.randrange(20_000)])
            out.append(np.frombuffer(rng.randbytes(n * np.dtype(dtype).itemsize), dtype))
        return out

    def mutate_frames(self, frames: Frames) -> Frames:
        rng = self.rng
        frames = list(frames)
        for _ in range(rng.choice([1, 1, 2, 3])):
            i = rng.randrange(len(frames))
            f = frames[i]
            what = rng.randrange(8)
            if what == 0 and f:       # flip bytes
                b = bytearray(f)
                for _ in range(rng.choice([1, 1, 2, 8])):
                    b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
                frames[i] = bytes(b)
            elif what == 1:           # truncate
                frames[i] = f[:rng.randrange(len(f) + 1)]
            elif what == 2:           # extend
                frames[i] = f + rng.randbytes(rng.choice([1, 3, 4, 100, 10_000]))
            elif what == 3 and len(frames) > 1:
                del frames[i]
            elif what == 4:
                frames.insert(i, f)
            elif what == 5:
                frames.insert(rng.randrange(len(frames) + 1), rng.randbytes(rng.choice([0, 4, 2600])))
            elif what == 6 and len(frames) > 1:
                j = rng.randrange(len(frames))
                frames[i], frames[j] = frames[j], frames[i]
            else:
                frames.insert(0, b"")  # the delimiter a REQ socket puts first
        return frames
