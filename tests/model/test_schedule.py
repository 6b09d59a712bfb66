"""Learning-rate schedules: a function of the update count, the same on every shard."""

import math

import numpy as np
import pytest

from downpour.model import optim
from downpour.model.optim.schedule import Schedule, split
from downpour.ps.store import ParameterStore


def test_constant_keeps_the_rate():
    s = Schedule("constant", 0.1, 0.0, 100)
    assert [s.lr_at(u) for u in (0, 50, 100, 1000)] == [0.1] * 4


def test_linear_falls_in_a_straight_line_and_then_stays_at_the_final_rate():
    s = Schedule("linear", 1.0, 0.2, 10)
    assert s.lr_at(0) == 1.0
    assert s.lr_at(5) == pytest.approx(0.6)
    assert s.lr_at(10) == pytest.approx(0.2) and s.lr_at(11) == pytest.approx(0.2)


def test_cosine_follows_half_a_cosine():
    s = Schedule("cosine", 1.0, 0.0, 100)
    for u in (0, 25, 50, 75, 100):
        assert s.lr_at(u) == pytest.approx(0.5 * (1 + math.cos(math.pi * u / 100)))
    assert s.lr_at(500) == pytest.approx(0.0)


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="expected one of constant, linear, cosine"):
        Schedule("exponential", 1.0, 0.0, 10)


def test_split_hands_the_rule_only_its_own_settings():
    rule, s = split({"type": "adam", "lr": 0.003, "schedule": "cosine", "final_lr": 0.0003}, 400)
    assert rule == {"type": "adam", "lr": 0.003}
    assert s == Schedule("cosine", 0.003, 0.0003, 400)
    optim.make(rule.pop("type"), **rule)  # the rule accepts what is left


def test_a_shard_store_applies_each_update_at_the_scheduled_rate():
    """Plain SGD on a gradient of ones moves every weight by exactly the rate of that update."""
    store = ParameterStore(0, 4, np.zeros(4, np.float32), {"type": "sgd", "lr": 1.0, "schedule": "linear",
                                                           "final_lr": 0.0}, "async", 0, [0], planned_updates=4)
    moves = []
    for clock in range(5):
        before = store.weights.copy()
        store.push(0, clock, 0, 4, np.ones(4, np.float32))
        moves.append(float(before[0] - store.weights[0]))
    np.testing.assert_allclose(moves, [1.0, 0.75, 0.5, 0.25, 0.0], atol=1e-7)
