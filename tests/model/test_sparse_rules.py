"""FTRL-proximal follows McMahan et al. (2013), Algorithm 1, written out here coordinate by
coordinate; a zero gradient changes nothing, so stepping only the pushed rows is the dense step
bit for bit; its Numba kernel and NumPy path agree exactly. A lazy rule steps only the rows a
push names, where its dense rule would move the others too."""
import math

import numpy as np
import pytest

from downpour.model import optim


def ftrl_reference(w0, grads, alpha, beta, l1, l2):
    """The paper's per-coordinate algorithm in float64, starting from weights w0 (z chosen so
    that the weight formula gives w0 back, n = 0)."""
    w = [float(v) for v in w0]
    z = [-v * (beta / alpha + l2) - math.copysign(l1, v) * (v != 0) for v in w]
    n = [0.0] * len(w)
    for g in grads:
        for i, gi in enumerate(g):
            sigma = (math.sqrt(n[i] + gi * gi) - math.sqrt(n[i])) / alpha
            z[i] += gi - sigma * w[i]
            n[i] += gi * gi
            if abs(z[i]) <= l1:
                w[i] = 0.0
            else:
                w[i] = -(z[i] - math.copysign(l1, z[i])) / ((beta + math.sqrt(n[i])) / alpha + l2)
    return np.array(w), np.array(z), np.array(n)


@pytest.fixture(params=["numpy", "numba"])
def kernel(request):
    if request.param == "numba" and not optim.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    previous = optim.set_fused(request.param == "numba")
    yield request.param
    optim.set_fused(previous)


@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (3.0, 0.0), (2.0, 1.0)])
def test_ftrl_follows_the_papers_algorithm_from_nonzero_initial_weights(kernel, l1, l2):
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(50) * 0.3
    w0[:10] = 0.0
    grads = [rng.standard_normal(50) * rng.integers(0, 2, 50) for _ in range(20)]   # many zeros
    expected_w, expected_z, expected_n = ftrl_reference(w0, grads, 0.1, 1.0, l1, l2)
    w = w0.copy()
    rule = optim.make("ftrl", alpha=0.1, beta=1.0, l1=l1, l2=l2)
    for g in grads:
        rule.step(w, g)
    np.testing.assert_allclose(w, expected_w, rtol=1e-12, atol=1e-14)
    state = rule.state_dict()
    np.testing.assert_allclose(state["z"], expected_z, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state["n"], expected_n, rtol=1e-12, atol=1e-14)
    if l1:                                                     # L1 makes exact zeros
        assert (w == 0).any() and not w[np.abs(state["z"]) <= l1].any()


def test_ftrl_numba_kernel_and_numpy_path_agree_bit_for_bit_in_float32():
    if not optim.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal(1000).astype(np.float32)
    grads = [rng.standard_normal(1000).astype(np.float32) for _ in range(10)]
    results = []
    for fused in (True, False):
        previous = optim.set_fused(fused)
        try:
            w, rule = w0.copy(), optim.make("ftrl", alpha=0.05, beta=1.0, l1=0.3, l2=0.1)
            for g in grads:
                rule.step(w, g)
            results.append((w, rule.state_dict()))
        finally:
            optim.set_fused(previous)
    np.testing.assert_array_equal(results[0][0], results[1][0])
    for key in ("z", "n"):
        np.testing.assert_array_equal(results[0][1][key], results[1][1][key])


@pytest.mark.parametrize("name,hp", [("ftrl", {"alpha": 0.1, "l1": 0.05, "l2": 0.01}),
                                     ("adagrad", {"lr": 0.1})])
def test_stepping_only_the_pushed_rows_is_the_dense_step_bit_for_bit(kernel, name, hp):
    """The dense step (numba kernel or NumPy) against `step_at` on the pushed positions."""
    rng = np.random.default_rng(2)
    original = rng.standard_normal(70_000).astype(np.float32)   # big enough for the kernel
    dense, rows = original.copy(), original.copy()
    whole, by_rows = optim.make(name, **hp), optim.make(name, **hp)
    whole.bind(dense)
    by_rows.bind(rows)
    for _ in range(5):
        at = np.sort(rng.choice(original.size, 500, replace=False))
        g = rng.standard_normal(500).astype(np.float32)
        masked = np.zeros_like(original)
        masked[at] = g
        whole.step(dense, masked)
        by_rows.step_at(rows, g, at)
    np.testing.assert_array_equal(rows, dense)
    for key, value in whole.state_dict().items():
        np.testing.assert_array_equal(by_rows.state_dict()[key], value)


def test_ftrl_has_no_global_rate_to_schedule_and_refuses_torch_names():
    rule = optim.make("ftrl", alpha=0.5)
    assert rule.lr == 0.5 and rule.zero_is_noop and rule.steps_by_rows
    with pytest.raises(ValueError, match="no global learning rate to schedule"):
        rule.lr = 0.1
    with pytest.raises(ValueError, match="unknown hyper-parameter.*lr for ftrl"):
        optim.make("ftrl", lr=0.1)
    with pytest.raises(ValueError, match="invalid alpha"):
        optim.make("ftrl", alpha=0.0)


