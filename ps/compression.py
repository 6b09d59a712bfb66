"""Gradient compression for pushes: codecs, the worker's error feedback, the shard's decoder.

A push normally carries one float32 frame per shard range. With `compression.codec` set, the
worker's `Compressor` turns that frame into a few smaller ones plus a handful of header fields,
and the shard's `decode` turns them back into a dense float32 gradient before the update rule
sees it, so nothing downstream (consistency, bsp sums, replication, checkpoints) changes.

    none    the float32 slice as is (no header fields: the push is the uncompressed push)
    fp16    float16 of the slice times 2^exponent (header), the power of two
            that puts the largest magnitude just under 2^15                 2 bytes/value
    topk    the k = ceil(ratio * n) largest |values|: sorted uint32
            indices + float32 values, header {"count": k}                   8 bytes/kept value
    onebit  sign bits (np.packbits, 1 = non-negative) and one scale, the
            mean |x|; decodes to +scale or -scale (BytePS's onebit)         1 bit/value
    twobit  +t where x >= t, -t where x <= -t, else 0, four 2-bit codes a
            byte, first value in the high bits: 11 = +t, 10 = -t, 00 = 0
            (MXNet's 2bit; 01 is never sent)                                2 bits/value
    sparse  lossless: the non-zero entries only, as topk sends them: what
            an embedding's rows untouched by a batch, or a first layer's
            weights on always-blank pixels, leave out                       8 bytes/non-zero

The lossy codecs (topk, onebit, twobit) keep error feedback on the worker: what a push did
not deliver (the compensated gradient minus what the shard will decode) stays in a residual
that is added to the next gradient of the same range, so over many steps the shard receives
the sum of the true gradients up to one bounded residual (Seide et al. 2014; Stich et al.
2018). fp16 loses only rounding, so it keeps none: its scaling makes float16's range serve the
gradient's (raw gradients of 1e-6 would be float16 subnormals, imprecise, and converted by
NumPy in software, 30x slower), and what would still be subnormal, under 2^-29 of the largest
value, is flushed to zero.

The decoder is strict because it runs on hostile input: every malformed push raises
`CodecError` (a `ValueError`) naming what was wrong and what was expected, never anything else.
Pure NumPy: every step is a few vectorised passes over the slice (a Numba kernel would save a
pass or two, not worth a second implementation to keep in agreement).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import halves

CODECS = ("none", "fp16", "topk", "onebit", "twobit", "sparse")
LOSSY = frozenset({"topk", "onebit", "twobit"})   # these keep a residual (error feedback)
FIELDS = {"none": (), "fp16": ("exponent",), "topk": ("count",), "onebit": ("scale",), "twobit": ("threshold",),
          "sparse": ("count",)}
FRAMES = {"none": 1, "fp16": 1, "topk": 2, "onebit": 1, "twobit": 1, "sparse": 2}
_ALL_FIELDS = frozenset(f for fields in FIELDS.values() for f in fields)
FP16_MAX = float(np.finfo(np.float16).max)  # 65504
FP16_TINY = np.float32(2.0 ** -14)           # the smallest normal float16
MAX_EXPONENT = 100                           # fp16 scaling stays within float32's normal range
_POS, _NEG = 3, 2                             # twobit codes (MXNet's bit patterns)
_BYTE_CODES = np.array([[(b >> s) & 3 for s in (6, 4, 2, 0)] for b in range(256)], np.uint8)  # a byte's 4 codes


class CodecError(ValueError):
    """A compressed push that cannot be decoded; `str()` says what was wrong and what was expected."""


# ---- worker side -------------------------------------------------------------------------------

class Compressor:
    """One worker's encoder: a codec from the job's `compression` section, and one residual per
    shard range. `encode` must be called exactly once per push (a retry resends the frames it
    returned, never encodes again), so every residual update happens exactly once too."""

    def __init__(self, spec: dict[str, Any], ranges: Sequence[tuple[int, int]]):
        self.codec = spec.get("codec", "none")
        if self.codec not in CODECS:
            raise ValueError(f"compression codec {self.codec!r}: expected one of {', '.join(CODECS)}")
        self.ratio = float(spec.get("ratio", 0.01))
        self.threshold = float(spec.get("threshold", 0.5))
        if not 0 < self.ratio <= 1 or not (self.threshold > 0 and math.isfinite(self.threshold)):
            raise ValueError(f"compression ratio {self.ratio} must be in (0, 1], threshold {self.threshold} > 0")
        self.ranges = [(int(lo), int(hi)) for lo, hi in ranges]
        self.feedback = self.codec in LOSSY and bool(spec.get("error_feedback", True))
        self.residuals = [np.zeros(hi - lo, np.float32) if self.feedback else None for lo, hi in self.ranges]

    def encode(self, shard: int, grad: np.ndarray) -> tuple[dict[str, Any], tuple[np.ndarray, ...]]:
        """(header fields to merge into the push header, array frames) for `grad`, the gradient
        of shard `shard`'s range (length hi - lo). `grad` is not modified; the frames are new
        arrays (for `none`, `grad` itself), safe to resend until the push is acknowledged."""
        lo, hi = self.ranges[shard]
        if grad.shape != (hi - lo,):
            raise ValueError(f"shard {shard}: expected a gradient of shape ({hi - lo},), got {grad.shape}")
        if self.codec == "none":
            return {}, (grad,)
        if self.codec == "fp16":
            fields, frames = encode_fp16(grad)
            return {"codec": "fp16", **fields}, frames
        if self.codec == "sparse":
            idx = np.flatnonzero(grad).astype(np.uint32)
            return {"codec": "sparse", "count": int(idx.size)}, (idx, grad[idx])
        residual = self.residuals[shard]
        x = grad if residual is None else np.add(residual, grad, out=residual)  # compensated, in place
        if self.codec == "topk":
            fields, frames = encode_topk(x, self.ratio)
            if residual is not None:      # what was sent leaves the residual; the rest stays
                x[frames[0]] = 0.0
        elif self.codec == "onebit":
            fields, frames = encode_onebit(x)
            if residual is not None:
                x -= _onebit_values(frames[0], x.size, np.float32(fields["scale"]))
        else:
            fields, frames = encode_twobit(x, self.threshold)
            if residual is not None:
                x -= _twobit_values(frames[0], x.size, np.float32(fields["threshold"]))
        return {"codec": self.codec, **fields}, frames


def encode_fp16(x: np.ndarray) -> tuple[dict, tuple[np.ndarray]]:
    """float16 of x * 2^exponent, the largest magnitude scaled to [2^14, 2^15), subnormals
    flushed to zero; a non-finite x is sent clipped (and refused by the shard if NaN)."""
    peak = float(np.maximum(x.max(), -x.min())) if x.size else 0.0   # max |x| without |x|; NaN stays NaN
    if not (peak > 0 and math.isfinite(peak)):
        return {"exponent": 0}, (np.clip(x, -FP16_MAX, FP16_MAX).astype(np.float16),)
    unclamped = 15 - math.frexp(peak)[1]
    exponent = max(-MAX_EXPONENT, min(MAX_EXPONENT, unclamped))
    if exponent <= unclamped:   # no value overflows float16: by bits (ps/halves.py), 2x faster
        return {"exponent": exponent}, (halves.scaled_to_float16(x, exponent),)
    y = np.multiply(x, np.float32(2.0 ** exponent))
    y *= np.abs(y) >= FP16_TINY
    return {"exponent": exponent}, (y.astype(np.float16),)


def encode_topk(x: np.ndarray, ratio: float) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """The k = max(1, ceil(ratio * n)) entries of largest magnitude (at most n), by index."""
    n = x.size
    k = min(n, max(1, math.ceil(ratio * n)))
    idx = np.sort(largest(np.abs(x), k)).astype(np.uint32)
    return {"count": k}, (idx, x[idx].astype(np.float32, copy=False))


def largest(a: np.ndarray, k: int) -> np.ndarray:
    """The positions (in no order) of the k largest values of `a` (non-negative), ties at the
    boundary broken arbitrarily, as np.argpartition gives them, at a third of its cost on big
    vectors (`above_sampled`). If fewer than k reach the sample's threshold (or it is 0), all of
    `a` is partitioned."""
    n = a.size
    if k >= n:
        return np.arange(n)
    found = above_sampled(a, k)
    return found if found is not None else np.argpartition(a, n - k)[n - k:]


def above_sampled(a: np.ndarray, k: int) -> np.ndarray | None:
    """The positions (in no order) of the k largest values of `a` (non-negative, k < a.size),
    found among those that reach a threshold that about 3k values reach, taken from a strided
    sample of 1 024 values (measured: 38 400 values, k = 1%: 0.11 ms against np.argpartition's
    0.33 ms); None where that does not pay (a small `a`, a big k) or fails (a threshold of 0,
    fewer than k values reach it). Only values above 0 are ever returned."""
    n = a.size
    if n < 8192 or 4 * k >= n:
        return None
    sample = a[::n // 1024]
    j = sample.size - 1 - 3 * k * sample.size // n
    threshold = np.partition(sample, j)[j]
    if not threshold > 0:
        return None
    reach = np.flatnonzero(a >= threshold)
    if reach.size < k:
        return None
    return reach[np.argpartition(a[reach], reach.size - k)[reach.size - k:]]


def encode_onebit(x: np.ndarray) -> tuple[dict, tuple[np.ndarray]]:
    """Signs, and the mean magnitude as the one scale (float32, carried exactly in the header)."""
    scale = np.float32(np.mean(np.abs(x), dtype=np.float64)) if x.size else np.float32(0)
    return {"scale": float(scale)}, (np.packbits(x >= 0),)


def encode_twobit(x: np.ndarray, threshold: float) -> tuple[dict, tuple[np.ndarray]]:
    """Codes of +t / -t / 0, four a byte."""
    t, n = np.float32(threshold), x.size
    codes = np.zeros(-(-n // 4) * 4, np.uint8)   # ufuncs with out=, not masked assignment: 10x faster
    np.greater_equal(x, t, out=codes[:n].view(bool))
    codes[:n] *= _POS
    negative = np.less_equal(x, -t).view(np.uint8)
    codes[:n] += negative * np.uint8(_NEG)
    c = codes.reshape(-1, 4)
    packed = c[:, 0] << 6
    for j, shift in ((1, 4), (2, 2), (3, 0)):
        packed |= c[:, j] << shift
    return {"threshold": float(t)}, (packed,)


def wire_bytes(arrays: Sequence[np.ndarray]) -> int:
    """Payload bytes of a push's array frames (the header, tens of bytes, is not counted,
    as the uncompressed count does not count it)."""
    return sum(int(a.nbytes) for a in arrays)


def _onebit_values(packed: np.ndarray, n: int, scale: np.float32, out: np.ndarray | None = None) -> np.ndarray:
    """+scale for a set bit, -scale for a clear one, exactly (bit * 2s - s; np.where is 20x slower)."""
    out = np.multiply(np.unpackbits(packed, count=n), np.float32(2) * scale, out=out, dtype=np.float32)
    out -= scale
    return out


def _twobit_values(packed: np.ndarray, n: int, t: np.float32, out: np.ndarray | None = None,
                   check: bool = False) -> np.ndarray:
    """0, -t, +t for the codes 00, 10, 11; with `check`, code 01 is refused. Four values a byte
    at once, from a table of the 256 bytes' values (3x faster than unpacking the codes)."""
    if check:
        bad = packed & ~(packed >> np.uint8(1)) & np.uint8(0x55)   # a set low bit under a clear high one
        if n % 4:   # the last byte's padding codes are not looked at
            bad[-1] &= np.uint8((0x55 << (8 - 2 * (n % 4))) & 0x55)
        if bad.any():
            raise CodecError("twobit code 01 found: expected only 11 (+t), 10 (-t) and 00 (0)")
    table = np.array([0, 0, -t, t], np.float32)[_BYTE_CODES]
    if out is not None and n % 4 == 0 and out.flags.c_contiguous:   # written in place, four values a row
        return np.take(table, packed, axis=0, out=out.reshape(-1, 4)).reshape(-1)
    values = np.take(table, packed, axis=0).reshape(-1)[:n]
    if out is None:
        return values
    out[...] = values
    return out


