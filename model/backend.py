"""The array backend: NumPy by default, CuPy when a process asks for it.

Every op is written once against the array module returned by `array_module`, so the
same registry runs on the CPU and, where CuPy is installed, on a GPU.
"""
from __future__ import annotations

import types

import numpy

_cupy: types.ModuleType | None = None
_default: types.ModuleType = numpy


def _load_cupy() -> types.ModuleType:
    global _cupy
    if _cupy is None:
        try:
            import cupy  # noqa: PLC0415 - optional, imported only when asked for
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise RuntimeError(
                "device 'cuda' needs CuPy: pip install 'downpour[cupy]' on a machine with an NVIDIA GPU"
            ) from exc
        try:
            cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # pragma: no cover - depends on the machine
            raise RuntimeError(f"device 'cuda' asked for, but no usable GPU was found: {exc}") from exc
        _cupy = cupy
    return _cupy


def use(device: str) -> types.ModuleType:
    """Select the backend for new tensors in this process: 'cpu' (NumPy) or 'cuda' (CuPy)."""
    global _default
    if device == "cpu":
        _default = numpy
    elif device == "cuda":
        _default = _load_cupy()
    else:
        raise ValueError(f"unknown device {device!r}: expected 'cpu' or 'cuda'")
    return _default


def default() -> types.ModuleType:
    """The array module new tensors are created with."""
    return _default


def array_module(*arrays) -> types.ModuleType:
    """NumPy or CuPy, whichever owns the given arrays (NumPy when none is a CuPy array)."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return numpy


def writable(a):
    """`a` as an array that ufuncs may write into with `out=`: NumPy hands back the results of
    arithmetic on 0-d arrays as scalars (`np.float64`), which cannot be written in place."""
    return numpy.asarray(a) if isinstance(a, numpy.generic) else a


def to_numpy(a) -> numpy.ndarray:
    """A host (NumPy) copy of `a`, or `a` itself when it already lives on the host."""
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy.asnumpy(a)
    return numpy.asarray(a)
