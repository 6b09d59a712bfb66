"""Chaos on real processes: roles stalled (SIGSTOP, or the `stall` fault) and killed (SIGKILL)
in the middle of replicated and unreplicated jobs, in async, SSP and BSP.

Whatever strikes, per range every acknowledged push is applied once (`pushes_per_range` equals
the pushes the workers made), the job ends at its accuracy, and no process is left behind (the
`jobs` fixture). The jobs are short (a few hundred steps of the digits MLP, heartbeats timing
out after 1.5 s), and each packs the faults that do not interfere; the whole matrix of
{stall, kill} x {coordinator, primary, backup, worker, evaluator} x {async, ssp, bsp} x
{replication 1, 2} runs behind the `slow` marker:

    python -m pytest -m slow tests/e2e/test_chaos.py
"""
from __future__ import annotations

import os
import pathlib
import signal
import time

import pytest
import zmq

from downpour.ps.control import ControlClient
from tests.conftest import CONFIGS, logs, processes_of

pytestmark = pytest.mark.e2e
MLP = CONFIGS / "digits_mlp.yaml"
TIMEOUT = 1.5
FAST = ("cluster.heartbeat_interval=0.25", f"cluster.heartbeat_timeout={TIMEOUT}")
REPLICATED = "shards={count: 2, replication: 2}"
PACED = "{kind: delay, role: worker, seconds: 0.004, fraction: 1.0}"  # ~250 steps/s: faults strike mid-run


def pid_of(run_dir: pathlib.Path, name: str) -> int:
    """The pid of role `name` ("shard-0", "evaluator-0", "coordinator-0") of a run."""
    for pid in processes_of(run_dir):
        try:
            argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "downpour" not in argv or "launch" in argv:
            continue
        role = argv[argv.index("downpour") + 1]
        rank = argv[argv.index("--rank") + 1] if "--rank" in argv else "0"
        if f"{role}-{rank}" == name:
            return pid
    raise AssertionError(f"no live process {name} in {run_dir}")


class Watch:
    """The job's status, asked of its coordinator, until something holds."""

    def __init__(self, run_dir: pathlib.Path):
        self.run_dir = run_dir
        self.ctx = zmq.Context()
        self.control = None

    def status(self) -> dict | None:
        addr = self.run_dir / "coordinator.addr"
        if self.control is None and addr.exists():
            self.control = ControlClient(self.ctx, addr.read_text().strip(), "client", timeout=2.0)
        try:
            return self.control.status() if self.control else None
        except (TimeoutError, RuntimeError):
            return None

    def until(self, what: str, holds, limit: float = 90.0) -> dict:
        deadline = time.monotonic() + limit
        status = None
        while time.monotonic() < deadline:
            status = self.status() or status
            if status is not None and holds(status):
                return status
            time.sleep(0.05)
        raise AssertionError(f"never saw {what}; last status: {status}\n{logs(self.run_dir)}")

    def close(self) -> None:
        if self.control is not None:
            self.control.close()
        self.ctx.term()


def steps(status: dict) -> int:
    return min((n["stats"].get("step", 0) for n in status["nodes"] if n["role"] == "worker"), default=0)


def backed_up_by(status: dict, shard: str) -> bool:
    return all(r["backup"] == shard and r["backup_state"] == "ready" for r in status["ranges"])


def assert_nothing_lost(s: dict, mode: str, total_steps: int, workers: int = 2) -> None:
    """Every push the workers made was applied once, on every range."""
    assert s["status"] == "done", s["reason"]
    assert s["pushes_sent"] == workers * total_steps
    assert s["pushes_per_range"] == [s["pushes_sent"]] * len(s["pushes_per_range"])
    applied = total_steps if mode == "bsp" else s["pushes_sent"]   # bsp applies each clock's mean once
    assert s["updates_per_shard"] == [applied] * len(s["updates_per_shard"])


