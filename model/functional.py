"""The functional API, with PyTorch's names and signatures: `import downpour.model.functional as F`.

Every function is a thin wrapper that turns torch-style arguments (ints or pairs, optional
bias, `dim`) into one registered op, so layers in `model.nn` and user code share one path.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from . import backend
from .ops_nn import REDUCTIONS
from .tensor import Tensor

_default_rng = np.random.default_rng()


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


def _tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def _raw(x: Any) -> Any:
    return x.data if isinstance(x, Tensor) else x


# ---- layers -------------------------------------------------------------------------------
def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias, weight of shape (out_features, in_features)."""
    if bias is None:
        return Tensor.apply("linear", x, weight)
    return Tensor.apply("linear", x, weight, bias)


def conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
) -> Tensor:
    """2-D convolution (cross-correlation, as torch) of NCHW input with (O, C, kh, kw) weights."""
    if bias is None:
        xp = backend.array_module(_tensor(weight).data)
        bias = xp.zeros(weight.shape[0], dtype=weight.dtype)
    return Tensor.apply(
        "conv2d", x, weight, bias, stride=_pair(stride, "stride"), padding=_pair(padding, "padding")
    )


def _pool(op: str, x: Tensor, kernel_size, stride, padding) -> Tensor:
    kernel = _pair(kernel_size, "kernel_size")
    step = kernel if stride is None else _pair(stride, "stride")
    return Tensor.apply(op, x, kernel_size=kernel, stride=step, padding=_pair(padding, "padding"))


def max_pool2d(
    x: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
) -> Tensor:
    """Max pooling over NCHW windows; the stride defaults to the kernel size."""
    return _pool("max_pool2d", x, kernel_size, stride, padding)


def avg_pool2d(
    x: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
) -> Tensor:
    """Average pooling over NCHW windows, padding counted in the average (torch's default)."""
    return _pool("avg_pool2d", x, kernel_size, stride, padding)


def embedding(indices: Any, weight: Tensor, sparse: bool = False) -> Tensor:
    """Rows of `weight` (num_embeddings, dim) for integer `indices` of any shape; with `sparse`,
    the table's gradient is a RowSparse of the rows looked up (torch's `sparse=True`)."""
    return Tensor.apply("embedding", indices, weight, sparse=sparse)


def embedding_bag(
    input: Any,
    weight: Tensor,
    offsets: Any = None,
    mode: str = "mean",
    per_sample_weights: Any = None,
    include_last_offset: bool = False,
) -> Tensor:
    """Sums or means of bags of rows of `weight` (torch.nn.functional.embedding_bag).

    `input` is 1-D ids cut into bags by `offsets` (bag b starts at offsets[b]; with
    `include_last_offset`, offsets ends with len(input), as in torch), or 2-D (B, N): B bags
    of N ids, without offsets. `per_sample_weights` (mode 'sum' only) scale each id's row.
    The gradient of `weight` is a `RowSparse` of the rows the bags read."""
    xp = backend.array_module(_tensor(weight).data)
    ids = xp.asarray(_raw(input))
    psw = per_sample_weights
    if ids.ndim == 2:
        if offsets is not None:
            raise ValueError("embedding_bag: offsets must be None for 2-D input (each row is one bag)")
        offsets = xp.arange(0, ids.size, max(ids.shape[1], 1), dtype=np.int64)[:ids.shape[0]]
        ids = ids.reshape(-1)
        psw = None if psw is None else _tensor(psw).reshape(-1)
    elif ids.ndim != 1 or offsets is None:
        raise ValueError(f"embedding_bag: expected 1-D input with offsets, or 2-D input; got {ids.ndim}-D "
                         f"input{' without offsets' if offsets is None else ''}")
    offsets = xp.asarray(_raw(offsets))
    if include_last_offset:
        if offsets.size == 0 or int(offsets[-1]) != ids.size:
            raise ValueError(f"embedding_bag: with include_last_offset the offsets must end with the number "
                             f"of ids ({ids.size})")
        offsets = offsets[:-1]
    if psw is None:
        return Tensor.apply("embedding_bag", ids, offsets, weight, mode=mode)
    return Tensor.apply("embedding_bag", ids, offsets, weight, psw, mode=mode)


def layer_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Normalise over the trailing `normalized_shape` axes, then scale and shift."""
    shape = (int(normalized_shape),) if isinstance(normalized_shape, (int, np.integer)) else tuple(normalized_shape)
    attrs = {"normalized_shape": shape, "eps": float(eps)}
    if weight is None and bias is None:
        return Tensor.apply("layer_norm", x, **attrs)
    if weight is None:
        xp = backend.array_module(_tensor(bias).data)
        weight = xp.ones(shape, dtype=bias.dtype)
    if bias is None:
        return Tensor.apply("layer_norm", x, weight, **attrs)
    return Tensor.apply("layer_norm", x, weight, bias, **attrs)


def dropout(
    x: Tensor, p: float = 0.5, training: bool = True, rng: np.random.Generator | None = None
) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p); identity when not
    training. The mask comes from `rng` (a module-level generator when None), so seeded
    generators give reproducible masks."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    x = _tensor(x)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        keep = np.zeros(x.shape, dtype=x.dtype)
    else:
        keep = (rng if rng is not None else _default_rng).random(x.shape, dtype=np.float32) >= p
        keep = keep.astype(x.dtype)
        keep *= 1.0 / (1.0 - p)
    xp = backend.array_module(x.data)
    return Tensor.apply("dropout", x, xp.asarray(keep))


# ---- activations --------------------------------------------------------------------------
def relu(x: Tensor) -> Tensor:
    return Tensor.apply("relu", x)


def sigmoid(x: Tensor) -> Tensor:
    return Tensor.apply("sigmoid", x)


def tanh(x: Tensor) -> Tensor:
    return Tensor.apply("tanh", x)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    return Tensor.apply("softmax", x, axis=dim)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    return Tensor.apply("log_softmax", x, axis=dim)


# ---- losses -------------------------------------------------------------------------------
def cross_entropy(logits: Tensor, targets: Any, reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy of (N, C[, d1, ...]) logits against integer class targets."""
    return Tensor.apply("softmax_cross_entropy", logits, targets, reduction=reduction)


def binary_cross_entropy_with_logits(logits: Tensor, targets: Any, reduction: str = "mean") -> Tensor:
    """Binary cross-entropy on logits, stable for any magnitude; targets are probabilities."""
    return Tensor.apply("bce_with_logits", logits, targets, reduction=reduction)


def mse_loss(x: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    """Mean (or summed, or elementwise) squared error."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    diff = _tensor(x) - target
    squared = diff * diff
    if reduction == "mean":
        return squared.mean()
    if reduction == "sum":
        return squared.sum()
    return squared


# ---- joining and selecting ----------------------------------------------------------------
def concat(tensors: Iterable[Tensor], dim: int = 0) -> Tensor:
    """Join tensors along an existing axis (torch.cat)."""
    return Tensor.apply("concat", *tensors, axis=dim)


def stack(tensors: Iterable[Tensor], dim: int = 0) -> Tensor:
    """Join same-shape tensors along a new axis (torch.stack)."""
    return Tensor.apply("stack", *tensors, axis=dim)


def where(condition: Any, a: Any, b: Any) -> Tensor:
    """Elements of `a` where `condition` holds, else of `b` (torch.where)."""
    return Tensor.apply("where", condition, a, b)


def maximum(a: Any, b: Any) -> Tensor:
    """Elementwise maximum; ties split the gradient evenly (torch.maximum)."""
    return Tensor.apply("maximum", a, b)
