"""The elementwise part of one LSTM or GRU step, forward and backward.

A step is one GEMM followed by a dozen elementwise operations on (B, H) slices; done as
separate NumPy calls, each is a pass over memory with its own call overhead. Here:

- every transcendental is one vectorized NumPy `tanh` over a whole block, because the
  sigmoid gates arrive *halved* (sigmoid(x) = (1 + tanh(x/2)) / 2): the caller folds the
  1/2 into the rows of its weights once per sequence (`gate_scale`), so a single tanh call
  serves all gates;
- the arithmetic in between, and the whole backward cell, is one fused Numba loop when
  Numba is available (a scalar libm tanh inside Numba would be slower than NumPy's SIMD one,
  which is why the tanh calls stay outside; `rnn_loops` runs whole LSTM sequences in Numba
  with a vectorizable float32 tanh instead). The loops walk 1-D row slices and take their
  constants (`one`, `half`) as arguments of the arrays' dtype: that way LLVM vectorizes them
  (indexing the 2-D arrays directly, or a literal 1 promoting float32 to float64, kept them
  scalar and about three times slower).

The NumPy versions are the fallback (and what runs under CuPy); tests check that both agree.
Every function writes into the arrays it is given, so the time loops in `ops_rnn` allocate
nothing per step. Gate layouts are torch's: LSTM [i, f, g, o], GRU [r, z, n].
"""
from __future__ import annotations

from typing import Any

from . import backend, jit

_SIGMOID_GATES = {"lstm": (True, True, False, True), "gru": (True, True, False)}


def gate_scale(kind: str, hidden: int, xp: Any, dtype: Any) -> Any:
    """Per gate row: 1/2 for sigmoid gates, 1 for tanh ones (multiply weights and biases by it)."""
    halves = [0.5 if sig else 1.0 for sig in _SIGMOID_GATES[kind]]
    return xp.repeat(xp.asarray(halves, dtype=dtype), hidden)


def _gate(a: Any, k: int, hidden: int) -> Any:
    return a[:, k * hidden:(k + 1) * hidden]


def _halves_to_sigmoid(t: Any) -> None:
    """tanh(x/2) -> sigmoid(x), in place."""
    t += 1
    t *= 0.5


# ---- Elman RNN: plain NumPy is already one pass each way --------------------------------

def activate(pre: Any, nonlinearity: str) -> None:
    """Apply tanh or relu to `pre` in place."""
    xp = backend.array_module(pre)
    if nonlinearity == "tanh":
        xp.tanh(pre, out=pre)
    elif nonlinearity == "relu":
        xp.maximum(pre, 0, out=pre)
    else:
        raise ValueError(f"unknown nonlinearity {nonlinearity!r}: expected 'tanh' or 'relu'")


def activation_backward(dh: Any, h: Any, nonlinearity: str, out: Any) -> None:
    """out = dh * act'(pre), written in terms of the activation's output h."""
    xp = backend.array_module(dh)
    if nonlinearity == "tanh":
        xp.multiply(h, h, out=out)
        xp.subtract(1, out, out=out)
        out *= dh
    else:
        xp.multiply(dh, h > 0, out=out)


# ---- LSTM -------------------------------------------------------------------------------

def _lstm_combine_numpy(gates, c_prev, c_out):
    hidden = c_out.shape[1]
    i, f, g, o = (_gate(gates, k, hidden) for k in range(4))
    for block in (gates[:, :2 * hidden], o):
        _halves_to_sigmoid(block)
    backend.array_module(gates).multiply(f, c_prev, out=c_out)
    c_out += i * g


def _lstm_combine_loops(gates, c_prev, c_out, one, half):
    hidden = c_out.shape[1]
    for b in range(c_out.shape[0]):
        i, f = gates[b, :hidden], gates[b, hidden:2 * hidden]
        g, o = gates[b, 2 * hidden:3 * hidden], gates[b, 3 * hidden:]
        c, c_new = c_prev[b], c_out[b]
        for j in range(hidden):
            i[j] = half * (i[j] + one)
            f[j] = half * (f[j] + one)
            o[j] = half * (o[j] + one)
            c_new[j] = f[j] * c[j] + i[j] * g[j]


