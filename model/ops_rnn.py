"""Whole-sequence recurrent ops (Elman RNN, GRU, LSTM) with fused backward passes through time.

One op runs one layer over a whole time-major sequence, so the tape records one node instead
of a dozen per step. Inputs follow torch's layer parameters: x (T,B,I), h0 (B,H) (and c0 for
the LSTM), weight_ih (G*H,I), weight_hh (G*H,H), then optionally bias_ih and bias_hh (G*H,).
Gate orders are torch's: LSTM i,f,g,o; GRU r,z,n with n = tanh(W_in x + b_in + r*(W_hn h + b_hn)).

For the Elman RNN and the GRU the input projection x @ W_ih.T of all steps is one GEMM before
the time loop; each step then costs one (B,H)x(H,G*H) GEMM plus a fused elementwise cell
(`rnn_cells`; the LSTM and GRU compute with the rows of their sigmoid gates halved, see there).
The LSTM instead folds x_t and the bias into its per-step GEMM (see `LSTM`). Backward mirrors
that: one GEMM per step for dh, and the weight and input gradients of all steps in a few GEMMs
(BLAS). The LSTM's per-step GEMMs use `gemm`'s AVX-512 tile loop where it beats OpenBLAS.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import backend, gemm, workspace
from . import rnn_cells as cells
from . import rnn_loops as loops
from .registry import Context, Op, register, samples


def _unpack(arrays: tuple, n_states: int, gates: int) -> tuple:
    """Split op inputs into x, the initial states, the two weights and the biases (or None),
    checking every shape against x (T,B,I) and h0 (B,H): a weight of the wrong shape is an
    error here, not a wrong result or a failure deep in the backward pass."""
    if len(arrays) not in (n_states + 3, n_states + 5):
        raise ValueError(
            f"expected x, {n_states} initial state(s), weight_ih, weight_hh[, bias_ih, bias_hh]: "
            f"got {len(arrays)} arrays"
        )
    x, states = arrays[0], arrays[1:1 + n_states]
    w_ih, w_hh, *biases = arrays[1 + n_states:]
    b_ih, b_hh = biases if biases else (None, None)
    fits = x.ndim == 3 and states[0].ndim == 2 and states[0].shape[0] == x.shape[1]
    if fits:
        (_, batch, n_in), hidden = x.shape, states[0].shape[1]
        fits = (all(s.shape == (batch, hidden) for s in states)
                and w_ih.shape == (gates * hidden, n_in) and w_hh.shape == (gates * hidden, hidden)
                and all(b.shape == (gates * hidden,) for b in biases))
    if not fits:
        raise ValueError(
            f"shapes do not fit: x {x.shape} (T,B,I), h0 {states[0].shape} (B,H), "
            f"weight_ih {w_ih.shape} ({gates}H,I), weight_hh {w_hh.shape} ({gates}H,H), "
            f"biases {[b.shape for b in biases]} ({gates}H,)"
        )
    return x, states, w_ih, w_hh, b_ih, b_hh


def _project_inputs(x: Any, w_ih: Any, bias: Any) -> Any:
    """x @ W_ih.T (+ bias) for every time step at once: (T, B, G*H), in a workspace array."""
    xp = backend.array_module(x)
    steps, batch, _ = x.shape
    proj = workspace.take((steps * batch, w_ih.shape[0]), xp.result_type(x, w_ih), x)
    xp.matmul(x.reshape(steps * batch, -1), w_ih.T, out=proj)
    if bias is not None:
        proj += bias
    return proj.reshape(steps, batch, -1)


def _release(*arrays: Any) -> None:
    """Hand an op's private arrays back to the workspace once backward is done with them."""
    for array in arrays:
        workspace.give(array)


