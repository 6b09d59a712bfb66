"""Numba, loaded when a compiled kernel first runs.

Importing numba costs a process about 0.3 s of CPU, and loading its first compiled kernel
from the on-disk cache about as much again. A coordinator, an evaluator, or a worker of an
MLP never runs a kernel, so nothing here imports numba up front: kernels are declared with
`kernel(...)` and compiled by `numba.njit` on their first call. `AVAILABLE` only asks
whether numba is installed (and not switched off with `DOWNPOUR_NO_NUMBA=1`).

Every kernel that exists twice (Numba, and a NumPy fallback that gives the same numbers) takes
its version from `use`: one rule for the convolution and pooling kernels, the RNN cells and
loops, the small GEMM and the optimizers' update loops.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from . import backend

AVAILABLE: bool = (os.environ.get("DOWNPOUR_NO_NUMBA", "") in ("", "0")
                   and importlib.util.find_spec("numba") is not None)

_hooks: list[Callable[[ModuleType], None]] = []


def use(asked: bool | None, x: Any = None, *, pays: bool = True) -> bool:
    """Whether a kernel runs its Numba version. `asked` (a caller's or a test's True / False)
    decides if given; asking for Numba where it is not available is an error. Otherwise (None)
    Numba runs where it is available, `x` (if given) is a NumPy array rather than a CuPy one, and
    the caller's own measure says it `pays` there."""
    if asked is None:
        return AVAILABLE and pays and (x is None or backend.array_module(x) is np)
    if asked and not AVAILABLE:
        raise RuntimeError("Numba kernels asked for, but numba is not available "
                           "(pip install numba, and leave DOWNPOUR_NO_NUMBA unset)")
    return asked


@functools.cache
def numba() -> ModuleType:
    """The numba module, imported on first use (then every `on_load` hook runs once)."""
    if not AVAILABLE:
        raise RuntimeError("Numba kernels asked for, but numba is not available")
    import numba as module
    for hook in _hooks:
        hook(module)
    return module


def on_load(hook: Callable[[ModuleType], None]) -> None:
    """Run `hook(numba)` once numba is imported (now, if it already is): for `@overload`s
    that compiled kernels rely on."""
    _hooks.append(hook)
    if numba.cache_info().currsize:  # already imported
        hook(numba())


class Kernel:
    """A function that `numba.njit(**options)` compiles on its first call.

    Kernels it calls by global name are compiled first and bound in its module in their
    compiled form, which is what numba needs to see when it types the caller."""

    def __init__(self, fn: Callable, options: dict[str, Any]):
        self.fn = fn
        self.options = options
        self._compiled: Callable | None = None
        functools.update_wrapper(self, fn)

    def compiled(self) -> Callable:
        if self._compiled is None:
            module_globals = self.fn.__globals__
            for name in self.fn.__code__.co_names:
                callee = module_globals.get(name)
                if isinstance(callee, Kernel):
                    module_globals[name] = callee.compiled()
            self._compiled = numba().njit(**self.options)(self.fn)
        return self._compiled

    def __call__(self, *args: Any) -> Any:
        return (self._compiled or self.compiled())(*args)


def kernel(**options: Any) -> Callable[[Callable], Kernel]:
    """Declare a Numba kernel: `@kernel(cache=True, nogil=True)` on a plain Python function."""
    return lambda fn: Kernel(fn, options)
