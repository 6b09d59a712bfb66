"""The Numba kernels and their NumPy fallbacks compute the same thing, and both are right.

Convolution/pooling kernels (`model.kernels`) and the fused recurrent cells
(`model.rnn_cells`) are each run both ways on the same inputs over a spread of shapes,
strides and paddings.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from downpour.model import Tensor, jit, kernels, nn, optim, rnn_cells, workspace

needs_numba = pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="numba missing or DOWNPOUR_NO_NUMBA set")

# (input shape, kernel, stride, padding)
GEOMETRIES = [
    ((2, 3, 7, 8), (3, 2), (2, 1), (1, 0)),
    ((4, 2, 9, 9), (3, 3), (1, 1), (1, 1)),
    ((3, 1, 6, 5), (2, 2), (2, 2), (0, 1)),
    ((1, 4, 5, 5), (5, 5), (1, 1), (2, 2)),
    ((2, 2, 11, 6), (3, 1), (3, 2), (1, 0)),
    ((5, 1, 4, 4), (1, 1), (1, 1), (0, 0)),
]
DTYPES = [np.float32, np.float64]


def _close(dtype):
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@needs_numba
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_im2col_and_col2im_agree_between_numba_and_numpy(geometry, dtype, rng):
    shape, kernel, stride, padding = geometry
    x = rng.standard_normal(shape).astype(dtype)
    cols = kernels.im2col(x, kernel, stride, padding, use_numba=False)
    np.testing.assert_array_equal(kernels.im2col(x, kernel, stride, padding, use_numba=True), cols)
    grad_cols = rng.standard_normal(cols.shape).astype(dtype)
    np.testing.assert_allclose(
        kernels.col2im(grad_cols, shape, kernel, stride, padding, use_numba=True),
        kernels.col2im(grad_cols, shape, kernel, stride, padding, use_numba=False),
        **_close(dtype),
    )


@needs_numba
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_agrees_between_numba_and_numpy_including_the_arg_max(geometry, dtype, rng):
    shape, kernel, stride, padding = geometry
    padding = (min(padding[0], kernel[0] // 2), min(padding[1], kernel[1] // 2))
    x = rng.standard_normal(shape).astype(dtype)
    out, arg = kernels.max_pool_forward(x, kernel, stride, padding, use_numba=False)
    out_nb, arg_nb = kernels.max_pool_forward(x, kernel, stride, padding, use_numba=True)
    np.testing.assert_array_equal(out_nb, out)
    np.testing.assert_array_equal(arg_nb, arg)
    grad = rng.standard_normal(out.shape).astype(dtype)
    np.testing.assert_allclose(
        kernels.max_pool_backward(grad, arg, shape, kernel, stride, padding, use_numba=True),
        kernels.max_pool_backward(grad, arg, shape, kernel, stride, padding, use_numba=False),
        **_close(dtype),
    )


@needs_numba
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool_agrees_between_numba_and_numpy(geometry, count_include_pad, dtype, rng):
    shape, kernel, stride, padding = geometry
    padding = (min(padding[0], kernel[0] // 2), min(padding[1], kernel[1] // 2))
    x = rng.standard_normal(shape).astype(dtype)
    args = (kernel, stride, padding, count_include_pad)
    out = kernels.avg_pool_forward(x, *args, use_numba=False)
    np.testing.assert_allclose(kernels.avg_pool_forward(x, *args, use_numba=True), out, **_close(dtype))
    grad = rng.standard_normal(out.shape).astype(dtype)
    np.testing.assert_allclose(
        kernels.avg_pool_backward(grad, shape, *args, use_numba=True),
        kernels.avg_pool_backward(grad, shape, *args, use_numba=False),
        **_close(dtype),
    )


@pytest.mark.parametrize("use_numba", [False, pytest.param(True, marks=needs_numba)])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_col2im_is_the_adjoint_of_im2col(geometry, use_numba, rng):
    shape, kernel, stride, padding = geometry
    x = rng.standard_normal(shape)
    cols = kernels.im2col(x, kernel, stride, padding, use_numba=use_numba)
    c = rng.standard_normal(cols.shape)
    back = kernels.col2im(c, shape, kernel, stride, padding, use_numba=use_numba)
    assert np.isclose(np.sum(cols * c), np.sum(x * back), rtol=1e-12)


@pytest.mark.parametrize("use_numba", [False, pytest.param(True, marks=needs_numba)])
def test_im2col_rows_are_patches_in_torch_weight_order(use_numba):
    x = np.arange(2 * 2 * 3 * 3, dtype=np.float64).reshape(2, 2, 3, 3)
    cols = kernels.im2col(x, (2, 2), (1, 1), (0, 0), use_numba=use_numba)
    assert cols.shape == (2 * 2 * 2, 2 * 2 * 2)
    # column (n=1, oh=0, ow=1) holds the patch x[1, :, 0:2, 1:3], flattened as (c, i, j)
    np.testing.assert_array_equal(cols[:, 1 * 4 + 0 * 2 + 1], x[1, :, 0:2, 1:3].reshape(-1))


@pytest.mark.parametrize("use_numba", [False, pytest.param(True, marks=needs_numba)])
def test_max_pool_ties_send_the_gradient_to_the_first_element_inside_the_input(use_numba):
    x = np.zeros((1, 1, 4, 4))
    kernel, stride, padding = (3, 3), (2, 2), (1, 1)
    out, arg = kernels.max_pool_forward(x, kernel, stride, padding, use_numba=use_numba)
    np.testing.assert_array_equal(out, 0.0)
    dx = kernels.max_pool_backward(np.ones_like(out), arg, x.shape, kernel, stride, padding,
                                   use_numba=use_numba)
    expected = np.zeros((4, 4))
    expected[0, 0] = expected[0, 1] = expected[1, 0] = expected[1, 1] = 1.0  # first cell inside each window
    np.testing.assert_array_equal(dx[0, 0], expected)


@pytest.mark.parametrize("use_numba", [False, pytest.param(True, marks=needs_numba)])
def test_avg_pool_divisor_counts_padding_only_when_asked(use_numba):
    x = np.ones((1, 1, 2, 2))
    with_pad = kernels.avg_pool_forward(x, (2, 2), (1, 1), (1, 1), True, use_numba=use_numba)
    without = kernels.avg_pool_forward(x, (2, 2), (1, 1), (1, 1), False, use_numba=use_numba)
    assert with_pad[0, 0, 0, 0] == 0.25 and with_pad[0, 0, 1, 1] == 1.0
    np.testing.assert_array_equal(without, 1.0)


def test_a_kernel_that_does_not_fit_the_input_is_rejected():
    with pytest.raises(ValueError, match="does not fit"):
        kernels.im2col(np.zeros((1, 1, 2, 2)), (3, 3), (1, 1), (0, 0))


def test_numba_can_be_switched_off_by_environment_variable():
    env = dict(os.environ, DOWNPOUR_NO_NUMBA="1")
    probe = ("import numpy as np; from downpour.model import jit, kernels, optim; "
             "print(kernels.HAVE_NUMBA, jit.use(None, np.zeros(1)), optim.fused.use_kernel(1 << 20))")
    result = subprocess.run([sys.executable, "-P", "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False", "False"]


def test_one_rule_chooses_every_kernel_numba_only_where_available_on_numpy_and_where_it_pays(monkeypatch):
    assert jit.use(False, np.zeros(1)) is False                      # asked for: as asked
    assert jit.use(None, np.zeros(1), pays=False) is False           # the caller's measure says no
    assert jit.use(None, np.zeros(1)) is jit.AVAILABLE
    assert jit.use(None) is jit.AVAILABLE                            # no array to look at
    monkeypatch.setattr(jit, "AVAILABLE", False)
    assert jit.use(None, np.zeros(1)) is False
    with pytest.raises(RuntimeError, match="Numba kernels asked for, but numba is not available"):
        jit.use(True, np.zeros(1))
    with pytest.raises(RuntimeError, match="numba is not available"):
        optim.set_fused(True)                                        # fails when forced, not at the first update
    assert not kernels.im2col(np.zeros((1, 1, 3, 3)), (2, 2), (1, 1), (0, 0)).any()   # the NumPy version


# ---- recurrent cells ----------------------------------------------------------------------

def _lstm_inputs(rng, dtype, batch=3, hidden=5):
    pre = rng.standard_normal((batch, 4 * hidden)).astype(dtype)
    return pre, rng.standard_normal((batch, hidden)).astype(dtype)


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_cell_agrees_between_numba_and_numpy_forward_and_backward(dtype, rng):
    batch, hidden = 3, 5
    pre, c_prev = _lstm_inputs(rng, dtype, batch, hidden)
    results = {}
    for use_numba in (False, True):
        gates = pre.copy()
        c, tanh_c, h = (np.empty((batch, hidden), dtype) for _ in range(3))
        rnn_cells.lstm_forward(gates, c_prev, c, tanh_c, h, use_numba=use_numba)
        dh = np.linspace(-1, 1, batch * hidden, dtype=dtype).reshape(batch, hidden)
        dc = np.cos(dh)
        d_pre = np.empty_like(gates)
        rnn_cells.lstm_backward(dh, dc, gates, c_prev, tanh_c, d_pre, use_numba=use_numba)
        results[use_numba] = (gates, c, tanh_c, h, dc, d_pre)
    for numpy_array, numba_array in zip(results[False], results[True]):
        np.testing.assert_allclose(numba_array, numpy_array, **_close(dtype))


def test_lstm_cell_computes_torch_gate_formulas(rng):
    batch, hidden = 2, 3
    pre, c_prev = _lstm_inputs(rng, np.float64, batch, hidden)
    true_pre = pre / rnn_cells.gate_scale("lstm", hidden, np, np.float64)  # the caller halves sigmoid rows
    gates = pre.copy()
    c, tanh_c, h = (np.empty((batch, hidden)) for _ in range(3))
    rnn_cells.lstm_forward(gates, c_prev, c, tanh_c, h)
    i, f, g, o = np.split(true_pre, 4, axis=1)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    expected_c = sig(f) * c_prev + sig(i) * np.tanh(g)
    np.testing.assert_allclose(c, expected_c, rtol=1e-12)
    np.testing.assert_allclose(h, sig(o) * np.tanh(expected_c), rtol=1e-12)


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
def test_gru_cell_agrees_between_numba_and_numpy_forward_and_backward(dtype, rng):
    batch, hidden = 4, 3
    proj = rng.standard_normal((batch, 3 * hidden)).astype(dtype)
    rec = rng.standard_normal((batch, 3 * hidden)).astype(dtype)
    h_prev = rng.standard_normal((batch, hidden)).astype(dtype)
    dh = rng.standard_normal((batch, hidden)).astype(dtype)
    results = {}
    for use_numba in (False, True):
        gates = proj.copy()
        hn, h = np.empty((batch, hidden), dtype), np.empty((batch, hidden), dtype)
        rnn_cells.gru_forward(gates, rec, h_prev, hn, h, use_numba=use_numba)
        d_x, d_h, direct = np.empty_like(gates), np.empty_like(gates), np.empty_like(h)
        rnn_cells.gru_backward(dh, h_prev, gates, hn, d_x, d_h, direct, use_numba=use_numba)
        results[use_numba] = (gates, hn, h, d_x, d_h, direct)
    for numpy_array, numba_array in zip(results[False], results[True]):
        np.testing.assert_allclose(numba_array, numpy_array, **_close(dtype))


# ---- scratch memory -------------------------------------------------------------------------

def test_workspace_reuses_returned_memory_for_any_request_of_the_same_size():
    first = workspace.take((6, 4), np.float32)
    workspace.give(first)
    again = workspace.take((4, 3, 2), np.float32)
    assert np.shares_memory(first, again) and again.shape == (4, 3, 2)
    assert not np.shares_memory(again, workspace.take((4, 3, 2), np.float32))


def test_workspace_refuses_a_strided_view():
    with pytest.raises(ValueError, match="contiguous"):
        workspace.give(np.zeros((4, 4))[:, ::2])


@pytest.mark.parametrize("layer", [lambda: nn.Conv2d(2, 3, 3, padding=1), lambda: nn.LSTM(3, 4), lambda: nn.GRU(3, 4)])
def test_graphs_alive_at_the_same_time_keep_their_own_scratch_memory(layer, rng):
    net = layer()
    shape = (2, 2, 5, 5) if isinstance(net, nn.Conv2d) else (4, 2, 3)
    inputs = [rng.standard_normal(shape).astype(np.float32) for _ in range(2)]

    def output(result):
        return result[0] if isinstance(result, tuple) else result

    expected = []
    for x in inputs:  # one graph at a time
        net.zero_grad()
        output(net(Tensor(x))).sum().backward()
        expected.append([p.grad.copy() for p in net.parameters()])
    net.zero_grad()
    first, second = (output(net(Tensor(x))).sum() for x in inputs)  # both graphs alive
    second.backward()
    after_second = [p.grad.copy() for p in net.parameters()]
    net.zero_grad()
    first.backward()
    for got, want in zip(after_second + [p.grad for p in net.parameters()], expected[1] + expected[0]):
        np.testing.assert_allclose(got, want, rtol=1e-6)
