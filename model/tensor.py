"""The Tensor: an array of the active backend plus the op that made it.

`Tensor.apply` runs a registered op and records it; `backward()` hands the tape to the engine's
walk in `autograd`, which alone un-broadcasts and accumulates gradients, so ops stay simple.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import autograd, backend
from .registry import OPS, Context, Op

_grad_enabled = True


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Run a block without recording ops (evaluation, weight updates)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled() -> bool:
    return _grad_enabled


def _as_array(data: Any, dtype: Any = None) -> Any:
    xp = backend.array_module(data)
    if isinstance(data, xp.ndarray):
        return data if dtype is None or data.dtype == dtype else data.astype(dtype)
    if xp is np and backend.default() is not np and not isinstance(data, np.ndarray):
        xp = backend.default()
    arr = xp.asarray(data, dtype=dtype)
    if dtype is None and arr.dtype == np.float64 and not isinstance(data, np.ndarray):
        arr = arr.astype(np.float32)  # Python floats and lists become float32, like torch.tensor
    return arr


class Tensor:
    """An n-dimensional array that remembers how it was computed."""

    __slots__ = ("data", "grad", "requires_grad", "_op", "_ctx", "_parents", "__weakref__")
    __array_priority__ = 100  # numpy scalars on the left defer to Tensor's reflected operators

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None):
        self.data = data.data if isinstance(data, Tensor) else _as_array(data, dtype)
        self.grad: Any = None
        self.requires_grad = bool(requires_grad)
        self._op: type[Op] | None = None
        self._ctx: Context | None = None
        self._parents: tuple[Tensor, ...] = ()

    # ---- properties -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> Any:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def T(self) -> Tensor:
        return self.transpose()

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.data!r}{grad})"

    def numpy(self) -> np.ndarray:
        return backend.to_numpy(self.data)

    def item(self) -> float:
        return self.data.item()

    def detach(self) -> Tensor:
        return Tensor(self.data)

    def zero_grad(self) -> None:
        self.grad = None

    # ---- the tape ---------------------------------------------------------------------
    @staticmethod
    def apply(op: type[Op] | str, *inputs: Any, **attrs: Any) -> Tensor:
        """Run a registered op on tensors (or scalars and arrays, taken as constants)."""
        if isinstance(op, str):
            op = OPS[op]
        for x in inputs:
            if not isinstance(x, Tensor):
                inputs = _lift_all(inputs)
                break
        ctx = Context()
        data = op.forward(ctx, *[t.data for t in inputs], **attrs)
        if isinstance(data, np.generic):  # numpy turns 0-d results into scalars
            data = np.asarray(data)
        out = _wrap(data)
        if _grad_enabled:
            for t in inputs:
                if t.requires_grad:
                    out.requires_grad = True
                    out._op, out._ctx, out._parents = op, ctx, inputs
                    nondiff = op.nondiff
                    ctx.needs_input_grad = tuple(
                        p.requires_grad and i not in nondiff for i, p in enumerate(inputs)
                    )
                    break
        return out

    def backward(self, grad: Any = None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's `.grad` that requires it.

        The graph is released as it is walked (as in PyTorch), so a second backward through
        the same graph raises unless the first was asked to `retain_graph`.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        xp = backend.array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError("backward() without a gradient needs a scalar output")
            grad = xp.ones_like(self.data)
        elif isinstance(grad, Tensor):
            grad = grad.data
        root = xp.asarray(grad, dtype=self.dtype).reshape(self.shape)
        autograd.backward(self, root, retain_graph)

    # ---- arithmetic -------------------------------------------------------------------
    def __add__(self, other: Any) -> Tensor:
        return Tensor.apply("add", self, other)

    def __radd__(self, other: Any) -> Tensor:
        return Tensor.apply("add", other, self)

    def __sub__(self, other: Any) -> Tensor:
        return Tensor.apply("sub", self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return Tensor.apply("sub", other, self)

    def __mul__(self, other: Any) -> Tensor:
        return Tensor.apply("mul", self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return Tensor.apply("mul", other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return Tensor.apply("div", self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return Tensor.apply("div", other, self)

    def __pow__(self, exponent: Any) -> Tensor:
        return Tensor.apply("pow", self, exponent)

    def __rpow__(self, base: Any) -> Tensor:
        return Tensor.apply("pow", base, self)

    def __matmul__(self, other: Any) -> Tensor:
        return Tensor.apply("matmul", self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return Tensor.apply("matmul", other, self)

    def __neg__(self) -> Tensor:
        return Tensor.apply("neg", self)

    # Comparisons give plain boolean tensors: there is no gradient to record.
    def __lt__(self, other: Any) -> Tensor:
        return Tensor(self.data < _raw(other))

    def __le__(self, other: Any) -> Tensor:
        return Tensor(self.data <= _raw(other))

    def __gt__(self, other: Any) -> Tensor:
        return Tensor(self.data > _raw(other))

    def __ge__(self, other: Any) -> Tensor:
        return Tensor(self.data >= _raw(other))

    def eq(self, other: Any) -> Tensor:
        return Tensor(self.data == _raw(other))

    # ---- reductions, shapes, elementwise functions -------------------------------------
    def sum(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return Tensor.apply("sum", self, axis=_axis(axis), keepdims=keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return Tensor.apply("mean", self, axis=_axis(axis), keepdims=keepdims)

    def max(self, axis: Any = None, keepdims: bool = False) -> Tensor:
        return Tensor.apply("max", self, axis=_axis(axis), keepdims=keepdims)

    def reshape(self, *shape: Any) -> Tensor:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return Tensor.apply("reshape", self, shape=tuple(shape))

    def flatten(self, start_dim: int = 0) -> Tensor:
        return self.reshape(*self.shape[:start_dim], -1)

    def transpose(self, *axes: Any) -> Tensor:
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return Tensor.apply("transpose", self, axes=tuple(axes) or None)

    def __getitem__(self, index: Any) -> Tensor:
        return Tensor.apply("getitem", self, index=_index(index))

    def exp(self) -> Tensor:
        return Tensor.apply("exp", self)

    def log(self) -> Tensor:
        return Tensor.apply("log", self)

    def sqrt(self) -> Tensor:
        return Tensor.apply("sqrt", self)

    def tanh(self) -> Tensor:
        return Tensor.apply("tanh", self)

    def sigmoid(self) -> Tensor:
        return Tensor.apply("sigmoid", self)

    def relu(self) -> Tensor:
        return Tensor.apply("relu", self)


def _raw(x: Any) -> Any:
    return x.data if isinstance(x, Tensor) else x


def _wrap(data: Any) -> Tensor:
    """A Tensor around an array an op just made (skips the checks of `Tensor.__init__`)."""
    out = Tensor.__new__(Tensor)
    out.data, out.grad, out.requires_grad = data, None, False
    out._op, out._ctx, out._parents = None, None, ()
    return out


def _is_scalar(x: Any) -> bool:
    return isinstance(x, (int, float, np.generic)) or getattr(x, "ndim", None) == 0


def _lift_all(inputs: tuple) -> tuple[Tensor, ...]:
    """Lift constants next to the first floating tensor (else the first tensor)."""
    tensors = [x.data for x in inputs if isinstance(x, Tensor)]
    like = next((d for d in tensors if d.dtype.kind == "f"), tensors[0] if tensors else None)
    return tuple(_lift(x, like) for x in inputs)


def _lift(x: Any, like: Any) -> Tensor:
    """Tensors pass through; other inputs become constants.

    Scalars (Python, NumPy or 0-d arrays) next to a floating tensor take its dtype, so
    `x * 0.5` or `x * np.float64(2)` keeps a float32 `x` float32 (PyTorch's rule for scalars).
    """
    if isinstance(x, Tensor):
        return x
    if like is None:
        return Tensor(x)
    xp = backend.array_module(like)
    if like.dtype.kind == "f" and _is_scalar(x):
        return _wrap(xp.asarray(x, dtype=like.dtype))
    constant = Tensor(x)
    if backend.array_module(constant.data) is not xp:
        constant.data = xp.asarray(constant.data)
    return constant


def _axis(axis: Any) -> Any:
    if isinstance(axis, list):
        return tuple(axis)
    return axis


def _index(index: Any) -> Any:
    """Tensors used as indices become their arrays (integer-array indexing)."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """Make a tensor; Python floats and lists become float32 (as in PyTorch)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)