def _parameter_grads(ctx: Context, d_pre_x: Any, d_pre_h: Any, n_states: int) -> tuple:
    """Gradients of x and of the weights from the pre-activation gradients of all steps.

    d_pre_x is the gradient of the input projection (x @ W_ih.T + b_ih), d_pre_h that of the
    recurrent one (h @ W_hh.T + b_hh); they are the same array except in the GRU.
    """
    need = ctx.needs_input_grad
    x, w_ih = ctx.x, ctx.w_ih
    steps, batch, _ = x.shape
    flat_x = d_pre_x.reshape(steps * batch, -1)
    flat_h = d_pre_h.reshape(steps * batch, -1)
    dx = (flat_x @ w_ih).reshape(x.shape) if need[0] else None
    dw_ih = flat_x.T @ x.reshape(steps * batch, -1) if need[1 + n_states] else None
    dw_hh = flat_h.T @ ctx.h_prev.reshape(steps * batch, -1) if need[2 + n_states] else None
    grads = (dx, *ctx.d_states, dw_ih, dw_hh)
    if ctx.has_bias:
        db_ih = flat_x.sum(axis=0) if need[3 + n_states] else None
        if not need[4 + n_states]:
            db_hh = None
        elif db_ih is not None and d_pre_h is d_pre_x:  # LSTM and Elman: both biases add alike
            db_hh = db_ih.copy()
        else:
            db_hh = flat_h.sum(axis=0)
        grads += (db_ih, db_hh)
    return grads


def _rnn_samples(rng, n_states: int, gates: int) -> Iterable[tuple[tuple, dict]]:
    """Small float64 cases of three steps, of one, and of one element everywhere, each with and
    without biases."""
    def w(*shape):
        return rng.uniform(-0.6, 0.6, shape)

    for steps, batch, n_in, hidden in ((3, 2, 3, 4), (1, 3, 2, 2), (1, 1, 1, 1)):
        x = rng.standard_normal((steps, batch, n_in))
        states = tuple(rng.standard_normal((batch, hidden)) * 0.5 for _ in range(n_states))
        weights = (w(gates * hidden, n_in), w(gates * hidden, hidden))
        yield (x, *states, *weights, w(gates * hidden), w(gates * hidden)), {}
        yield (x, *states, *weights), {}


class _ElmanRNN(Op):
    """h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh), act being tanh or relu."""

    nonlinearity = ""

    @classmethod
    def forward(cls, ctx: Context, *arrays: Any) -> Any:
        x, (h0,), w_ih, w_hh, b_ih, b_hh = _unpack(arrays, 1, 1)
        xp = backend.array_module(x)
        bias = None if b_ih is None else b_ih + b_hh
        proj = _project_inputs(x, w_ih, bias)
        hs = xp.empty((x.shape[0] + 1, *h0.shape), dtype=x.dtype)
        hs[0] = h0
        w_hh_t = xp.ascontiguousarray(w_hh.T)  # (H, H): the GEMM needs no transpose
        for t in range(x.shape[0]):
            pre = xp.matmul(hs[t], w_hh_t, out=hs[t + 1])
            pre += proj[t]
            cells.activate(pre, cls.nonlinearity)
        workspace.give(proj)
        ctx.x, ctx.w_ih, ctx.w_hh, ctx.hs = x, w_ih, w_hh, hs
        ctx.h_prev, ctx.has_bias = hs[:-1], b_ih is not None
        return hs[1:]

    @classmethod
    def backward(cls, ctx: Context, grad: Any) -> tuple:
        xp = backend.array_module(grad)
        hs, w_hh = ctx.hs, ctx.w_hh
        d_pre = workspace.take(grad.shape, grad.dtype, grad)
        dh = xp.zeros_like(hs[0])
        for t in range(grad.shape[0] - 1, -1, -1):
            dh += grad[t]
            cells.activation_backward(dh, hs[t + 1], cls.nonlinearity, out=d_pre[t])
            xp.matmul(d_pre[t], w_hh, out=dh)
        ctx.d_states = (dh,)
        grads = _parameter_grads(ctx, d_pre, d_pre, 1)
        workspace.give(d_pre)
        return grads

    @samples
    def samples(rng) -> Iterable[tuple[tuple, dict]]:
        return _rnn_samples(rng, 1, 1)


