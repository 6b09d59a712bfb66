"""The update rules' Numba kernels: one loop that reads and writes every element once.

Chosen when numba imports (unless `DOWNPOUR_NO_NUMBA=1`); `rules.py` keeps a NumPy path that
does the same arithmetic in the same order, and tests check the two agree.
"""
from __future__ import annotations

import logging
import os

import numpy as np

log = logging.getLogger(__name__)

try:
    if os.environ.get("DOWNPOUR_NO_NUMBA", "") not in ("", "0"):
        raise ImportError("disabled by DOWNPOUR_NO_NUMBA")
    import numba
except ImportError as exc:
    numba = None
    log.debug("fused optimizer kernels off (%s): using NumPy", exc)

HAVE_NUMBA = numba is not None
_enabled = HAVE_NUMBA


def enabled() -> bool:
    """Whether the rules take the Numba kernels (where the buffers allow)."""
    return _enabled


def set_fused(enabled: bool) -> bool:
    """Use the Numba kernels (True) or the NumPy path (False); returns the previous choice."""
    global _enabled
    if enabled and not HAVE_NUMBA:
        raise RuntimeError("fused optimizer kernels asked for, but numba is not available")
    previous, _enabled = _enabled, bool(enabled)
    return previous


if HAVE_NUMBA:
    # No fastmath: the loops must round exactly like the NumPy path, one operation at a time.
    _jit = numba.njit(cache=True, nogil=True, error_model="numpy")

    @_jit
    def sgd(p, g, buf, lr, momentum, keep, weight_decay, nesterov, first):
        for i in range(p.size):
            d = g[i] + p[i] * weight_decay if weight_decay != 0 else g[i]
            if momentum != 0:
                if first:
                    b = d
                elif keep == 1:
                    b = buf[i] * momentum + d
                else:
                    b = buf[i] * momentum + d * keep
                buf[i] = b
                d = d + b * momentum if nesterov else b
            p[i] = p[i] - d * lr

    @_jit
    def adagrad(p, g, acc, clr, weight_decay, eps):
        for i in range(p.size):
            d = g[i] + p[i] * weight_decay if weight_decay != 0 else g[i]
            a = acc[i] + d * d
            acc[i] = a
            p[i] = p[i] - d / (np.sqrt(a) + eps) * clr

    @_jit
    def adam(p, g, m, v, vmax, decay, weight_decay, w1, beta2, w2, step_size, bc2_sqrt,
                     eps, amsgrad):
        for i in range(p.size):
            pi = p[i] * decay if decay != 1 else p[i]
            d = g[i] + pi * weight_decay if weight_decay != 0 else g[i]
            mi = m[i] + (d - m[i]) * w1
            vi = v[i] * beta2 + d * w2 * d
            m[i] = mi
            v[i] = vi
            if amsgrad:
                vi = max(vmax[i], vi)
                vmax[i] = vi
            p[i] = pi - mi / (np.sqrt(vi) / bc2_sqrt + eps) * step_size
