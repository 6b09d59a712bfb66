"""Seeded parameter initialisation with torch's default distributions.

Every layer draws its initial weights from an explicit `numpy.random.Generator` when given
one, else from this module's default generator. The default starts from a fixed seed (as
torch's does), and `manual_seed` resets it, so a whole cluster that seeds the same way builds
the same initial model.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import backend

DEFAULT_SEED = 0

_generator = np.random.default_rng(DEFAULT_SEED)


def manual_seed(seed: int) -> np.random.Generator:
    """Reset the default generator; layers built afterwards are reproducible from `seed`."""
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def default_generator() -> np.random.Generator:
    """The generator layers and dropout use when they were given none."""
    return _generator


def _on_backend(values: np.ndarray) -> Any:
    """Host-drawn values moved to the active backend, so draws do not depend on the device."""
    xp = backend.default()
    return values if xp is np else xp.asarray(values)


def uniform(shape: tuple[int, ...], bound: float, rng: np.random.Generator | None = None,
            dtype: Any = np.float32) -> Any:
    """U(-bound, bound) of the given shape."""
    rng = rng if rng is not None else _generator
    return _on_backend(rng.uniform(-bound, bound, size=shape).astype(dtype))


def normal(shape: tuple[int, ...], rng: np.random.Generator | None = None,
           dtype: Any = np.float32) -> Any:
    """N(0, 1) of the given shape (torch's default for embeddings)."""
    rng = rng if rng is not None else _generator
    return _on_backend(rng.standard_normal(size=shape).astype(dtype))


def constant(shape: tuple[int, ...], value: float, dtype: Any = np.float32) -> Any:
    return backend.default().full(shape, value, dtype=dtype)


def fan_in_bound(fan_in: int) -> float:
    """torch's default bound for Linear and Conv weights and biases: 1/sqrt(fan_in).

    kaiming_uniform_(a=sqrt(5)) gives gain sqrt(2/(1+5)) and bound gain*sqrt(3/fan_in),
    which is exactly 1/sqrt(fan_in); the biases use the same bound.
    """
    return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