@register
class RNNTanh(_ElmanRNN):
    name = "rnn_tanh"
    nonlinearity = "tanh"


@register
class RNNRelu(_ElmanRNN):
    name = "rnn_relu"
    nonlinearity = "relu"


@register
class GRU(Op):
    """Gated recurrent unit over a sequence; returns the hidden states of all steps (T,B,H)."""

    name = "gru"

    @staticmethod
    def forward(ctx: Context, *arrays: Any) -> Any:
        x, (h0,), w_ih, w_hh, b_ih, b_hh = _unpack(arrays, 1, 3)
        xp = backend.array_module(x)
        steps, hidden = x.shape[0], h0.shape[-1]
        scale = cells.gate_scale("gru", hidden, xp, x.dtype)
        w_hh_halved_t = xp.ascontiguousarray(w_hh.T) * scale  # (H, 3H): the GEMM needs no transpose
        b_hh_halved = None if b_hh is None else b_hh * scale
        # the input projections, turned into the gates r, z, n step by step
        gates = _project_inputs(x, w_ih * scale[:, None], None if b_ih is None else b_ih * scale)
        hs = xp.empty((steps + 1, *h0.shape), dtype=x.dtype)
        hs[0] = h0
        hn = workspace.take(hs[1:].shape, x.dtype, x)  # W_hn h + b_hn, which backward needs apart
        rec = xp.empty_like(gates[0])
        for t in range(steps):
            xp.matmul(hs[t], w_hh_halved_t, out=rec)
            if b_hh_halved is not None:
                rec += b_hh_halved
            cells.gru_forward(gates[t], rec, hs[t], hn[t], hs[t + 1])
        ctx.x, ctx.w_ih, ctx.w_hh, ctx.hs, ctx.gates, ctx.hn = x, w_ih, w_hh, hs, gates, hn
        ctx.h_prev, ctx.has_bias = hs[:-1], b_ih is not None
        return hs[1:]

    @staticmethod
    def backward(ctx: Context, grad: Any) -> tuple:
        xp = backend.array_module(grad)
        hs, w_hh = ctx.hs, ctx.w_hh
        d_pre_x = workspace.take(ctx.gates.shape, grad.dtype, grad)
        d_pre_h = workspace.take(ctx.gates.shape, grad.dtype, grad)
        dh = xp.zeros_like(hs[0])
        direct = xp.empty_like(dh)  # the part of dh_{t-1} that skips W_hh: dh_t * z_t
        for t in range(grad.shape[0] - 1, -1, -1):
            dh += grad[t]
            cells.gru_backward(dh, hs[t], ctx.gates[t], ctx.hn[t], d_pre_x[t], d_pre_h[t], direct)
            xp.matmul(d_pre_h[t], w_hh, out=dh)
            dh += direct
        ctx.d_states = (dh,)
        grads = _parameter_grads(ctx, d_pre_x, d_pre_h, 1)
        _release(ctx.gates, ctx.hn, d_pre_x, d_pre_h)
        return grads

    @samples
    def samples(rng) -> Iterable[tuple[tuple, dict]]:
        return _rnn_samples(rng, 1, 3)


