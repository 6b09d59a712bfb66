"""One registry of primitive ops, each with its forward and its vector-Jacobian product side by side.

An op is a class with two static methods:

    forward(ctx, *arrays, **attrs) -> array
    backward(ctx, grad) -> tuple of arrays (or None), one per array input

`forward` may stash whatever `backward` needs on `ctx`. `backward` returns gradients with the
shapes the forward *computed* with; the engine alone reduces them to each input's own shape
(un-broadcasting) and accumulates them. `ctx.needs_input_grad` tells which inputs need one.
`backward` must not write into the `grad` it receives (the engine may hand one array to
several inputs, or a read-only broadcast view); it may write into arrays it made itself.

`samples(rng)` yields `(arrays, attrs)` float64 cases for the gradient check that every
registered op must pass (tests iterate over `OPS`, so an op without samples fails the suite).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


class Context:
    """Scratch space an op's forward leaves for its backward."""

    needs_input_grad: tuple[bool, ...] = ()


class Op:
    name: str = ""
    # Inputs (by position) that are never differentiated, such as integer indices or targets.
    nondiff: tuple[int, ...] = ()

    @staticmethod
    def forward(ctx: Context, *arrays: Any, **attrs: Any) -> Any:
        raise NotImplementedError

    @staticmethod
    def backward(ctx: Context, grad: Any) -> tuple:
        raise NotImplementedError

    @staticmethod
    def samples(rng) -> Iterable[tuple[tuple, dict]]:
        return ()


OPS: dict[str, type[Op]] = {}


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: add an op to the registry under its `name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in OPS:
        raise ValueError(f"op {cls.name!r} registered twice")
    OPS[cls.name] = cls
    return cls


def samples(fn: Callable) -> staticmethod:
    """Mark a function as an op's gradient-check sample generator (readability only)."""
    return staticmethod(fn)
