"""float32 <-> float16 for the fp16 codec, by integer arithmetic on the bits, exactly as NumPy casts.

NumPy converts between float32 and float16 in software, one value at a time (F16C is not in
its baseline): 38 917 values take 120 us to float16 and 75 us back here (NumPy 2.4), and a value
that lands on a float16 subnormal 30x that. A fp16 push or read of a shard's range pays one
conversion on each side, and the shard pays both for a read (it brings its copy of the reader's
view up to date with what the reader will decode). A handful of vectorised integer passes do the
same, bit for bit: 38 917 values scaled, flushed and rounded to float16 in 62 us (146 us with
astype), back to float32 and unscaled in 25 us (78 us).

Only the values the codec produces take the fast way: to float16, finite values already scaled
so that none overflows, what is under float16's smallest normal flushed to zero (the codec's
rule); back, every float16 bit pattern (hostile input included: inf and NaN are reported).
"""
from __future__ import annotations

import numpy as np

_TINY_BITS = np.uint32(0x38800000)         # 2^-14, float16's smallest normal, as float32 bits
_MAGNITUDE = np.uint32(0x7FFFFFFF)
# float32 bits + this, then >> 13: the float16 bits of a normal value, rounded to nearest even
# once the 13 dropped bits' own rounding bit is added (re-biased exponent: 127 - 15 = 112).
_REBIAS_AND_ROUND = np.uint32((0xFFF - (112 << 23)) & 0xFFFFFFFF)
_SIGN16 = np.uint16(0x8000)
_MAGNITUDE16 = np.uint16(0x7FFF)
_INF16 = np.uint16(0x7C00)                 # exponent all ones: inf or NaN
_TO_FLOAT32 = 2.0 ** 112                   # float16 bits << 13, read as float32, times this: the value
_SIGN_AND_BELOW = np.uint32(0x8FFFFFFF)


def scaled_to_float16(x: np.ndarray, exponent: int) -> np.ndarray:
    """float16 of x * 2^exponent, values under 2^-14 flushed to (signed) zero: what
    `(y * (abs(y) >= 2^-14)).astype(float16)` gives for y = x * 2^exponent, bit for bit. `x`
    must be finite, float32 and 1-D, and |x| * 2^exponent under 65520 (no float16 overflow)."""
    bits = np.multiply(x, np.float32(2.0 ** exponent)).view(np.uint32)
    magnitude = np.bitwise_and(bits, _MAGNITUDE)
    kept = magnitude >= _TINY_BITS
    rounded = np.right_shift(magnitude, np.uint32(13))
    np.bitwise_and(rounded, np.uint32(1), out=rounded)   # ties go to the even neighbour
    rounded += magnitude
    rounded += _REBIAS_AND_ROUND
    rounded >>= np.uint32(13)
    half = rounded.astype(np.uint16)
    half *= kept
    sign = np.right_shift(bits, np.uint32(16), out=np.empty(bits.size, np.uint16), casting="unsafe")
    sign &= _SIGN16
    half |= sign
    return half.view(np.float16)


def float16_scaled(half: np.ndarray, exponent: int, out: np.ndarray) -> bool:
    """Write float32(half) * 2^-exponent into `out` (float32, same length): what
    `out[:] = half; out *= 2^-exponent` gives, bit for bit. False, with `out` undefined, if
    `half` holds an inf or a NaN."""
    bits = half.view(np.uint16)
    if bits.size and np.bitwise_and(bits, _MAGNITUDE16).max() >= _INF16:
        return False
    # Sign-extended to 32 bits and moved up by 13, the sign fills bits 28-31: bits 28-30 are
    # cleared to leave it alone at 31, above the exponent and mantissa in place (re-biased below).
    wide = out.view(np.uint32)
    np.copyto(out.view(np.int32), bits.view(np.int16))
    wide <<= np.uint32(13)
    wide &= _SIGN_AND_BELOW
    if exponent >= -15:   # one multiply: the exact value, rounded once, as two would round it
        np.multiply(out, np.float32(_TO_FLOAT32 * 2.0 ** -exponent), out=out)
    else:                 # 2^(112 - exponent) would overflow float32
        np.multiply(out, np.float32(_TO_FLOAT32), out=out)
        np.multiply(out, np.float32(2.0 ** -exponent), out=out)
    return True
