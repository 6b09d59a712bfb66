"""The compiled LSTM time loops (`model.rnn_loops`) and the small GEMM under them (`model.gemm`)
compute what the step-by-step NumPy/BLAS path computes, edges and float64 included."""
import os
import subprocess
import sys

import numpy as np
import pytest

from downpour.model import gemm, jit, kernels, rnn_cells, rnn_loops

needs_numba = pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="numba missing or DOWNPOUR_NO_NUMBA set")
DTYPES = [np.float32, np.float64]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _close(dtype):
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@needs_numba
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (4, 16, 4), (5, 33, 9), (8, 3, 6),
                                   (32, 160, 512)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_small_gemm_matches_blas_on_tiles_and_edges(shape, dtype, rng):
    m, k, n = shape
    a = rng.standard_normal((m, k)).astype(dtype)
    bt = rng.standard_normal((n, k)).astype(dtype)
    out = np.full((m, n), np.nan, dtype)
    assert gemm.matmul_nt(a, bt, out, use_numba=True) is out
    close = {"rtol": 1e-5, "atol": 1e-4} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(out, a @ bt.T, **close)


@needs_numba
def test_small_gemm_refuses_shapes_that_do_not_fit():
    with pytest.raises(ValueError, match="do not fit"):
        gemm.matmul_nt(np.zeros((2, 3)), np.zeros((4, 5)), np.zeros((2, 4)), use_numba=True)


def _compiled_tanh(a, out):
    for i in range(a.size):
        out[i] = rnn_loops._tanh(a[i])


@needs_numba
def test_float32_tanh_of_the_compiled_loop_is_within_a_few_ulp():
    tanh = jit.numba().njit(_compiled_tanh)
    x = np.concatenate([np.linspace(-12, 12, 400_001), [0.0, -0.0, 1e-30, 40.0, -40.0, np.inf, -np.inf]])
    x = x.astype(np.float32)
    out = np.empty_like(x)
    tanh(x, out)
    exact = np.tanh(x.astype(np.float64))
    assert np.abs(out - exact).max() <= 4e-7
    assert out[-7] == 0 and out[-5] == pytest.approx(1e-30, rel=1e-6)  # relative accuracy near 0
    assert out[-4] == 1 and out[-3] == -1 and out[-2] == 1 and out[-1] == -1
    nan = np.array([np.nan], np.float32)
    tanh(nan, nan)
    assert np.isnan(nan[0])


def _sequence(rng, dtype, steps, batch, n_in, hidden):
    """Inputs of the two loops laid out as the LSTM op lays them out."""
    k = gemm.padded(hidden + n_in)
    width = gemm.padded(k + 1)
    stacked = np.zeros((4 * hidden, width), dtype)
    stacked[:, :hidden + n_in] = rng.uniform(-0.5, 0.5, (4 * hidden, hidden + n_in))
    stacked[:, k] = rng.uniform(-0.5, 0.5, 4 * hidden)
    stacked *= rnn_cells.gate_scale("lstm", hidden, np, dtype)[:, None]
    rows = np.zeros((steps + 1, batch, width), dtype)
    rows[0, :, :hidden] = rng.standard_normal((batch, hidden)) * 0.5
    rows[:steps, :, hidden:hidden + n_in] = rng.standard_normal((steps, batch, n_in))
    rows[:, :, k] = 1
    c0 = rng.standard_normal((batch, hidden)) * 0.5
    return k, stacked, rows, c0


@needs_numba
@pytest.mark.parametrize("sizes", [(3, 2, 3, 4), (5, 7, 4, 6), (2, 32, 32, 128), (1, 1, 1, 1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_loops_agree_between_compiled_and_step_by_step(sizes, dtype, rng):
    steps, batch, n_in, hidden = sizes
    k, stacked, rows0, c0 = _sequence(rng, dtype, steps, batch, n_in, hidden)
    w_hh = rng.uniform(-0.5, 0.5, (4 * hidden, hidden)).astype(dtype)
    grad = rng.standard_normal((steps, batch, hidden)).astype(dtype)
    dc_last = rng.standard_normal((batch, hidden)).astype(dtype)
    results = {}
    for use_numba in (False, True):
        rows = rows0.copy()
        gates = np.empty((steps, batch, 4 * hidden), dtype)
        cs = np.empty((steps + 1, batch, hidden), dtype)
        cs[0] = c0
        tanh_c = np.empty((steps, batch, hidden), dtype)
        rnn_loops.lstm_forward_sequence(rows, stacked, k, gates, cs, tanh_c, use_numba=use_numba)
        d_pre = np.empty_like(gates)
        dh, dc = np.zeros((batch, hidden), dtype), dc_last.copy()
        rnn_loops.lstm_backward_sequence(grad, gates, cs, tanh_c, w_hh, d_pre, dh, dc,
                                         use_numba=use_numba)
        results[use_numba] = (rows, gates, cs, tanh_c, d_pre, dh, dc)
    for step_by_step, compiled in zip(results[False], results[True]):
        assert compiled.dtype == dtype
        np.testing.assert_allclose(compiled, step_by_step, **_close(dtype))


def test_small_gemm_can_be_switched_off_and_on_by_environment_variable():
    probe = "import downpour.model.gemm as g; print(g.fast())"
    for value, expected in (("0", "False"), ("1", str(kernels.HAVE_NUMBA))):
        env = dict(os.environ, DOWNPOUR_SMALL_GEMM=value)
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                              check=True, cwd=ROOT)
        assert done.stdout.strip() == expected