def lstm_forward(pre: Any, c_prev: Any, c_out: Any, tanh_c_out: Any, h_out: Any,
                 use_numba: bool | None = None) -> None:
    """Pre-activations (B,4H), sigmoid rows halved, become the gates i,f,g,o in place.

    Writes the new cell state c, tanh(c) (backward needs it) and the new hidden state h.
    """
    xp = backend.array_module(pre)
    xp.tanh(pre, out=pre)
    if jit.use(use_numba, pre):
        one = pre.dtype.type(1)
        _lstm_combine_jit(pre, c_prev, c_out, one, one / 2)
    else:
        _lstm_combine_numpy(pre, c_prev, c_out)
    xp.tanh(c_out, out=tanh_c_out)
    xp.multiply(_gate(pre, 3, c_out.shape[1]), tanh_c_out, out=h_out)


def _lstm_backward_numpy(dh, dc, gates, c_prev, tanh_c, d_pre):
    hidden = dh.shape[1]
    i, f, g, o = (_gate(gates, k, hidden) for k in range(4))
    di, df, dg, do = (_gate(d_pre, k, hidden) for k in range(4))
    dc += dh * o * (1 - tanh_c * tanh_c)
    do[...] = dh * tanh_c * o * (1 - o)
    di[...] = dc * g * i * (1 - i)
    df[...] = dc * c_prev * f * (1 - f)
    dg[...] = dc * i * (1 - g * g)
    dc *= f


def _lstm_backward_loops(dh, dc, gates, c_prev, tanh_c, d_pre, one):
    hidden = dh.shape[1]
    for b in range(dh.shape[0]):
        i, f = gates[b, :hidden], gates[b, hidden:2 * hidden]
        g, o = gates[b, 2 * hidden:3 * hidden], gates[b, 3 * hidden:]
        di, df = d_pre[b, :hidden], d_pre[b, hidden:2 * hidden]
        dg, do = d_pre[b, 2 * hidden:3 * hidden], d_pre[b, 3 * hidden:]
        grad_h, grad_c_next, c, tc = dh[b], dc[b], c_prev[b], tanh_c[b]
        for j in range(hidden):
            grad_c = grad_c_next[j] + grad_h[j] * o[j] * (one - tc[j] * tc[j])
            di[j] = grad_c * g[j] * i[j] * (one - i[j])
            df[j] = grad_c * c[j] * f[j] * (one - f[j])
            dg[j] = grad_c * i[j] * (one - g[j] * g[j])
            do[j] = grad_h[j] * tc[j] * o[j] * (one - o[j])
            grad_c_next[j] = grad_c * f[j]


def lstm_backward(dh: Any, dc: Any, gates: Any, c_prev: Any, tanh_c: Any, d_pre: Any,
                  use_numba: bool | None = None) -> None:
    """Gate pre-activation gradients into d_pre; dc goes from dL/dc_t to dL/dc_{t-1} in place."""
    if jit.use(use_numba, dh):
        _lstm_backward_jit(dh, dc, gates, c_prev, tanh_c, d_pre, dh.dtype.type(1))
    else:
        _lstm_backward_numpy(dh, dc, gates, c_prev, tanh_c, d_pre)


# ---- GRU --------------------------------------------------------------------------------

def _gru_gates_numpy(gates, rec, hn):
    hidden = hn.shape[1]
    _halves_to_sigmoid(gates[:, :2 * hidden])
    hn[...] = _gate(rec, 2, hidden)
    _gate(gates, 2, hidden)[...] += _gate(gates, 0, hidden) * hn


def _gru_gates_loops(gates, rec, hn, one, half):
    hidden = hn.shape[1]
    for b in range(hn.shape[0]):
        r, z = gates[b, :hidden], gates[b, hidden:2 * hidden]
        n = gates[b, 2 * hidden:]
        rec_n, hn_b = rec[b, 2 * hidden:], hn[b]
        for j in range(hidden):
            r[j] = half * (r[j] + one)
            z[j] = half * (z[j] + one)
            hn_b[j] = rec_n[j]
            n[j] += r[j] * rec_n[j]