@register
class LSTM(Op):
    """Long short-term memory over a sequence.

    An op returns one array, so this one returns (T+1, B, H): rows [:T] are the hidden states
    of all steps and row T is the final cell state c_T.

    Each step is a single GEMM [h_t | x_t | 1] @ [W_hh | W_ih | b]^T: the input projection and
    the bias ride along with the recurrent product instead of costing a GEMM over the sequence
    and two extra passes per step, and in backward one GEMM against the stacked rows gives the
    gradients of both weights and (as one more column) of the biases. The stacked weight stays
    in torch's (4H, .) row layout, [h | x] zero-padded to a multiple of 16 columns where the
    small-GEMM loop runs (`gemm`), which then adds the bias column instead of multiplying it.
    The time loops themselves are in `rnn_loops` (one compiled call each, where that pays).
    """

    name = "lstm"

    @staticmethod
    def forward(ctx: Context, *arrays: Any) -> Any:
        x, (h0, c0), w_ih, w_hh, b_ih, b_hh = _unpack(arrays, 2, 4)
        xp = backend.array_module(x)
        (steps, batch, n_in), hidden = x.shape, h0.shape[-1]
        k = gemm.padded(hidden + n_in)  # the column of ones (bias), zero padding before it
        width = gemm.padded(k + 1)
        stacked = xp.zeros((4 * hidden, width), dtype=x.dtype)  # [W_hh | W_ih | 0 | b | 0]
        stacked[:, :hidden], stacked[:, hidden:hidden + n_in] = w_hh, w_ih
        if b_ih is not None:
            xp.add(b_ih, b_hh, out=stacked[:, k])
        stacked *= cells.gate_scale("lstm", hidden, xp, x.dtype)[:, None]
        rows = workspace.take((steps + 1, batch, width), x.dtype, x)  # [h_t | x_t | 0 | 1 | 0]
        rows[0, :, :hidden] = h0
        rows[:steps, :, hidden:hidden + n_in] = x
        rows[:, :, hidden + n_in:] = 0
        rows[:, :, k] = 1
        gates = workspace.take((steps, batch, 4 * hidden), x.dtype, x)
        cs = workspace.take((steps + 1, batch, hidden), x.dtype, x)  # c_0..c_T
        cs[0] = c0
        tanh_c = workspace.take((steps, batch, hidden), x.dtype, x)
        loops.lstm_forward_sequence(rows, stacked, k, gates, cs, tanh_c)
        out = xp.empty((steps + 1, batch, hidden), dtype=x.dtype)
        out[:steps], out[steps] = rows[1:, :, :hidden], cs[steps]
        ctx.x, ctx.w_ih, ctx.w_hh, ctx.rows, ctx.k = x, w_ih, w_hh, rows, k
        ctx.gates, ctx.cs, ctx.tanh_c, ctx.has_bias = gates, cs, tanh_c, b_ih is not None
        return out

    @staticmethod
    def backward(ctx: Context, grad: Any) -> tuple:
        xp = backend.array_module(grad)
        steps, k, batch = grad.shape[0] - 1, ctx.k, grad.shape[1]
        hidden, n_in = ctx.w_hh.shape[1], ctx.x.shape[2]
        d_pre = workspace.take(ctx.gates.shape, grad.dtype, grad)
        dh = xp.zeros_like(grad[0])
        dc = grad[steps].copy()
        loops.lstm_backward_sequence(grad, ctx.gates, ctx.cs, ctx.tanh_c, ctx.w_hh, d_pre, dh, dc)
        need = ctx.needs_input_grad
        flat = d_pre.reshape(steps * batch, -1)
        dx = (flat @ ctx.w_ih).reshape(ctx.x.shape) if need[0] else None
        grads: tuple = (dx, dh, dc)
        if any(need[3:]):  # one GEMM for [dW_hh | dW_ih | 0 | db]
            d_stacked = flat.T @ ctx.rows[:steps].reshape(steps * batch, -1)[:, :k + 1]
            grads += (xp.ascontiguousarray(d_stacked[:, hidden:hidden + n_in]) if need[3] else None,
                      xp.ascontiguousarray(d_stacked[:, :hidden]) if need[4] else None)
            if ctx.has_bias:
                grads += tuple(d_stacked[:, k].copy() if n else None for n in need[5:7])
        else:
            grads += (None,) * (len(need) - 3)
        _release(ctx.gates, ctx.cs, ctx.tanh_c, ctx.rows, d_pre)
        return grads

    @samples
    def samples(rng) -> Iterable[tuple[tuple, dict]]:
        return _rnn_samples(rng, 2, 4)
