"""The LSTM's whole time loops, forward and backward, each one compiled call where it pays.

Per step the LSTM does one small GEMM and a fused elementwise cell. Driven from Python that
is five or six NumPy/Numba calls a step, microseconds each, next to a GEMM of ~30 us. Where
the small-GEMM loop of `gemm` pays (Numba with 512-bit vectors, `gemm.fast()`), the whole
loop runs inside Numba instead: GEMM, cell and the hand-over of h_t to the next step's row.

Inside Numba the transcendental cannot be NumPy's vectorized tanh, and libm's scalar tanh
would cost more than the GEMM; for float32 the loop uses a rational approximation (Eigen's
`ptanh_float`: max error 3e-7 absolute, exact at 0, saturating to +-1, NaN in NaN out) that
LLVM vectorizes. float64 keeps libm's tanh, so gradient checks lose nothing.

Everywhere else (no Numba, no fast small GEMM, CuPy) the same functions run the step loop in
Python over `xp.matmul` and the cells of `rnn_cells`; tests check that both ways agree.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import backend, gemm, jit
from . import rnn_cells as cells


def _tanh(x):
    """tanh inside the compiled loops (Numba specializes it per dtype, see `_tanh_overload`)."""
    return math.tanh(x)


def _tanh_float32(x):
    clamp = np.float32(7.99881172180175781)  # with FMA, p/q reaches exactly 1 here
    y = clamp if x > clamp else x
    y = -clamp if y < -clamp else y
    y2 = y * y
    p = np.float32(-2.76076847742355e-16)
    p = p * y2 + np.float32(2.00018790482477e-13)
    p = p * y2 + np.float32(-8.60467152213735e-11)
    p = p * y2 + np.float32(5.12229709037114e-08)
    p = p * y2 + np.float32(1.48572235717979e-05)
    p = p * y2 + np.float32(6.37261928875436e-04)
    p = p * y2 + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * y2 + np.float32(1.18534705686654e-04)
    q = q * y2 + np.float32(2.26843463243900e-03)
    q = q * y2 + np.float32(4.89352518554385e-03)
    return p * y / q


def _lstm_forward_steps(rows, stacked, k, bias, gates, cs, tanh_c, one, half):
    hidden = cs.shape[2]
    for t in range(gates.shape[0]):
        _dot_tiles_jit(rows[t], stacked, k, bias, gates[t])
        pre, c_prev, c_new, tc, h = gates[t], cs[t], cs[t + 1], tanh_c[t], rows[t + 1]
        for b in range(pre.shape[0]):
            g_b = pre[b]
            for j in range(g_b.shape[0]):
                g_b[j] = _tanh(g_b[j])
            i, f = g_b[:hidden], g_b[hidden:2 * hidden]
            g, o = g_b[2 * hidden:3 * hidden], g_b[3 * hidden:]
            c_in, c_out, tc_b, h_b = c_prev[b], c_new[b], tc[b], h[b]
            for j in range(hidden):
                i_j, f_j, o_j = half * (i[j] + one), half * (f[j] + one), half * (o[j] + one)
                i[j], f[j], o[j] = i_j, f_j, o_j
                c = f_j * c_in[j] + i_j * g[j]
                c_out[j] = c
                tanh_cj = _tanh(c)
                tc_b[j] = tanh_cj
                h_b[j] = o_j * tanh_cj


def lstm_forward_sequence(rows: Any, stacked: Any, k: int, gates: Any, cs: Any, tanh_c: Any,
                          use_numba: bool | None = None) -> None:
    """Run the LSTM over all steps: each step's pre-activations are rows[t] @ stacked.T.

    rows (T+1, B, W) holds [h_t | x_t | 0 | 1 | 0] (the 1 in column k) with h_0 filled in;
    h_{t+1} is written into rows[t+1, :, :H]. stacked (4H, W) is [W_hh | W_ih | 0 | b | 0]
    with the sigmoid rows halved (`rnn_cells.gate_scale`); the compiled loop contracts the
    first k columns and adds column k as a bias. Writes the gates i,f,g,o (T, B, 4H),
    c_1..c_T into cs[1:] (cs[0] holds c_0) and tanh(c_t) (T, B, H).
    """
    if jit.use(use_numba, rows, pays=gemm.fast()):
        one = rows.dtype.type(1)
        bias = np.ascontiguousarray(stacked[:, k])
        _lstm_forward_steps_jit(rows, stacked, k, bias, gates, cs, tanh_c, one, one / 2)
        return
    xp, hidden = backend.array_module(rows), cs.shape[2]
    for t in range(gates.shape[0]):
        xp.matmul(rows[t], stacked.T, out=gates[t])
        cells.lstm_forward(gates[t], cs[t], cs[t + 1], tanh_c[t], rows[t + 1, :, :hidden],
                           use_numba=use_numba)


def _lstm_backward_steps(grad, gates, cs, tanh_c, w_hh, d_pre, dh, dc, one):
    w_hh_t = np.empty((w_hh.shape[1], w_hh.shape[0]), w_hh.dtype)
    _transpose_tiles_jit(w_hh, w_hh_t)
    no_bias = w_hh_t[0, :0]
    for t in range(gates.shape[0] - 1, -1, -1):
        grad_t = grad[t]
        for b in range(dh.shape[0]):
            dh_b, g_b = dh[b], grad_t[b]
            for j in range(dh.shape[1]):
                dh_b[j] += g_b[j]
        _lstm_backward_jit(dh, dc, gates[t], cs[t], tanh_c[t], d_pre[t], one)
        _dot_tiles_jit(d_pre[t], w_hh_t, w_hh_t.shape[1], no_bias, dh)


def lstm_backward_sequence(grad: Any, gates: Any, cs: Any, tanh_c: Any, w_hh: Any,
                           d_pre: Any, dh: Any, dc: Any, use_numba: bool | None = None) -> None:
    """The backward time loop: the gate pre-activation gradients of every step into d_pre.

    grad (T, B, H) is dL/dh_t of each step; dh and dc come in as the gradients flowing into
    the last step and leave as those of h_0 and c_0. w_hh is the (4H, H) recurrent weight.
    """
    if jit.use(use_numba, dh, pays=gemm.fast()):
        grad, w_hh = np.ascontiguousarray(grad), np.ascontiguousarray(w_hh)  # one compiled layout
        _lstm_backward_steps_jit(grad, gates, cs, tanh_c, w_hh, d_pre, dh, dc, dh.dtype.type(1))
        return
    xp = backend.array_module(dh)
    for t in range(gates.shape[0] - 1, -1, -1):
        dh += grad[t]
        cells.lstm_backward(dh, dc, gates[t], cs[t], tanh_c[t], d_pre[t], use_numba=use_numba)
        xp.matmul(d_pre[t], w_hh, out=dh)


def _register_tanh(numba) -> None:
    """Inside the compiled loops `_tanh` is the rational approximation for float32."""
    from numba.extending import overload

    @overload(_tanh, jit_options={"error_model": "numpy", "fastmath": {"contract"}})
    def _tanh_overload(x):
        if x == numba.types.float32:
            return _tanh_float32
        return lambda x: math.tanh(x)


jit.on_load(_register_tanh)
_jit = jit.kernel(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
_dot_tiles_jit, _transpose_tiles_jit = gemm._dot_tiles_jit, gemm._transpose_tiles_jit
_lstm_backward_jit = cells._lstm_backward_jit
_lstm_forward_steps_jit = _jit(_lstm_forward_steps)
_lstm_backward_steps_jit = _jit(_lstm_backward_steps)