def _gru_mix_loops(gates, h_prev, h_out):
    hidden = h_out.shape[1]
    for b in range(h_out.shape[0]):
        z, n = gates[b, hidden:2 * hidden], gates[b, 2 * hidden:]
        h, h_new = h_prev[b], h_out[b]
        for j in range(hidden):
            h_new[j] = n[j] + z[j] * (h[j] - n[j])


def gru_forward(gates: Any, rec: Any, h_prev: Any, hn: Any, h_out: Any,
                use_numba: bool | None = None) -> None:
    """Input projections (B,3H) become the gates r,z,n in place, given the recurrent ones.

    Both projections come with their r,z rows halved. Writes hn = W_hn h + b_hn, which
    backward needs on its own, and the new hidden state h.
    """
    xp = backend.array_module(gates)
    hidden = hn.shape[1]
    fused = jit.use(use_numba, gates)
    rz = gates[:, :2 * hidden]
    rz += rec[:, :2 * hidden]
    xp.tanh(rz, out=rz)
    if fused:
        one = gates.dtype.type(1)
        _gru_gates_jit(gates, rec, hn, one, one / 2)
    else:
        _gru_gates_numpy(gates, rec, hn)
    n = _gate(gates, 2, hidden)
    xp.tanh(n, out=n)
    if fused:
        _gru_mix_jit(gates, h_prev, h_out)
    else:
        xp.subtract(h_prev, n, out=h_out)
        h_out *= _gate(gates, 1, hidden)
        h_out += n


def _gru_backward_numpy(dh, h_prev, gates, hn, d_pre_x, d_pre_h, direct):
    hidden = dh.shape[1]
    r, z, n = (_gate(gates, k, hidden) for k in range(3))
    dn = dh * (1 - z) * (1 - n * n)
    dz = dh * (h_prev - n) * z * (1 - z)
    dr = dn * hn * r * (1 - r)
    for d_pre in (d_pre_x, d_pre_h):
        d_pre[:, :hidden], d_pre[:, hidden:2 * hidden] = dr, dz
    d_pre_x[:, 2 * hidden:] = dn
    d_pre_h[:, 2 * hidden:] = dn * r
    direct[...] = dh * z


def _gru_backward_loops(dh, h_prev, gates, hn, d_pre_x, d_pre_h, direct, one):
    hidden = dh.shape[1]
    for b in range(dh.shape[0]):
        r, z = gates[b, :hidden], gates[b, hidden:2 * hidden]
        n = gates[b, 2 * hidden:]
        dxr, dxz = d_pre_x[b, :hidden], d_pre_x[b, hidden:2 * hidden]
        dxn = d_pre_x[b, 2 * hidden:]
        dhr, dhz = d_pre_h[b, :hidden], d_pre_h[b, hidden:2 * hidden]
        dhn = d_pre_h[b, 2 * hidden:]
        grad_h, h, hn_b, skip = dh[b], h_prev[b], hn[b], direct[b]
        for j in range(hidden):
            dn = grad_h[j] * (one - z[j]) * (one - n[j] * n[j])
            dz = grad_h[j] * (h[j] - n[j]) * z[j] * (one - z[j])
            dr = dn * hn_b[j] * r[j] * (one - r[j])
            dxr[j] = dhr[j] = dr
            dxz[j] = dhz[j] = dz
            dxn[j] = dn
            dhn[j] = dn * r[j]
            skip[j] = grad_h[j] * z[j]


def gru_backward(dh: Any, h_prev: Any, gates: Any, hn: Any, d_pre_x: Any, d_pre_h: Any,
                 direct: Any, use_numba: bool | None = None) -> None:
    """Gradients of both projections, and into `direct` the part of dh_prev that skips W_hh."""
    if jit.use(use_numba, dh):
        _gru_backward_jit(dh, h_prev, gates, hn, d_pre_x, d_pre_h, direct, dh.dtype.type(1))
    else:
        _gru_backward_numpy(dh, h_prev, gates, hn, d_pre_x, d_pre_h, direct)


_jit = jit.kernel(cache=True, nogil=True)
_lstm_combine_jit = _jit(_lstm_combine_loops)
_lstm_backward_jit = _jit(_lstm_backward_loops)
_gru_gates_jit = _jit(_gru_gates_loops)
_gru_mix_jit = _jit(_gru_mix_loops)
_gru_backward_jit = _jit(_gru_backward_loops)