@pytest.mark.parametrize("mode", ["async", "ssp", "bsp"])
def test_a_primary_stalled_past_its_timeout_is_fenced_and_after_the_restore_a_kill_loses_nothing(jobs, mode):
    """SIGSTOP shard-0 (primary of range 0, backup of range 1) for twice the heartbeat timeout:
    shard-1 is promoted; shard-0, continued, stands down, rejoins as the backup of both ranges
    and takes their state. Then shard-1 is killed with kill -9: shard-0 takes both over, and
    still no acknowledged push is lost."""
    total = 700
    proc, run_dir = jobs.start(MLP, REPLICATED, f"consistency.mode={mode}", f"train.steps={total}",
                               f"faults=[{PACED}]", *FAST)
    watch = Watch(run_dir)
    try:
        watch.until("training under way", lambda st: steps(st) >= 100)
        stalled = pid_of(run_dir, "shard-0")
        os.kill(stalled, signal.SIGSTOP)
        try:
            watch.until("shard-1 promoted", lambda st: st["ranges"][0]["primary"] == "shard-1")
            time.sleep(TIMEOUT)  # workers and shards carry on meanwhile; the stopped one hears nothing
        finally:
            os.kill(stalled, signal.SIGCONT)
        restored = watch.until("shard-0 the ready backup of both ranges", lambda st: backed_up_by(st, "shard-0"))
        os.kill(pid_of(run_dir, "shard-1"), signal.SIGKILL)
    finally:
        watch.close()
    assert steps(restored) < total, "the kill came after training: slow the workers down more"
    s = jobs.finish(proc, run_dir)
    assert_nothing_lost(s, mode, total)
    assert [e["node"] for e in s["events"] if e["event"] == "dead"] == ["shard-0", "shard-1"]
    promoted = [(e["range"], e["node"], e["epoch"]) for e in s["events"] if e["event"] == "promoted"]
    assert promoted == [(0, "shard-1", 2), (0, "shard-0", 3), (1, "shard-0", 2)]
    assert [(r["primary"], r["epoch"]) for r in s["ranges"]] == [("shard-0", 3), ("shard-0", 2)]
    assert all(r["unreplicated_seconds"] > 0 for r in s["ranges"])
    assert "stood down from range 0" in (run_dir / "logs" / "shard-0.log").read_text()
    assert s["metrics"]["test_accuracy"] >= 0.95


def test_stall_faults_on_every_role_in_turn_cost_no_push_and_each_stalled_role_rejoins(jobs):
    """The `stall` fault kind, from the config: the coordinator, a shard and the evaluator each
    stop answering (heartbeats included) for twice the heartbeat timeout, and a worker is cut
    off as long (`partition`), one after the other, in a replicated async job."""
    total, stall = 700, 2 * TIMEOUT
    faults = ", ".join([
        PACED,
        f"{{kind: partition, role: worker, rank: 1, at_step: 60, seconds: {stall}}}",
        f"{{kind: stall, role: coordinator, rank: 0, at_step: 200, seconds: {stall}}}",   # the slowest live clock
        f"{{kind: stall, role: shard, rank: 1, at_step: 1000, seconds: {stall}}}",        # its updates
        f"{{kind: stall, role: evaluator, rank: 0, at_step: 550, seconds: {stall}}}",     # the slowest live clock
    ])
    s = jobs.run(MLP, REPLICATED, f"train.steps={total}", f"faults=[{faults}]", *FAST)
    assert_nothing_lost(s, "async", total)
    died = [e["node"] for e in s["events"] if e["event"] == "dead"]
    assert sorted(died) == ["evaluator-0", "shard-1", "worker-1"]    # the coordinator's own stall killed nobody
    for node in died:
        events = [e["event"] for e in s["events"] if e["node"] == node]
        assert events.index("dead") < events.index("rejoined"), node
    assert [e["event"] for e in s["events"] if e["node"] == "coordinator-0"] == ["coordinator_stalled"]
    assert [(e["range"], e["node"], e["epoch"]) for e in s["events"] if e["event"] == "promoted"] == [(1, "shard-0", 2)]
    assert [r["backup_state"] for r in s["ranges"]] == ["ready", "ready"]             # shard-1 back as a backup
    assert "stood down from range 1" in (s["_run_dir"] / "logs" / "shard-1.log").read_text()
    assert s["metrics"]["test_accuracy"] >= 0.95


