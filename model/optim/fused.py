"""The update rules' Numba kernels: one loop that reads and writes every element once.

Chosen when numba is installed (unless `DOWNPOUR_NO_NUMBA=1`); `rules.py` keeps a NumPy path that
does the same arithmetic in the same order, and tests check the two agree.
"""
from __future__ import annotations

import numpy as np

from .. import jit

HAVE_NUMBA = jit.AVAILABLE  # numba itself is imported when a kernel first runs (model/jit.py)

# Below this many elements the kernel saves under ~50 us an update (measured: 20k float32 with
# Adagrad, 20 us against 40 us), while loading Numba costs a process ~0.8 s of CPU: a shard of
# a small model would need tens of thousands of updates to earn it back. So small buffers take
# the NumPy path unless the kernels are forced on.
MIN_ELEMENTS = 1 << 16
_forced: bool | None = None  # None: by size; True / False: always / never


def use_kernel(size: int) -> bool:
    """Whether a buffer of `size` elements takes the Numba kernel (where its layout allows)."""
    return jit.use(_forced, pays=size >= MIN_ELEMENTS)


def set_fused(enabled: bool | None) -> bool | None:
    """Force the Numba kernels on (True) or off (False), or choose by size again (None);
    returns the previous setting."""
    global _forced
    jit.use(enabled)  # forcing them on without numba fails here, not at the first update
    previous, _forced = _forced, enabled
    return previous


# No fastmath: the loops must round exactly like the NumPy path, one operation at a time.
_jit = jit.kernel(cache=True, nogil=True, error_model="numpy")


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
def adagrad_at(p, g, acc, at, clr, weight_decay, eps):
    """`adagrad` on the elements at positions `at` only, `g` holding their gradient packed."""
    for k in range(at.size):
        i = at[k]
        d = g[k] + p[i] * weight_decay if weight_decay != 0 else g[k]
        a = acc[i] + d * d
        acc[i] = a
        p[i] = p[i] - d / (np.sqrt(a) + eps) * clr


@_jit
def adam(p, g, m, v, vmax, decay, weight_decay, w1, beta2, w2, step_size, bc2_sqrt, eps, amsgrad):
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
