"""End to end: real coordinator, shard, evaluator and worker processes talking ZeroMQ over
loopback TCP, started by `downpour launch` exactly as a user starts them."""

import numpy as np
import pytest

from downpour.ps import config as job_config
from downpour.ps.checkpoint import assemble
from downpour.worker.local import train_local
from tests.conftest import CONFIGS, last_train_reports

pytestmark = pytest.mark.e2e
MLP = CONFIGS / "digits_mlp.yaml"


@pytest.mark.parametrize("mode", ["async", "ssp", "bsp"])
def test_two_shards_and_two_workers_train_the_digits_mlp_to_97_percent(jobs, mode):
    s = jobs.run(MLP, f"consistency.mode={mode}", "consistency.staleness=2")
    assert s["status"] == "done", s["reason"]
    assert s["_exit"] == 0
    assert (s["workers"], s["shards"], s["consistency"]["mode"]) == (2, 2, mode)
    assert s["metrics"]["test_accuracy"] >= 0.97
    assert s["target"]["met"] is True
    if mode == "ssp":
        assert max(int(k) for k in s["read_staleness"]) <= 2
    if mode == "bsp":
        assert s["updates_applied"] == 1000         # one averaged update per clock
        assert set(s["read_staleness"]) == {"0"}


def test_async_loses_no_update_every_push_sent_is_applied(jobs):
    s = jobs.run(MLP, "train.steps=120", "train.push_every=2", "train.fetch_every=3")
    assert s["status"] == "done"
    assert s["pushes_sent"] == 2 * 60
    assert s["updates_applied"] == s["pushes_sent"] == s["pushes_applied"]
    assert s["updates_per_shard"] == [120, 120]


@pytest.mark.parametrize("workers, shards", [(2, 1), (2, 3), (3, 1), (3, 3)])
def test_bsp_with_k_workers_equals_one_process_with_k_times_the_batch(jobs, workers, shards):
    per_worker = 12
    common = ["consistency.mode=bsp", "train.steps=50", "model.hidden=[32]", "model.dropout=0",
              "optimizer={type: sgd, lr: 0.05, momentum: 0.9, nesterov: true}"]
    s = jobs.run(MLP, *common, f"workers={workers}", f"shards={shards}", f"train.batch_size={per_worker}")
    assert s["status"] == "done", s["reason"]
    distributed = assemble(s["_run_dir"])
    cfg = job_config.load(MLP, common + [f"train.batch_size={per_worker * workers}"])
    job, _ = train_local(cfg)
    assert np.abs(distributed - job.flat.data).max() <= 1e-5
    assert np.abs(distributed - job.flat.data).max() < np.abs(job.flat.data).max() * 1e-4


def test_ssp_holds_its_bound_when_one_worker_is_slowed_on_purpose(jobs):
    slow = "faults=[{kind: delay, role: worker, rank: 1, seconds: 0.03, fraction: 1.0}]"
    s = jobs.run(MLP, "consistency.mode=ssp", "consistency.staleness=2", "train.steps=80", slow)
    assert s["status"] == "done"
    gaps = {int(k): v for k, v in s["read_staleness"].items()}
    assert max(gaps) <= 2          # never a read over the bound
    assert gaps.get(2, 0) > 10     # and the fast worker did run up against it


def test_a_learning_rate_schedule_runs_the_same_on_the_shards_as_in_one_process(jobs):
    """Each shard derives the rate from its own update count, so BSP still equals one process."""
    common = ["consistency.mode=bsp", "train.steps=40", "model.hidden=[32]", "model.dropout=0",
              "optimizer={type: sgd, lr: 0.1, schedule: cosine, final_lr: 0.01}"]
    s = jobs.run(MLP, *common, "workers=2", "shards=2", "train.batch_size=12")
    assert s["status"] == "done", s["reason"]
    cfg = job_config.load(MLP, common + ["train.batch_size=24"])
    job, _ = train_local(cfg)
    np.testing.assert_allclose(assemble(s["_run_dir"]), job.flat.data, atol=1e-5)
    constant = job_config.load(MLP, common[:-1] + ["optimizer={type: sgd, lr: 0.1}", "train.batch_size=24"])
    assert np.abs(train_local(constant)[0].flat.data - job.flat.data).max() > 1e-3  # the schedule mattered


def _bytes_pushed(run_dir) -> int:
    return sum(r["bytes_sent"] for r in last_train_reports(run_dir).values())


@pytest.mark.parametrize("codec, share", [("fp16", 0.5), ("topk", 0.02), ("onebit", 1 / 32)])
def test_compressed_pushes_train_the_digits_mlp_on_a_fraction_of_the_bytes(jobs, codec, share):
    wire = "cluster.shared_memory=false"  # compression is for the network: count what crosses it
    squeezed = jobs.run(MLP, "train.steps=400", wire, f"compression.codec={codec}")
    assert squeezed["status"] == "done", squeezed["reason"]
    assert squeezed["updates_applied"] == squeezed["pushes_sent"] == 800
    dense = squeezed["pushes_sent"] * assemble(squeezed["_run_dir"]).size * 4   # every push in float32
    assert _bytes_pushed(squeezed["_run_dir"]) / dense == pytest.approx(share, rel=0.05)
    assert squeezed["metrics"]["test_accuracy"] >= 0.95
