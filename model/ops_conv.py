"""Convolution and pooling ops on NCHW arrays, each with a fused vector-Jacobian product.

conv2d is a GEMM over im2col columns: the forward keeps the columns, so the weight gradient
is one more GEMM and the input gradient one GEMM plus col2im. The loops themselves live in
`kernels` (Numba when available, vectorized NumPy otherwise).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import backend, kernels, workspace
from .registry import Context, Op, register, samples
from .tensor import is_grad_enabled

Pair = tuple[int, int]


def pair(value: int | tuple[int, int] | list[int]) -> Pair:
    """An int or a pair as a pair, the way torch reads kernel_size, stride and padding."""
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


@register
class Conv2d(Op):
    """y[n,o] = sum_c x[n,c] (cross-correlated with) w[o,c] + b[o]; bias may be left out.

    The columns live in the `workspace` pool from forward to the end of backward, and the
    GEMM results are staged there too, so steady-state training allocates only what it
    returns.
    """

    name = "conv2d"

    @staticmethod
    def forward(ctx: Context, x: Any, weight: Any, bias: Any = None,
                stride: Any = 1, padding: Any = 0) -> Any:
        xp = backend.array_module(x)
        if x.ndim != 4 or weight.ndim != 4 or x.shape[1] != weight.shape[1]:
            raise ValueError(
                f"conv2d wants x (N,C,H,W) and weight (O,C,kh,kw): got {x.shape}, {weight.shape}")
        stride, padding = pair(stride), pair(padding)
        n, out_channels, kernel = x.shape[0], weight.shape[0], weight.shape[2:]
        out_hw = tuple(kernels.output_size(x.shape[2 + a], kernel[a], stride[a], padding[a]) for a in (0, 1))
        columns = n * out_hw[0] * out_hw[1]
        cols = kernels.im2col(x, kernel, stride, padding,
                              out=workspace.take((x.shape[1] * kernel[0] * kernel[1], columns), x.dtype, x))
        product = workspace.take((out_channels, columns), xp.result_type(x, weight), x)
        xp.matmul(weight.reshape(out_channels, -1), cols, out=product)
        if bias is not None:
            product += bias.reshape(-1, 1)
        out = xp.ascontiguousarray(product.reshape(out_channels, n, *out_hw).transpose(1, 0, 2, 3))
        workspace.give(product)
        if not is_grad_enabled():  # no backward will come for these columns
            workspace.give(cols)
            return out
        ctx.cols, ctx.weight, ctx.x_shape = cols, weight, x.shape
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return out

    @staticmethod
    def backward(ctx: Context, grad: Any) -> tuple:
        weight, cols = ctx.weight, ctx.cols
        out_channels = weight.shape[0]
        grad_rows = workspace.take((out_channels, cols.shape[1]), grad.dtype, grad)
        grad_rows.reshape(out_channels, grad.shape[0], *grad.shape[2:])[...] = grad.transpose(1, 0, 2, 3)
        need = ctx.needs_input_grad
        dx = dw = db = None
        if need[0]:
            dcols = workspace.take(cols.shape, grad.dtype, grad)
            backend.array_module(grad).matmul(weight.reshape(out_channels, -1).T, grad_rows, out=dcols)
            dx = kernels.col2im(dcols, ctx.x_shape, weight.shape[2:], ctx.stride, ctx.padding)
            workspace.give(dcols)
        if need[1]:
            dw = (grad_rows @ cols.T).reshape(weight.shape)
        if ctx.has_bias and need[2]:
            db = grad_rows.sum(axis=1)
        workspace.give(grad_rows)
        workspace.give(cols)
        ctx.cols = None
        return (dx, dw, db) if ctx.has_bias else (dx, dw)

    @samples
    def samples(rng) -> Iterable[tuple[tuple, dict]]:
        x = rng.standard_normal((2, 3, 6, 5))
        yield (x, rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)), {}
        yield (x, rng.standard_normal((2, 3, 3, 2)), rng.standard_normal(2)), {
            "stride": (2, 1), "padding": (1, 2)}
        yield (x, rng.standard_normal((3, 3, 2, 2))), {"stride": 2, "padding": 1}


def _pool_params(kernel_size: Any, stride: Any, padding: Any) -> tuple[Pair, Pair, Pair]:
    kernel = pair(kernel_size)
    stride = kernel if stride is None else pair(stride)
    padding = pair(padding)
    if padding[0] * 2 > kernel[0] or padding[1] * 2 > kernel[1]:
        raise ValueError(f"pad {padding} should be at most half of kernel size {kernel}")
    return kernel, stride, padding


def _distinct_values(rng, shape: tuple[int, ...]) -> Any:
    """A random permutation of well-spaced values: no ties, so max is differentiable."""
    n = 1
    for d in shape:
        n *= d
    return (rng.permutation(n) * 0.1 - n * 0.05).reshape(shape)


@register
class MaxPool2d(Op):
    """Window maxima; the gradient goes to the first maximal element of each window."""

    name = "max_pool2d"

    @staticmethod
    def forward(ctx: Context, x: Any, kernel_size: Any = 2, stride: Any = None,
                padding: Any = 0) -> Any:
        kernel, stride, padding = _pool_params(kernel_size, stride, padding)
        out, ctx.argmax = kernels.max_pool_forward(x, kernel, stride, padding)
        ctx.x_shape, ctx.params = x.shape, (kernel, stride, padding)
        return out

    @staticmethod
    def backward(ctx: Context, grad: Any) -> tuple:
        return (kernels.max_pool_backward(grad, ctx.argmax, ctx.x_shape, *ctx.params),)

    @samples
    def samples(rng) -> Iterable[tuple[tuple, dict]]:
        yield (_distinct_values(rng, (2, 3, 6, 6)),), {"kernel_size": (2, 2)}
        yield (_distinct_values(rng, (2, 2, 7, 6)),), {
            "kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 1)}


@register
class AvgPool2d(Op):
    """Window means; by default (like torch) zero padding counts in the divisor."""

    name = "avg_pool2d"

    @staticmethod
    def forward(ctx: Context, x: Any, kernel_size: Any = 2, stride: Any = None,
                padding: Any = 0, count_include_pad: bool = True) -> Any:
        kernel, stride, padding = _pool_params(kernel_size, stride, padding)
        ctx.x_shape, ctx.params = x.shape, (kernel, stride, padding, count_include_pad)
        return kernels.avg_pool_forward(x, kernel, stride, padding, count_include_pad)

    @staticmethod
    def backward(ctx: Context, grad: Any) -> tuple:
        return (kernels.avg_pool_backward(grad, ctx.x_shape, *ctx.params),)

    @samples
    def samples(rng) -> Iterable[tuple[tuple, dict]]:
        yield (rng.standard_normal((2, 3, 6, 6)),), {"kernel_size": (2, 2)}
        yield (rng.standard_normal((2, 2, 7, 6)),), {
            "kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 1),
            "count_include_pad": False}
