"""Faults rehearsed with the job config's `faults:` section, on real processes: a worker or a
shard killed with SIGKILL, lost and duplicated pushes, a NaN gradient. Stalls, partitions and
replicated shards under failure are in test_chaos.py."""
import json

import numpy as np
import pytest

from downpour.ps import checkpoint
from tests.conftest import CONFIGS

pytestmark = pytest.mark.e2e
MLP = CONFIGS / "digits_mlp.yaml"
FAST_DEATH = ("cluster.heartbeat_interval=0.25", "cluster.heartbeat_timeout=2.5")


@pytest.mark.parametrize("mode", ["async", "ssp", "bsp"])
def test_a_worker_killed_mid_run_is_noticed_and_the_job_still_meets_its_target(jobs, mode):
    kill = "faults=[{kind: kill, role: worker, rank: 1, at_step: 300}]"
    s = jobs.run(MLP, f"consistency.mode={mode}", kill, "train.steps=1500", *FAST_DEATH)
    assert s["status"] == "done", s["reason"]
    assert [e["node"] for e in s["events"] if e["event"] == "dead"] == ["worker-1"]
    assert 2.5 <= s["time_to_notice"][0] < 5.0
    assert s["metrics"]["test_accuracy"] >= 0.97


def test_a_restarted_worker_rejoins_at_its_clock(jobs):
    kill = ("faults=[{kind: kill, role: worker, rank: 1, at_step: 100},"
            " {kind: delay, role: worker, rank: 0, seconds: 0.005, fraction: 1.0}]")  # worker 0 outlasts the restart
    s = jobs.run(MLP, kill, "workers={count: 2, restart: on-failure}", *FAST_DEATH)
    assert s["status"] == "done", s["reason"]
    assert "re-registered" in [e["event"] for e in s["events"] if e["node"] == "worker-1"]
    log = (s["_run_dir"] / "logs" / "worker-1.log").read_text()
    assert "the shards have us at clock" in log          # it carried on, it did not start over
    assert s["pushes_sent"] <= 2 * 1000


def test_a_killed_shard_is_restarted_from_its_checkpoint_and_the_rollback_is_reported(jobs):
    kill = "faults=[{kind: kill, role: shard, rank: 1, at_step: 600}]"
    s = jobs.run(MLP, kill, "checkpoint.every_seconds=0.3", *FAST_DEATH)
    assert s["status"] == "done", s["reason"]
    assert "re-registered" in [e["event"] for e in s["events"] if e["node"] == "shard-1"]
    assert 0 <= s["updates_rolled_back"] < 600
    assert s["metrics"]["test_accuracy"] >= 0.95
    assert "restored from" in (s["_run_dir"] / "logs" / "shard-1.log").read_text()


def test_dropped_and_duplicated_pushes_are_applied_exactly_once(jobs):
    lossy = "faults=[{kind: drop, fraction: 0.03, op: push}, {kind: duplicate, fraction: 0.1, op: push}]"
    s = jobs.run(MLP, lossy, "train.steps=150")
    assert s["status"] == "done", s["reason"]
    assert s["pushes_sent"] == 300
    assert s["updates_per_shard"] == [300, 300]
    assert min(s["duplicates_ignored"]) > 5          # duplicates did arrive, and were not applied
    retries = [json.loads(line).get("retries", 0) for line in (s["_run_dir"] / "metrics.jsonl").open()]
    assert max(retries) > 0                           # dropped pushes were sent again


def test_a_nan_gradient_stops_the_job_naming_the_worker_and_clock_and_spares_the_checkpoint(jobs):
    nan = "faults=[{kind: nan, role: worker, rank: 1, at_step: 250}]"
    s = jobs.run(MLP, nan, "checkpoint.every_seconds=0.2", "train.steps=2000")
    assert s["status"] == "failed"
    assert s["reason"].startswith("worker-1 at clock 250") and "not finite" in s["reason"] or "nan" in s["reason"]
    assert s["_exit"] != 0
    for path in (s["_run_dir"] / "checkpoints").glob("shard-*.npz"):
        arrays, _ = checkpoint.load(path)
        assert np.isfinite(arrays["weights"]).all()


def test_corrupted_pushes_are_refused_then_sent_again(jobs):
    s = jobs.run(MLP, "faults=[{kind: corrupt, fraction: 0.05, op: push}]", "train.steps=200")
    assert s["status"] == "done", s["reason"]
    assert s["updates_per_shard"] == [400, 400]


def test_a_stopped_job_resumes_from_its_checkpoints_without_losing_or_repeating_a_push(jobs):
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT
    slow = "faults=[{kind: delay, seconds: 0.002, fraction: 1.0}]"   # so that we stop it midway
    proc, run_dir = jobs.start(MLP, "train.steps=1500", slow)
    deadline = time.monotonic() + 120
    while True:
        assert time.monotonic() < deadline, "the job made no progress"
        status = subprocess.run([sys.executable, "-P", "-m", "downpour", "status", str(run_dir), "--json"], cwd=ROOT,
                                capture_output=True, text=True)
        if status.returncode == 0 and min((n["stats"].get("step", 0) for n in json.loads(status.stdout)["nodes"]
                                           if n["role"] == "worker"), default=0) > 300:
            break
        time.sleep(0.5)
    subprocess.run([sys.executable, "-P", "-m", "downpour", "stop", str(run_dir)], cwd=ROOT, check=True, capture_output=True)
    stopped = jobs.finish(proc, run_dir)
    assert stopped["status"] == "stopped"
    at_stop = checkpoint.assemble(run_dir)
    _, meta = checkpoint.load(run_dir / "checkpoints" / "shard-0.npz")
    assert 0 < meta["updates"] < 2 * 1500
    s = jobs.run(None, resume=run_dir)
    assert s["status"] == "done", s["reason"]
    assert s["updates_applied"] == s["pushes_applied"] == 2 * 1500      # none lost, none applied twice
    assert "resuming there" in (run_dir / "logs" / "worker-0.log").read_text()
    assert not np.array_equal(checkpoint.assemble(run_dir), at_stop)
