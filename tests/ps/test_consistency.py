"""Consistency models as pure logic over clocks: async, SSP with bound s, BSP."""
import random

import pytest

from downpour.ps.consistency import Consistency


def test_async_applies_every_push_and_serves_every_read():
    c = Consistency("async", workers=[0, 1])
    for clock in range(5):
        assert c.push(0, clock) == (True, [])
    assert c.can_read(0, 5) and c.can_read(1, 0)


def test_ssp_lets_a_reader_run_at_most_s_clocks_ahead_of_the_slowest_worker():
    c = Consistency("ssp", staleness=2, workers=[0, 1])
    for clock in range(3):
        c.push(0, clock)
    assert c.can_read(0, 2)          # worker 1 is at 0: gap 2 is allowed
    assert not c.can_read(0, 3)      # gap 3 is not
    c.push(1, 0)
    assert c.can_read(0, 3)


def test_ssp_bound_holds_under_a_random_schedule():
    s = 3
    c = Consistency("ssp", staleness=s, workers=range(4))
    rng = random.Random(0)
    clocks = [0] * 4
    for _ in range(2000):
        w = rng.randrange(4)
        if c.can_read(w, clocks[w]):
            assert c.record_read(w, clocks[w]) <= s
            c.push(w, clocks[w])
            clocks[w] += 1
    assert c.max_staleness() <= s
    assert min(clocks) > 100


def test_bsp_holds_pushes_until_every_live_worker_has_pushed_the_clock():
    c = Consistency("bsp", workers=[0, 1, 2])
    assert c.push(0, 0) == (False, [])
    assert c.push(1, 0) == (False, [])
    assert not c.can_read(0, 1)
    assert c.push(2, 0) == (False, [0])
    assert c.can_read(0, 1) and c.applied_clock == 1


def test_bsp_stops_waiting_for_a_dead_worker():
    c = Consistency("bsp", workers=[0, 1])
    c.push(0, 0)
    assert c.leave(1) == [0]
    assert c.can_read(0, 1)
    assert c.push(0, 1) == (False, [1])


def test_bsp_flushes_pending_pushes_when_nobody_is_left():
    c = Consistency("bsp", workers=[0, 1])
    c.push(0, 0)
    c.push(0, 1)
    assert c.set_live([]) == [0, 1]


def test_bsp_rejects_a_push_for_a_clock_already_applied():
    c = Consistency("bsp", workers=[0])
    c.push(0, 0)
    with pytest.raises(ValueError, match="already applied"):
        c.push(0, 0)


def test_a_joining_worker_starts_at_the_slowest_live_clock():
    c = Consistency("ssp", staleness=1, workers=[0, 1])
    for clock in range(4):
        c.push(0, clock)
    c.push(1, 0)
    c.push(1, 1)
    c.set_live([0, 1, 2])
    assert c.clocks[2] == 2


@pytest.mark.parametrize("mode", ["async", "ssp"])
def test_a_returning_worker_carries_on_from_its_own_clock_even_behind_the_others(mode):
    """A resumed job or restarted worker must not skip pushes: the shards would lose them."""
    c = Consistency(mode, staleness=2, workers=[0, 1])
    for clock in range(3):
        c.push(0, clock)
    for clock in range(7):
        c.push(1, clock)
    c.set_live([1])          # worker 0 is gone (the coordinator no longer lists it) ...
    c.set_live([0, 1])       # ... and back
    assert c.clocks == {0: 3, 1: 7}


def test_in_bsp_a_returning_worker_resumes_no_earlier_than_the_clocks_already_applied():
    c = Consistency("bsp", workers=[0, 1])
    c.push(0, 0)
    c.set_live([1])          # worker 0 gone: clock 0 completes with worker 1 alone
    c.push(1, 0)
    c.push(1, 1)
    c.set_live([0, 1])
    assert c.applied_clock == 2 and c.clocks[0] == 2


def test_unknown_mode_and_negative_staleness_are_errors():
    with pytest.raises(ValueError, match="expected one of"):
        Consistency("eventual")
    with pytest.raises(ValueError, match=">= 0"):
        Consistency("ssp", staleness=-1)
