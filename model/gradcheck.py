"""Check analytic gradients against central finite differences, in float64.

Works for a single op or a whole module: `fn(*inputs)` is re-evaluated with one element of
one input nudged at a time, so any tensor the computation reads can be checked by passing
it in `inputs`, even if `fn` ignores that argument and reaches the tensor another way:

    params = list(net.parameters())
    gradcheck(lambda x, *_: net(x), [x, *params])

Every floating input is promoted to float64 for the duration of the check and restored
afterwards (data and `.grad`), so float32 models can be checked without losing precision.
A random projection of the output turns any output shape into one scalar to differentiate.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import backend
from .sparse import RowSparse
from .tensor import Tensor, no_grad

log = logging.getLogger(__name__)


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with the finite-difference one."""


def gradcheck(
    fn: Callable[..., Tensor],
    inputs: Sequence[Any],
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    *,
    max_elements: int | None = None,
    seed: int = 0,
) -> bool:
    """Return True when every input that requires grad has a correct gradient; raise
    `GradcheckError` naming the input, the worst element, and both values otherwise.

    An element passes when |analytic - numeric| <= atol + rtol * |numeric|. With
    `max_elements`, only that many randomly chosen elements of each input are perturbed
    (useful for large parameter tensors); the analytic gradient is always computed in full.
    """
    inputs = tuple(inputs)
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck needs at least one input tensor with requires_grad=True")
    floating = [t for t in inputs if isinstance(t, Tensor) and t.dtype.kind == "f"]
    saved = [(t, t.data, t.grad) for t in floating]
    rng = np.random.default_rng(seed)
    try:
        for t in floating:
            t.data = backend.array_module(t.data).array(t.data, dtype=np.float64, order="C")
            t.grad = None
        analytic, projection = _analytic_gradients(fn, inputs, checked, rng)

        def objective() -> float:
            with no_grad():
                return float((_output(fn, inputs).data * projection).sum())

        for k in checked:
            _compare(k, inputs[k], analytic[k], objective, eps, atol, rtol, max_elements, rng)
    finally:
        for t, data, grad in saved:
            t.data, t.grad = data, grad
    return True


def _output(fn: Callable[..., Tensor], inputs: tuple) -> Tensor:
    out = fn(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck's fn must return a Tensor, got {type(out).__name__}")
    return out


def _analytic_gradients(fn, inputs: tuple, checked: list[int], rng) -> tuple[dict[int, Any], Any]:
    out = _output(fn, inputs)
    xp = backend.array_module(out.data)
    projection = xp.asarray(rng.standard_normal(out.shape)).astype(out.dtype)
    if out.requires_grad:
        out.backward(projection)
    analytic = {}
    for k in checked:
        t = inputs[k]
        grad = xp.zeros(t.shape) if t.grad is None else t.grad
        if isinstance(grad, RowSparse):
            grad = grad.to_dense()
        if grad.shape != t.shape:
            raise GradcheckError(f"input {k}: gradient has shape {grad.shape}, the input {t.shape}")
        analytic[k] = backend.to_numpy(grad).astype(np.float64).reshape(-1)
    return analytic, projection


def _compare(k: int, t: Tensor, analytic, objective, eps, atol, rtol, max_elements, rng) -> None:
    flat = t.data.reshape(-1)  # a view: t.data is our own C-contiguous float64 copy
    positions = np.arange(flat.size)
    if max_elements is not None and max_elements < flat.size:
        positions = np.sort(rng.choice(flat.size, size=max_elements, replace=False))
    numeric = np.empty(positions.size)
    for j, pos in enumerate(positions):
        original = flat[pos].item()
        flat[pos] = original + eps
        plus = objective()
        flat[pos] = original - eps
        minus = objective()
        flat[pos] = original
        numeric[j] = (plus - minus) / (2 * eps)
    expected = analytic[positions]
    excess = np.abs(expected - numeric) - (atol + rtol * np.abs(numeric))
    excess[np.isnan(excess)] = np.inf  # a nan on either side is a failure
    if excess.size and excess.max() > 0:
        worst = int(np.argmax(excess))
        where = np.unravel_index(positions[worst], t.shape)
        raise GradcheckError(
            f"input {k} (shape {t.shape}): gradient mismatch at index {tuple(int(i) for i in where)}: "
            f"analytic {expected[worst]!r}, numeric {numeric[worst]!r} "
            f"(atol={atol}, rtol={rtol}, eps={eps})"
        )
    log.debug("gradcheck input %d: %d elements agree", k, positions.size)
