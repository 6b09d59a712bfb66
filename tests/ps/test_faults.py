"""Fault plans: a `stall` strikes once, at the role's step or at its seconds, and silences the heartbeat as long."""
import time

from downpour.ps.faults import FaultPlan


def stall(**moment):
    return {"kind": "stall", "role": "shard", "rank": 0, "at_step": None, "at_seconds": None, "seconds": 0.01,
            **moment}


def test_a_stall_strikes_once_when_its_step_is_reached_and_holds_the_heartbeat_as_long():
    plan = FaultPlan([stall(at_step=5)], "shard", 0)
    held = []
    assert plan.stall(4, held.append) == 0.0 and held == []
    assert plan.stall(7, held.append) == 0.01 and held == [0.01]   # a shard's updates may jump past the step
    assert plan.stall(8, held.append) == 0.0 and held == [0.01]


def test_a_stall_at_seconds_counts_from_when_the_role_joined():
    plan = FaultPlan([stall(at_seconds=0.05)], "shard", 0)
    assert plan.stall(None) == 0.0
    time.sleep(0.06)
    assert plan.stall(None) == 0.01


def test_a_stall_aims_at_its_role_and_rank_and_spares_a_restarted_process():
    assert FaultPlan([stall(at_step=0)], "shard", 1).stall(0) == 0.0
    assert FaultPlan([stall(at_step=0)], "worker", 0).stall(0) == 0.0
    assert FaultPlan([stall(at_step=0)], "shard", 0, restarted=True).stall(0) == 0.0
