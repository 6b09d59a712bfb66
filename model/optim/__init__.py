"""Update rules over flat buffers: SGD (momentum, Nesterov), Adagrad, Adam, AdamW, clipping,
and learning-rate schedules; for tables trained by rows, FTRL-proximal and the lazy variants
(`sparse_rules.py`).

The same code updates a parameter-server shard's flat key range and a single-process run's
whole flat parameter buffer, so both give the same numbers. Hyper-parameter names, defaults
and formulas are PyTorch's (`torch.optim`, single-tensor path), including where weight decay
enters, the first momentum step (the buffer starts as a copy of the gradient) and Adam's bias
correction; results match torch to rounding (tests compare over 200 steps).

Every rule is elementwise: updating a sub-range of a buffer with its own rule instance gives
bit-for-bit the numbers of one rule over the whole buffer, which is what lets shards split a
tensor anywhere. A rule holds the state of one buffer; give each buffer its own instance.

Each step exists twice: a Numba loop that reads and writes every element once, chosen for
C-contiguous float32/float64 buffers of 65 536 elements or more when numba is installed (unless
`DOWNPOUR_NO_NUMBA=1`; `set_fused` forces a choice), and a
NumPy fallback that does the same arithmetic in the same order through in-place ufuncs on
persistent scratch buffers. Neither allocates on the hot path; tests check they agree.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from .base import RULES, Rule, _real, from_state_dict, make
from .fused import HAVE_NUMBA, set_fused
from .rules import SGD, Adagrad, Adam, AdamW
from .schedule import Schedule
from .sparse_rules import FTRL, LazyAdagrad, LazyAdam, LazyAdamW, LazySGD

__all__ = ["FTRL", "HAVE_NUMBA", "RULES", "SGD", "Adagrad", "Adam", "AdamW", "LazyAdagrad", "LazyAdam",
           "LazyAdamW", "LazySGD", "Rule", "Schedule", "clip_grad_norm_", "from_state_dict", "make", "set_fused"]


def clip_grad_norm_(grads: np.ndarray | Iterable[np.ndarray | None], max_norm: float) -> float:
    """Scale gradients in place so their global L2 norm is at most `max_norm`; return the old norm.

    torch.nn.utils.clip_grad_norm_ semantics: the factor is max_norm / (norm + 1e-6), applied
    only when it is below 1. `None` entries (parameters without a gradient) are skipped.
    """
    arrays = [grads] if isinstance(grads, np.ndarray) else [g for g in grads if g is not None]
    max_norm = _real("max_norm", max_norm)
    squares = 0.0
    for g in arrays:
        flat = g.reshape(-1)
        squares += float(np.dot(flat, flat))
    total = math.sqrt(squares)
    coef = max_norm / (total + 1e-6)
    if coef < 1 or math.isnan(coef):
        for g in arrays:
            g *= coef
    return total
