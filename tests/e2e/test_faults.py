"""Faults rehearsed with the job config's `faults:` section, on real processes: a worker or a
shard killed with SIGKILL, lost and duplicated pushes, a NaN gradient."""
import json

import numpy as np
import pytest

from ps import checkpoint
from tests.conftest import CONFIGS

pytestmark = pytest.mark.e2e
MLP = CONFIGS / "digits_mlp.yaml"
FAST_DEATH = ("cluster.heartbeat_interval=0.25", "cluster.heartbeat_timeout=2.5")


@pytest.mark.parametrize("mode", ["async", "ssp", "bsp"])
def test_a_worker_killed_mid_run_is_noticed_and_the_job_still_meets_its_target(jobs, mode):
    kill = "faults=[{kind: kill, role: worker, rank: 1, at_step: 300}]"
    s = jobs.run(MLP, f"consistency.mode={mode}", kill, *FAST_DEATH)
    assert s["status"] == "done", s["reason"]
    assert [e["node"] for e in s["events"] if e["event"] == "dead"] == ["worker-1"]
    assert 2.5 <= s["time_to_notice"][0] < 5.0
    assert s["metrics"]["test_accuracy"] >= 0.97


def test_a_restarted_worker_rejoins_at_its_clock(jobs):
    kill = "faults=[{kind: kill, role: worker, rank: 1, at_step: 100}]"
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
    lossy = "faults=[{kind: drop, fraction: 0.05, op: push}, {kind: duplicate, fraction: 0.05, op: push}]"
    s = jobs.run(MLP, lossy, "train.steps=300")
    assert s["status"] == "done", s["reason"]
    assert s["pushes_sent"] == 600
    assert s["updates_per_shard"] == [600, 600]
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
