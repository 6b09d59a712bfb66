"""The hot loops of convolution and pooling on NCHW arrays: im2col/col2im and window pooling.

Each kernel exists twice. The NumPy version is vectorized over the batch (it loops only over
the kh*kw kernel offsets) and runs unchanged under CuPy. The Numba version is a compiled
loop nest that touches every element once with no temporaries; it is chosen for NumPy
arrays when numba is installed (it is imported at the first call, `jit.py`), unless
`DOWNPOUR_NO_NUMBA=1` forces the fallback. Both give the same numbers (tests check it), so
the choice is purely about speed.

Conventions shared by both: `cols` has shape (C*kh*kw, N*OH*OW), rows ordered (c, i, j) like
a torch weight flattened to (O, C*kh*kw), columns ordered (n, oh, ow). Max pooling records
the arg-max as the offset `i*kw + j` inside its window; ties and all-`-inf` windows pick the
first element inside the input, exactly as torch does.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import backend, jit

Pair = tuple[int, int]

HAVE_NUMBA = jit.AVAILABLE  # numba itself is imported when a kernel first runs (model/jit.py)


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Length of a convolution or pooling output along one axis (torch's floor rule)."""
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(
            f"kernel {kernel} with padding {padding} does not fit an input of size {size}"
        )
    return out


def _out_shape(shape: tuple[int, ...], kernel: Pair, stride: Pair, padding: Pair) -> Pair:
    return (
        output_size(shape[2], kernel[0], stride[0], padding[0]),
        output_size(shape[3], kernel[1], stride[1], padding[1]),
    )


# ---- NumPy (and CuPy) versions ----------------------------------------------------------

def _pad(x: Any, padding: Pair, value: float) -> Any:
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    xp = backend.array_module(x)
    n, c, h, w = x.shape
    out = xp.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def _window(a: Any, i: int, j: int, out_hw: Pair, stride: Pair) -> Any:
    """The (N, C, OH, OW) view of a padded array seen by kernel offset (i, j)."""
    (oh, ow), (sh, sw) = out_hw, stride
    return a[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]


def _crop(a: Any, shape: tuple[int, ...], padding: Pair) -> Any:
    ph, pw = padding
    if ph == 0 and pw == 0:
        return a
    return a[:, :, ph:ph + shape[2], pw:pw + shape[3]]


def _im2col_numpy(x, kernel, stride, padding, out):
    xp = backend.array_module(x)
    n, c = x.shape[:2]
    (kh, kw), (sh, sw) = kernel, stride
    oh, ow = _out_shape(x.shape, kernel, stride, padding)
    xpad = xp.ascontiguousarray(_pad(x, padding, 0.0))
    s_n, s_c, s_h, s_w = xpad.strides
    view = xp.lib.stride_tricks.as_strided(
        xpad, (c, kh, kw, n, oh, ow), (s_c, s_h, s_w, s_n, s_h * sh, s_w * sw)
    )
    out.reshape(view.shape)[...] = view
    return out


def _col2im_numpy(cols, shape, kernel, stride, padding):
    xp = backend.array_module(cols)
    n, c, h, w = shape
    kh, kw = kernel
    out_hw = _out_shape(shape, kernel, stride, padding)
    blocks = cols.reshape(c, kh, kw, n, *out_hw)
    dpad = xp.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            _window(dpad, i, j, out_hw, stride)[...] += blocks[:, i, j].transpose(1, 0, 2, 3)
    return xp.ascontiguousarray(_crop(dpad, shape, padding))


def _first_inside(kernel, stride, padding, out_hw, xp):
    """Per output cell, the window offset of its first element that lies inside the input."""
    rows = xp.maximum(padding[0] - stride[0] * xp.arange(out_hw[0]), 0)
    cols = xp.maximum(padding[1] - stride[1] * xp.arange(out_hw[1]), 0)
    return (rows[:, None] * kernel[1] + cols[None, :]).astype(xp.int32)