def test_when_the_coordinator_is_killed_every_role_gives_it_up_and_ends_by_itself(jobs):
    proc, run_dir = jobs.start(MLP, REPLICATED, "train.steps=700", f"faults=[{PACED}]", *FAST)
    watch = Watch(run_dir)
    try:
        watch.until("training under way", lambda st: steps(st) >= 50)
        os.kill(pid_of(run_dir, "coordinator-0"), signal.SIGKILL)
    finally:
        watch.close()
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    for role in ("shard-0", "shard-1", "worker-0", "worker-1", "evaluator-0"):
        text = (run_dir / "logs" / f"{role}.log").read_text()
        assert "silent for" in text, f"{role} did not notice:\n{text[-2000:]}"


# ---- the whole matrix (slow) ---------------------------------------------------------------------

TARGETS = {"coordinator": "coordinator-0", "primary": "shard-0", "backup": "shard-0", "worker": "worker-1",
           "evaluator": "evaluator-0"}
MATRIX = [(fault, target, mode, replication)
          for fault in ("stall", "kill") for target in TARGETS for mode in ("async", "ssp", "bsp")
          for replication in (1, 2) if not (target == "backup" and replication == 1)]


def strike(run_dir: pathlib.Path, fault: str, name: str) -> None:
    pid = pid_of(run_dir, name)
    if fault == "kill":
        os.kill(pid, signal.SIGKILL)
        return
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(2 * TIMEOUT)
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.slow
@pytest.mark.parametrize("fault, target, mode, replication", MATRIX,
                         ids=["-".join(map(str, case)) for case in MATRIX])
def test_chaos_matrix(jobs, request, fault, target, mode, replication):
    """One role stalled for twice the heartbeat timeout, or killed, mid-run. `backup`: shard-0
    after it has been made a pure backup (stalled, deposed, restored), stalled or killed again."""
    markexpr = request.config.option.markexpr or ""
    if "slow" not in markexpr or "not slow" in markexpr:
        pytest.skip("the whole chaos matrix runs with -m slow")
    total = 700
    proc, run_dir = jobs.start(MLP, f"shards={{count: 2, replication: {replication}}}", f"consistency.mode={mode}",
                               f"train.steps={total}", f"faults=[{PACED}]", "workers={count: 2, restart: on-failure}",
                               "checkpoint.every_seconds=0.5", "cluster.startup_timeout=20", *FAST)
    watch = Watch(run_dir)
    try:
        watch.until("training under way", lambda st: steps(st) >= 100)
        if target == "backup":
            strike(run_dir, "stall", "shard-0")
            watch.until("shard-0 a pure backup", lambda st: backed_up_by(st, "shard-0"))
        strike(run_dir, fault, TARGETS[target])
    finally:
        watch.close()
    if fault == "kill" and target == "coordinator":
        proc.communicate(timeout=120)
        assert proc.returncode != 0
        return
    s = jobs.finish(proc, run_dir)
    if fault == "kill" and target == "evaluator":                  # nobody restarts it: the job waits, then fails
        assert s["status"] == "failed" and "evaluator-0" in s["reason"] and "did not come back" in s["reason"]
        return
    assert s["status"] == "done", s["reason"]
    assert s["metrics"]["test_accuracy"] >= 0.95
    if fault == "kill" and target == "primary" and replication == 1:   # restarted from its checkpoint
        assert "re-registered" in [e["event"] for e in s["events"] if e["node"] == "shard-0"]
        return
    if target == "worker" and mode == "bsp":
        # BSP applies the clocks of a worker declared dead without it, and refuses (never
        # acknowledges) its later pushes for them: each clock is applied once, whoever is in it.
        # Restarted (killed, or failed on such a refusal after a stall), it carries on from the
        # latest clock any shard applied without it: it comes back at the first try.
        assert s["updates_per_shard"] == [total] * 2
        assert [e["event"] for e in s["events"] if e["node"] == TARGETS[target]].count("re-registered") == 1
        return
    assert_nothing_lost(s, mode, total)