# ---- shard side --------------------------------------------------------------------------------

def decode(header: dict, arrays: Sequence[np.ndarray], n: int, out: np.ndarray | None = None) -> np.ndarray:
    """The dense float32 gradient of length `n` that a compressed push carries.

    `header` is the push header (only "codec" and the codecs' own fields are read; no "codec"
    means `none`, the uncompressed push); `arrays` its frames. The result is written into `out`
    (float32, length n) when given, else into a new array; `none` returns the received frame
    itself (no copy, and like an uncompressed push, no check of its values). Raises CodecError."""
    codec = checked_codec(header, arrays)
    if codec == "none":
        return _frame(arrays[0], "float32", n, codec, "values")
    if out is None:
        out = np.empty(n, np.float32)
    elif out.dtype != np.float32 or out.shape != (n,):
        raise ValueError(f"decode: out must be float32 of shape ({n},), got {out.dtype} {out.shape}")
    if codec == "fp16":
        exponent = header["exponent"]
        if not _is_int(exponent) or abs(exponent) > MAX_EXPONENT:
            raise CodecError(f"fp16 exponent {str(exponent)[:40]}: expected an integer in "
                             f"[-{MAX_EXPONENT}, {MAX_EXPONENT}]")
        if not halves.float16_scaled(_frame(arrays[0], "float16", n, codec, "values"), exponent, out):
            raise CodecError(f"{codec} values include inf or NaN: expected finite numbers")
    elif codec in ("topk", "sparse"):
        idx, values = indexed(header, arrays, n)
        out.fill(0.0)
        out[idx] = values
    elif codec == "onebit":
        scale = _scale(header["scale"], "onebit scale", allow_zero=True)
        _onebit_values(_frame(arrays[0], "uint8", -(-n // 8), codec, "sign bits"), n, scale, out)
    else:
        t = _scale(header["threshold"], "twobit threshold", allow_zero=False)
        _twobit_values(_frame(arrays[0], "uint8", -(-n // 4), codec, "codes"), n, t, out, check=True)
    return out


def checked_codec(header: dict, arrays: Sequence[np.ndarray]) -> str:
    """The codec a message names, once its header fields and frame count are what that codec
    sends (no "codec" is `none`). Raises CodecError."""
    codec = header.get("codec", "none")
    if not isinstance(codec, str) or codec not in CODECS:
        raise CodecError(f"unknown codec {str(codec)[:40]!r}: expected one of {', '.join(CODECS)}")
    missing = [f for f in FIELDS[codec] if f not in header]
    if missing:
        raise CodecError(f"{codec} push without header field {missing[0]!r}")
    extra = sorted(f for f in _ALL_FIELDS & header.keys() if f not in FIELDS[codec])
    if extra:
        raise CodecError(f"{codec} push with header field {extra[0]!r}: {codec} takes "
                         f"{', '.join(map(repr, FIELDS[codec])) or 'no fields'}")
    if len(arrays) != FRAMES[codec]:
        raise CodecError(f"{codec} push with {len(arrays)} array frames: expected {FRAMES[codec]}")
    return codec


def indexed(header: dict, arrays: Sequence[np.ndarray], n: int, finite: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The (indices, values) a topk or sparse message carries for a vector of length `n`, checked:
    indices strictly increasing and in range, values finite (unless `finite` is false: weights
    that a read sends as they are). Raises CodecError."""
    codec, count = header["codec"], header["count"]
    if not _is_int(count) or not 0 <= count <= n:
        raise CodecError(f"{codec} count {str(count)[:40]}: expected an integer in [0, {n}]")
    idx = _frame(arrays[0], "uint32", count, codec, "indices")
    values = _frame(arrays[1], "float32", count, codec, "values")
    if count and idx[-1] >= n:
        raise CodecError(f"{codec} index {int(idx[-1])} out of range: expected indices in [0, {n})")
    if count > 1 and not np.all(idx[1:] > idx[:-1]):
        raise CodecError(f"{codec} indices not strictly increasing: expected sorted indices without repeats")
    if finite:
        _finite(values, codec)
    return idx, values


def _frame(a: np.ndarray, dtype: str, size: int, codec: str, what: str) -> np.ndarray:
    if a.dtype != np.dtype(dtype) or a.shape != (size,):
        raise CodecError(f"{codec} {what}: expected {dtype} of shape ({size},), "
                         f"got {a.dtype.name} of shape {tuple(a.shape)}")
    return a


def _finite(values: np.ndarray, codec: str) -> None:
    if values.size and not np.isfinite(values).all():
        raise CodecError(f"{codec} values include inf or NaN: expected finite numbers")


def _scale(value: Any, name: str, allow_zero: bool) -> np.float32:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 3.4e38
    scaled = np.float32(value) if ok else np.float32(np.nan)  # (nan and inf fail the comparison)
    if not np.isfinite(scaled) or scaled < 0 or (scaled == 0 and not allow_zero):
        bound = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise CodecError(f"{name} {str(value)[:40]}: expected {bound} (float32)")
    return scaled


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
