"""Small GEMMs for the recurrent time loops: out = a @ bt.T, both operands contiguous along K.

Why not BLAS: a step of an LSTM multiplies a (B, K) block, B ~ 32, by a weight of a few
hundred rows, T times forward and T times backward. OpenBLAS runs these shapes at about
100 GFLOP/s on this project's machines (AMD Zen 5), whose OPENBLAS_CORETYPE pins its kernel
to Haswell (AVX2). A plain Numba loop nest over 4x4 output tiles, each output a dot product
along K (so LLVM keeps 16 AVX-512 accumulators, 16 FMAs per 8 loads), runs them 1.3-1.7x
faster (measured, float32, 1 thread: (32,160)x(160,512) 35 us against 45 us, (32,512)x(512,128)
23 us against 38 us). Outer-product loop orders and other tile shapes measured slower; so did
this loop for the weight gradient (K = T*B), whose operands need transposing first: BLAS.

The loop only pays with 512-bit vectors: compiled for AVX2 it runs at half OpenBLAS's speed,
and LLVM prefers 256-bit vectors on Intel's AVX-512 parts. So it is used (`fast()`) where the
Numba target is an AMD Zen with AVX-512, unless DOWNPOUR_SMALL_GEMM=0 (=1 forces it, for
comparisons); elsewhere, and for CuPy arrays, `matmul_nt` is plain `xp.matmul`. The sums are
reassociated (fastmath reassoc/contract only, so NaN and inf still propagate): the rounding
differs from BLAS's, within float tolerance; tests compare both.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from . import backend, jit


@functools.cache
def fast() -> bool:
    """Whether NumPy arrays go through the tile loop (and `rnn_loops` through its compiled time
    loops): whether Numba compiles for a CPU where it beats OpenBLAS (see above). Numba's
    target is the host's, unless NUMBA_CPU_NAME / NUMBA_CPU_FEATURES say otherwise."""
    forced = os.environ.get("DOWNPOUR_SMALL_GEMM", "")
    if not jit.AVAILABLE or forced == "0":
        return False
    if forced == "1":
        return True
    try:
        from llvmlite import binding  # noqa: PLC0415 - ships with numba
        name = os.environ.get("NUMBA_CPU_NAME") or binding.get_host_cpu_name()
        if os.environ.get("NUMBA_CPU_FEATURES"):
            avx512 = "+avx512f" in os.environ["NUMBA_CPU_FEATURES"].split(",")
        else:
            avx512 = bool(binding.get_host_cpu_features().get("avx512f", False))
    except (ImportError, AttributeError, RuntimeError):  # pragma: no cover - best effort
        return False
    return avx512 and name.startswith("znver")


def _dot_tiles(a, bt, k, bias, out):
    """out = a[:, :k] @ bt[:, :k].T (+ bias, when it is not empty), in 4x4 tiles plus edges."""
    m, n = out.shape
    m4, n4 = m - m % 4, n - n % 4
    zero = out.dtype.type(0)
    for i in range(0, m4, 4):
        a0, a1, a2, a3 = a[i], a[i + 1], a[i + 2], a[i + 3]
        for j in range(0, n4, 4):
            b0, b1, b2, b3 = bt[j], bt[j + 1], bt[j + 2], bt[j + 3]
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = zero
            s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = zero
            for p in range(k):
                x0, x1, x2, x3 = a0[p], a1[p], a2[p], a3[p]
                y0, y1, y2, y3 = b0[p], b1[p], b2[p], b3[p]
                s00 += x0 * y0
                s01 += x0 * y1
                s02 += x0 * y2
                s03 += x0 * y3
                s10 += x1 * y0
                s11 += x1 * y1
                s12 += x1 * y2
                s13 += x1 * y3
                s20 += x2 * y0
                s21 += x2 * y1
                s22 += x2 * y2
                s23 += x2 * y3
                s30 += x3 * y0
                s31 += x3 * y1
                s32 += x3 * y2
                s33 += x3 * y3
            c0 = c1 = c2 = c3 = zero
            if bias.shape[0]:
                c0, c1, c2, c3 = bias[j], bias[j + 1], bias[j + 2], bias[j + 3]
            out[i, j], out[i, j + 1], out[i, j + 2], out[i, j + 3] = s00 + c0, s01 + c1, s02 + c2, s03 + c3
            out[i + 1, j], out[i + 1, j + 1] = s10 + c0, s11 + c1
            out[i + 1, j + 2], out[i + 1, j + 3] = s12 + c2, s13 + c3
            out[i + 2, j], out[i + 2, j + 1] = s20 + c0, s21 + c1
            out[i + 2, j + 2], out[i + 2, j + 3] = s22 + c2, s23 + c3
            out[i + 3, j], out[i + 3, j + 1] = s30 + c0, s31 + c1
            out[i + 3, j + 2], out[i + 3, j + 3] = s32 + c2, s33 + c3
    for i in range(m):  # the edges: rows past m4 in full, columns past n4 for the tiled rows
        row = a[i]
        for j in range(n4 if i < m4 else 0, n):
            col = bt[j]
            s = bias[j] if bias.shape[0] else zero
            for p in range(k):
                s += row[p] * col[p]
            out[i, j] = s


def _transpose_tiles(src, dst):
    """dst = src.T by 8x8 tiles, so that neither side is walked with a long stride for long."""
    rows, cols = src.shape
    for j0 in range(0, cols, 8):
        for i0 in range(0, rows, 8):
            for j in range(j0, min(j0 + 8, cols)):
                line = dst[j]
                for i in range(i0, min(i0 + 8, rows)):
                    line[i] = src[i, j]


def padded(k: int) -> int:
    """A contraction length rounded up so the Numba loop needs no scalar tail (16 floats)."""
    return -(-k // 16) * 16 if fast() else k


def matmul_nt(a: Any, bt: Any, out: Any, use_numba: bool | None = None) -> Any:
    """out[...] = a @ bt.T for a (M, K) and bt (N, K), both C-contiguous; returns out (M, N)."""
    if jit.use(use_numba, a, pays=fast()):
        if a.shape[1] != bt.shape[1] or out.shape != (a.shape[0], bt.shape[0]):
            raise ValueError(f"matmul_nt: shapes {a.shape} x {bt.shape}.T -> {out.shape} do not fit")
        _dot_tiles_jit(a, bt, a.shape[1], np.empty(0, out.dtype), out)
        return out
    return backend.array_module(a).matmul(a, bt.T, out=out)


_dot_tiles_jit = jit.kernel(cache=True, nogil=True, fastmath={"reassoc", "contract"})(_dot_tiles)
_transpose_tiles_jit = jit.kernel(cache=True, nogil=True)(_transpose_tiles)

