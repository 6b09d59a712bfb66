"""Feed-forward layers with torch's names, parameter shapes and default initialisation.

Every layer that owns weights takes `rng` (a `numpy.random.Generator`) to draw them from; by
default it uses the generator that `model.nn.manual_seed` resets.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .. import functional as F
from ..ops_conv import pair
from ..tensor import Tensor
from . import init
from .module import Module, Parameter

Generator = np.random.Generator


class Linear(Module):
    """y = x W^T + b with W (out_features, in_features), both drawn from U(+-1/sqrt(in))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 rng: Generator | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = init.fan_in_bound(in_features)
        self.weight = Parameter(init.uniform((out_features, in_features), bound, rng))
        self.bias = Parameter(init.uniform((out_features,), bound, rng)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Conv2d(Module):
    """2-D convolution over NCHW input; weight (out, in, kh, kw) and bias from U(+-1/sqrt(fan_in))."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                 bias: bool = True, rng: Generator | None = None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = pair(kernel_size), pair(stride), pair(padding)
        bound = init.fan_in_bound(in_channels * self.kernel_size[0] * self.kernel_size[1])
        self.weight = Parameter(init.uniform((out_channels, in_channels, *self.kernel_size), bound, rng))
        self.bias = Parameter(init.uniform((out_channels,), bound, rng)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class MaxPool2d(Module):
    def __init__(self, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 padding: int | Sequence[int] = 0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    def __init__(self, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 padding: int | Sequence[int] = 0, count_include_pad: bool = True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.count_include_pad = count_include_pad

    def forward(self, x: Tensor) -> Tensor:
        kernel = pair(self.kernel_size)
        stride = kernel if self.stride is None else pair(self.stride)
        return Tensor.apply("avg_pool2d", x, kernel_size=kernel, stride=stride,
                            padding=pair(self.padding), count_include_pad=self.count_include_pad)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class Flatten(Module):
    """Merge the axes start_dim..end_dim into one (by default all but the batch axis)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: Tensor) -> Tensor:
        start, end = self.start_dim % x.ndim, self.end_dim % x.ndim
        return x.reshape(*x.shape[:start], -1, *x.shape[end + 1:])


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x)


class Sigmoid(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.tanh(x)


class Dropout(Module):
    """Zero elements with probability p while training (scaling the rest by 1/(1-p)).

    The mask is drawn from `rng`, or from the default generator at call time, so runs that
    seed the same way drop the same elements.
    """

    def __init__(self, p: float = 0.5, rng: Generator | None = None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p, self.rng = p, rng

    def forward(self, x: Tensor) -> Tensor:
        rng = self.rng if self.rng is not None else init.default_generator()
        return F.dropout(x, self.p, self.training, rng)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Sequential(Module):
    """Modules applied in order, registered under the names '0', '1', ... (or the given ones)."""

    def __init__(self, *modules: Module | OrderedDict):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, module in modules[0].items():
                setattr(self, name, module)
        else:
            for index, module in enumerate(modules):
                setattr(self, str(index), module)

    def append(self, module: Module) -> Sequential:
        setattr(self, str(len(self._modules)), module)
        return self

    def __getitem__(self, index: int | slice) -> Any:
        items = list(self._modules.items())
        if isinstance(index, slice):
            return Sequential(OrderedDict(items[index]))
        return items[index][1]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def forward(self, x: Any) -> Any:
        for module in self._modules.values():
            x = module(x)
        return x


class Embedding(Module):
    """A lookup table of num_embeddings vectors of size embedding_dim, drawn from N(0, 1). With
    `sparse` (as in torch) its gradient is a RowSparse of the rows a batch looked up, which the
    shards, `compression.rows` and the optimizers take as it is."""

    def __init__(self, num_embeddings: int, embedding_dim: int, rng: Generator | None = None, sparse: bool = False):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.sparse = num_embeddings, embedding_dim, bool(sparse)
        self.weight = Parameter(init.normal((num_embeddings, embedding_dim), rng))

    def forward(self, indices: Any) -> Tensor:
        return F.embedding(indices, self.weight, sparse=self.sparse)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}" + (", sparse=True" if self.sparse else "")


class LayerNorm(Module):
    """Normalise over the trailing normalized_shape axes; weight starts at 1 and bias at 0."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps = shape, eps
        self.weight = Parameter(init.constant(shape, 1.0)) if elementwise_affine else None
        self.bias = Parameter(init.constant(shape, 0.0)) if elementwise_affine and bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"