def _max_pool_forward_numpy(x, kernel, stride, padding):
    xp = backend.array_module(x)
    out_hw = _out_shape(x.shape, kernel, stride, padding)
    xpad = _pad(x, padding, -np.inf)
    out = xp.full((*x.shape[:2], *out_hw), -np.inf, dtype=x.dtype)
    arg = xp.empty(out.shape, dtype=xp.int32)
    arg[...] = _first_inside(kernel, stride, padding, out_hw, xp)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            win = _window(xpad, i, j, out_hw, stride)
            better = (win > out) | xp.isnan(win)
            xp.copyto(out, win, where=better)
            arg[better] = i * kernel[1] + j
    return out, arg


def _max_pool_backward_numpy(grad, arg, shape, kernel, stride, padding):
    xp = backend.array_module(grad)
    out_hw = grad.shape[2:]
    dpad = xp.zeros((*shape[:2], shape[2] + 2 * padding[0], shape[3] + 2 * padding[1]), grad.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            hit = arg == i * kernel[1] + j
            _window(dpad, i, j, out_hw, stride)[...] += xp.where(hit, grad, 0)
    return xp.ascontiguousarray(_crop(dpad, shape, padding))


def _avg_divisor(shape, kernel, stride, padding, count_include_pad, xp, dtype):
    """What each window's sum is divided by: kh*kw, or only its cells inside the input."""
    if count_include_pad:
        return dtype.type(kernel[0] * kernel[1])
    counts = []
    for axis in (0, 1):
        n_out = output_size(shape[2 + axis], kernel[axis], stride[axis], padding[axis])
        start = stride[axis] * xp.arange(n_out) - padding[axis]
        end = xp.minimum(start + kernel[axis], shape[2 + axis])
        counts.append(end - xp.maximum(start, 0))
    return (counts[0][:, None] * counts[1][None, :]).astype(dtype)


def _avg_pool_forward_numpy(x, kernel, stride, padding, count_include_pad):
    xp = backend.array_module(x)
    out_hw = _out_shape(x.shape, kernel, stride, padding)
    xpad = _pad(x, padding, 0.0)
    out = xp.zeros((*x.shape[:2], *out_hw), dtype=x.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            out += _window(xpad, i, j, out_hw, stride)
    out /= _avg_divisor(x.shape, kernel, stride, padding, count_include_pad, xp, x.dtype)
    return out


def _avg_pool_backward_numpy(grad, shape, kernel, stride, padding, count_include_pad):
    xp = backend.array_module(grad)
    out_hw = grad.shape[2:]
    share = grad / _avg_divisor(shape, kernel, stride, padding, count_include_pad, xp, grad.dtype)
    dpad = xp.zeros((*shape[:2], shape[2] + 2 * padding[0], shape[3] + 2 * padding[1]), grad.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            _window(dpad, i, j, out_hw, stride)[...] += share
    return xp.ascontiguousarray(_crop(dpad, shape, padding))


# ---- Numba versions ---------------------------------------------------------------------

_jit = jit.kernel(cache=True, nogil=True)


@_jit
def _im2col_loops(x, kh, kw, sh, sw, ph, pw, oh_n, ow_n, cols):
    n_n, c_n, h_n, w_n = x.shape
    for c in range(c_n):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for n in range(n_n):
                    for oh in range(oh_n):
                        h = oh * sh - ph + i
                        base = (n * oh_n + oh) * ow_n
                        for ow in range(ow_n):
                            w = ow * sw - pw + j
                            inside = 0 <= h < h_n and 0 <= w < w_n
                            cols[row, base + ow] = x[n, c, h, w] if inside else 0.0


@_jit
def _col2im_loops(cols, kh, kw, sh, sw, ph, pw, oh_n, ow_n, dx):
    n_n, c_n, h_n, w_n = dx.shape
    for c in range(c_n):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for n in range(n_n):
                    for oh in range(oh_n):
                        h = oh * sh - ph + i
                        if h < 0 or h >= h_n:
                            continue
                        base = (n * oh_n + oh) * ow_n
                        for ow in range(ow_n):
                            w = ow * sw - pw + j
                            if 0 <= w < w_n:
                                dx[n, c, h, w] += cols[row, base + ow]


@_jit
def _max_pool_forward_loops(x, kh, kw, sh, sw, ph, pw, out, arg):
    n_n, c_n, h_n, w_n = x.shape
    oh_n, ow_n = out.shape[2], out.shape[3]
    for n in range(n_n):
        for c in range(c_n):
            for oh in range(oh_n):
                h0 = oh * sh - ph
                for ow in range(ow_n):
                    w0 = ow * sw - pw
                    best = -np.inf
                    where = max(-h0, 0) * kw + max(-w0, 0)
                    for i in range(max(-h0, 0), min(kh, h_n - h0)):
                        for j in range(max(-w0, 0), min(kw, w_n - w0)):
                            v = x[n, c, h0 + i, w0 + j]
                            if v > best or v != v:
                                best = v
                                where = i * kw + j
                    out[n, c, oh, ow] = best
                    arg[n, c, oh, ow] = where


@_jit
def _max_pool_backward_loops(grad, arg, kw, sh, sw, ph, pw, dx):
    n_n, c_n, oh_n, ow_n = grad.shape
    for n in range(n_n):
        for c in range(c_n):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    k = arg[n, c, oh, ow]
                    h = oh * sh - ph + k // kw
                    w = ow * sw - pw + k % kw
                    dx[n, c, h, w] += grad[n, c, oh, ow]


@_jit
def _avg_pool_forward_loops(x, kh, kw, sh, sw, ph, pw, divisor, out):
    n_n, c_n, h_n, w_n = x.shape
    oh_n, ow_n = out.shape[2], out.shape[3]
    for n in range(n_n):
        for c in range(c_n):
            for oh in range(oh_n):
                h0 = oh * sh - ph
                for ow in range(ow_n):
                    w0 = ow * sw - pw
                    total = 0.0
                    for i in range(max(-h0, 0), min(kh, h_n - h0)):
                        for j in range(max(-w0, 0), min(kw, w_n - w0)):
                            total += x[n, c, h0 + i, w0 + j]
                    out[n, c, oh, ow] = total / divisor[oh, ow]


@_jit
def _avg_pool_backward_loops(grad, kh, kw, sh, sw, ph, pw, divisor, dx):
    n_n, c_n, oh_n, ow_n = grad.shape
    h_n, w_n = dx.shape[2], dx.shape[3]
    for n in range(n_n):
        for c in range(c_n):
            for oh in range(oh_n):
                h0 = oh * sh - ph
                for ow in range(ow_n):
                    w0 = ow * sw - pw
                    share = grad[n, c, oh, ow] / divisor[oh, ow]
                    for i in range(max(-h0, 0), min(kh, h_n - h0)):
                        for j in range(max(-w0, 0), min(kw, w_n - w0)):
                            dx[n, c, h0 + i, w0 + j] += share


def _divisor_grid(shape, kernel, stride, padding, count_include_pad, dtype):
    out_hw = _out_shape(shape, kernel, stride, padding)
    div = _avg_divisor(shape, kernel, stride, padding, count_include_pad, np, dtype)
    return np.broadcast_to(np.asarray(div, dtype=dtype), out_hw)


# ---- the dispatchers --------------------------------------------------------------------

def im2col(x: Any, kernel: Pair, stride: Pair, padding: Pair, use_numba: bool | None = None,
           out: Any = None) -> Any:
    """Unfold every kernel-sized patch of x (N,C,H,W) into a column: (C*kh*kw, N*OH*OW).

    `out`, when given, is a contiguous array of that shape and x's dtype to write into.
    """
    oh, ow = _out_shape(x.shape, kernel, stride, padding)
    shape = (x.shape[1] * kernel[0] * kernel[1], x.shape[0] * oh * ow)
    if out is None:
        out = backend.array_module(x).empty(shape, dtype=x.dtype)
    elif out.shape != shape or out.dtype != x.dtype:
        raise ValueError(f"im2col output must be {shape} {x.dtype}, got {out.shape} {out.dtype}")
    if not jit.use(use_numba, x):
        return _im2col_numpy(x, kernel, stride, padding, out)
    _im2col_loops(np.ascontiguousarray(x), *kernel, *stride, *padding, oh, ow, out)
    return out


def col2im(cols: Any, shape: tuple[int, ...], kernel: Pair, stride: Pair, padding: Pair,
           use_numba: bool | None = None) -> Any:
    """The adjoint of im2col: add every column back onto the patch it came from."""
    if not jit.use(use_numba, cols):
        return _col2im_numpy(cols, shape, kernel, stride, padding)
    oh, ow = _out_shape(shape, kernel, stride, padding)
    dx = np.zeros(shape, dtype=cols.dtype)
    _col2im_loops(np.ascontiguousarray(cols), *kernel, *stride, *padding, oh, ow, dx)
    return dx


def max_pool_forward(x: Any, kernel: Pair, stride: Pair, padding: Pair,
                     use_numba: bool | None = None) -> tuple[Any, Any]:
    """Window maxima of x (N,C,H,W) and, per output, the arg-max offset inside its window."""
    if not jit.use(use_numba, x):
        return _max_pool_forward_numpy(x, kernel, stride, padding)
    shape = (*x.shape[:2], *_out_shape(x.shape, kernel, stride, padding))
    out, arg = np.empty(shape, dtype=x.dtype), np.empty(shape, dtype=np.int32)
    _max_pool_forward_loops(np.ascontiguousarray(x), *kernel, *stride, *padding, out, arg)
    return out, arg


def max_pool_backward(grad: Any, arg: Any, shape: tuple[int, ...], kernel: Pair, stride: Pair,
                      padding: Pair, use_numba: bool | None = None) -> Any:
    """Route each output gradient to the input element that won its window."""
    if not jit.use(use_numba, grad):
        return _max_pool_backward_numpy(grad, arg, shape, kernel, stride, padding)
    dx = np.zeros(shape, dtype=grad.dtype)
    _max_pool_backward_loops(np.ascontiguousarray(grad), arg, kernel[1], *stride, *padding, dx)
    return dx


def avg_pool_forward(x: Any, kernel: Pair, stride: Pair, padding: Pair,
                     count_include_pad: bool = True, use_numba: bool | None = None) -> Any:
    """Window means of x (N,C,H,W); padding counts in the divisor when count_include_pad."""
    if not jit.use(use_numba, x):
        return _avg_pool_forward_numpy(x, kernel, stride, padding, count_include_pad)
    out = np.empty((*x.shape[:2], *_out_shape(x.shape, kernel, stride, padding)), dtype=x.dtype)
    div = _divisor_grid(x.shape, kernel, stride, padding, count_include_pad, x.dtype)
    _avg_pool_forward_loops(np.ascontiguousarray(x), *kernel, *stride, *padding, div, out)
    return out


def avg_pool_backward(grad: Any, shape: tuple[int, ...], kernel: Pair, stride: Pair,
                      padding: Pair, count_include_pad: bool = True,
                      use_numba: bool | None = None) -> Any:
    """Spread each output gradient evenly over the input cells of its window."""
    if not jit.use(use_numba, grad):
        return _avg_pool_backward_numpy(grad, shape, kernel, stride, padding, count_include_pad)
    dx = np.zeros(shape, dtype=grad.dtype)
    div = _divisor_grid(shape, kernel, stride, padding, count_include_pad, grad.dtype)
    _avg_pool_backward_loops(np.ascontiguousarray(grad), *kernel, *stride, *padding, div, dx)
    return dx
