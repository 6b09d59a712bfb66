"""A shard's store trained by rows, without sockets: a push of some keys (packed values) steps
exactly what the dense push of the same gradient steps, under async and bsp; FTRL and Adagrad
step only those keys, a lazy rule too, and the counts say how many keys each update touched;
a checkpoint holds each key's weight and rule state from the same moment."""
import numpy as np
import pytest

from downpour.ps import spans
from downpour.ps.store import ParameterStore

LO, HI = 1000, 1000 + 7 * 4000           # a range of a table of rows 7 keys wide
FTRL = {"type": "ftrl", "alpha": 0.3, "beta": 1.0, "l1": 0.01, "l2": 0.001}


def _store(optimizer, mode="async", weights=None):
    start = np.zeros(HI - LO, np.float32) if weights is None else weights
    return ParameterStore(LO, HI, start, dict(optimizer), mode, 0, [0, 1])


def _pushes(seed=0, count=6):
    """(worker, clock, keys, packed values): rows of 7 keys, a few hundred each push."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        rows = np.unique(rng.integers(0, 4000, 300))
        keys = spans.of_rows(LO, 7, rows)
        yield i % 2, i // 2, keys, rng.standard_normal(spans.size(keys)).astype(np.float32)


def _dense(keys, values):
    grad = np.zeros(HI - LO, np.float32)
    spans.scatter(grad, LO, keys, values)
    return grad


@pytest.mark.parametrize("optimizer", [FTRL, {"type": "adagrad", "lr": 0.1}], ids=["ftrl", "adagrad"])
@pytest.mark.parametrize("mode", ["async", "bsp"])
def test_a_push_by_rows_steps_exactly_what_the_dense_push_steps(optimizer, mode):
    start = np.random.default_rng(9).standard_normal(HI - LO).astype(np.float32) * 0.1
    by_rows, dense = _store(optimizer, mode, start.copy()), _store(optimizer, mode, start.copy())
    for worker, clock, keys, values in _pushes():
        by_rows.push(worker, clock, LO, HI, values, keys=keys)
        dense.push(worker, clock, LO, HI, _dense(keys, values))
    np.testing.assert_array_equal(by_rows.weights, dense.weights)
    rows_state, dense_state = by_rows.state_dict()[0], dense.state_dict()[0]
    for key in dense_state:
        np.testing.assert_array_equal(rows_state[key], dense_state[key])
    assert by_rows.updates_applied == dense.updates_applied == (6 if mode == "async" else 3)
    if mode == "async":                  # the keys pushed, against the whole range every time
        assert by_rows.key_updates == sum(spans.size(k) for _, _, k, _ in _pushes())
        assert dense.key_updates == 6 * (HI - LO)


def test_a_lazy_rule_steps_only_the_pushed_rows_where_its_dense_rule_moves_the_rest():
    lazy, adam = _store({"type": "lazy_adam", "lr": 0.01}), _store({"type": "adam", "lr": 0.01})
    first = spans.of_rows(LO, 7, np.arange(4000))            # every row once: both rules alike
    g = np.ones(HI - LO, np.float32)
    lazy.push(0, 0, LO, HI, g, keys=first)
    adam.push(0, 0, LO, HI, g, keys=first)
    np.testing.assert_array_equal(lazy.weights, adam.weights)
    before = lazy.weights.copy()
    some = spans.of_rows(LO, 7, np.array([3, 10]))
    lazy.push(1, 0, LO, HI, np.ones(14, np.float32), keys=some)
    adam.push(1, 0, LO, HI, np.ones(14, np.float32), keys=some)
    moved = np.flatnonzero(lazy.weights != before)
    np.testing.assert_array_equal(moved, spans.positions(*some) - LO)   # lazy: those rows only
    assert (adam.weights != before).sum() == HI - LO                   # adam: momentum moves all
    assert lazy.key_updates == (HI - LO) + 14 and adam.key_updates == 2 * (HI - LO)


def test_a_checkpoint_of_a_table_by_rows_resumes_bit_for_bit_and_reports_its_bytes():
    store = _store(FTRL)
    pushes = list(_pushes(seed=3, count=8))
    for worker, clock, keys, values in pushes[:4]:
        store.push(worker, clock, LO, HI, values, keys=keys)
    arrays, meta = store.state_dict()
    assert set(arrays) == {"weights", "rule.z", "rule.n"}
    restored = _store(FTRL)
    restored.load_state_dict({k: np.array(v) for k, v in arrays.items()}, meta)
    for s in (store, restored):
        for worker, clock, keys, values in pushes[4:]:
            s.push(worker, clock, LO, HI, values, keys=keys)
    np.testing.assert_array_equal(store.weights, restored.weights)
    assert restored.key_updates == store.key_updates
    assert store.nbytes == 3 * 4 * (HI - LO)                          # weights, z and n


def test_under_bsp_a_lazy_rule_by_rows_steps_each_clocks_mean_at_the_rows_pushed_only():
    lazy = _store({"type": "lazy_adam", "lr": 0.01}, mode="bsp")
    before = lazy.weights.copy()
    a, b = spans.of_rows(LO, 7, np.array([1, 2])), spans.of_rows(LO, 7, np.array([2, 9]))
    lazy.push(0, 0, LO, HI, np.ones(14, np.float32), keys=a)
    assert lazy.updates_applied == 0                    # held until both workers pushed clock 0
    lazy.push(1, 0, LO, HI, np.ones(14, np.float32), keys=b)
    assert lazy.updates_applied == 1
    moved = np.flatnonzero(lazy.weights != before)
    np.testing.assert_array_equal(moved, spans.positions(*spans.union(a, b)) - LO)
    assert lazy.key_updates == 3 * 7