def test_ftrl_state_round_trips_through_its_state_dict():
    rng = np.random.default_rng(3)
    w = rng.standard_normal(20).astype(np.float32)
    rule = optim.make("ftrl", alpha=0.2, l1=0.1)
    rule.step(w, rng.standard_normal(20).astype(np.float32))
    again = optim.from_state_dict(rule.state_dict())
    g = rng.standard_normal(20).astype(np.float32)
    w2 = w.copy()
    rule.step(w, g)
    again.step(w2, g)
    np.testing.assert_array_equal(w, w2)


@pytest.mark.parametrize("name,hp", [("adam", {"lr": 0.01}), ("adamw", {"lr": 0.01}),
                                     ("sgd", {"lr": 0.1, "momentum": 0.9}),
                                     ("adagrad", {"lr": 0.1, "weight_decay": 0.01})])
def test_a_lazy_rule_steps_only_the_pushed_rows_where_its_dense_rule_moves_every_row(name, hp):
    rng = np.random.default_rng(4)
    original = rng.standard_normal(100)
    dense_rule, lazy_rule = optim.make(name, **hp), optim.make(f"lazy_{name}", **hp)
    assert lazy_rule.lazy and lazy_rule.steps_by_rows and not dense_rule.steps_by_rows
    with pytest.raises(ValueError, match=f"lazy_{name}, steps only the rows pushed"):
        dense_rule.step_at(original.copy(), np.ones(2), np.array([0, 1]))
    dense, lazy = original.copy(), original.copy()
    everything = np.arange(100)
    g = rng.standard_normal(100)
    dense_rule.step(dense, g)                   # a first push of every row: the same step for both
    lazy_rule.step_at(lazy, g, everything)
    np.testing.assert_array_equal(lazy, dense)
    after_first = dense.copy()
    at = np.arange(10)                          # then pushes of rows 0..9 only
    for _ in range(3):
        g = rng.standard_normal(10)
        masked = np.zeros(100)
        masked[at] = g
        dense_rule.step(dense, masked)
        lazy_rule.step_at(lazy, g, at)
    # The pushed rows step alike; what differs is the rest: under the lazy rule they keep their
    # weights (and state) until a push names them, while the dense rule moves them on a zero
    # gradient (momentum, moving averages, weight decay).
    np.testing.assert_array_equal(lazy[at], dense[at])
    np.testing.assert_array_equal(lazy[10:], after_first[10:])
    assert (dense[10:] != after_first[10:]).all()
    # A push of every key steps every key, as the dense rule does.
    w1, w2 = original.copy(), original.copy()
    g = rng.standard_normal(100)
    optim.make(name, **hp).step(w1, g)
    optim.make(f"lazy_{name}", **hp).step(w2, g)
    np.testing.assert_array_equal(w1, w2)


def test_a_lazy_rule_at_its_rows_is_its_dense_rule_run_on_those_rows_alone():
    rng = np.random.default_rng(5)
    original = rng.standard_normal(30)
    at = np.array([2, 7, 8, 20])
    lazy, alone = original.copy(), original[at].copy()
    lazy_rule, alone_rule = optim.make("lazy_adam", lr=0.01), optim.make("adam", lr=0.01)
    for _ in range(3):
        g = rng.standard_normal(4)
        lazy_rule.step_at(lazy, g, at)
        alone_rule.step(alone, g)
    np.testing.assert_array_equal(lazy[at], alone)


@pytest.mark.parametrize("name,hp", [("ftrl", {"alpha": 0.1, "l1": 0.01}), ("adagrad", {"lr": 0.1}),
                                     ("adam", {"lr": 0.01})])
def test_a_rule_takes_a_tables_row_sparse_gradient_as_it_is(name, hp):
    """Rows alone where a zero gradient changes nothing (repeated rows summed first), the dense
    step otherwise: the very numbers of the dense gradient's step."""
    from downpour.model import RowSparse

    previous = optim.set_fused(False)
    try:
        rng = np.random.default_rng(6)
        start = rng.standard_normal((50, 4)).astype(np.float32)
        by_rows, dense = start.copy(), start.copy()
        rows_rule, dense_rule = optim.make(name, **hp), optim.make(name, **hp)
        for _ in range(3):
            grad = RowSparse(rng.integers(0, 50, 12), rng.standard_normal((12, 4)).astype(np.float32), (50, 4))
            rows_rule.step(by_rows, grad)
            dense_rule.step(dense, grad.to_dense())
        np.testing.assert_array_equal(by_rows, dense)
    finally:
        optim.set_fused(previous)
