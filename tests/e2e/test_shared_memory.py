"""On one host, workers and shards share arrays instead of copying them through sockets: the
numbers are exactly those of the wire, and the wire is still there when memory cannot be shared."""

import numpy as np
import pytest

from downpour.ps.checkpoint import assemble
from tests.conftest import CONFIGS, last_train_reports

pytestmark = pytest.mark.e2e
MLP = CONFIGS / "digits_mlp.yaml"
BSP = ["consistency.mode=bsp", "train.steps=60", "model.hidden=[32]", "model.dropout=0", "train.batch_size=16"]


def test_a_local_cluster_moves_no_array_through_its_sockets(jobs):
    s = jobs.run(MLP, "train.steps=200")
    assert s["status"] == "done", s["reason"]
    reports = last_train_reports(s["_run_dir"])
    model_bytes = assemble(s["_run_dir"]).nbytes
    assert len(reports) == 2
    # Only the very first read travels: it is the one that tells a worker where the shard's memory is.
    assert all(r["bytes_sent"] == 0 and r["bytes_received"] == model_bytes for r in reports.values()), reports
    assert s["updates_applied"] == 400


def test_shared_memory_and_the_wire_give_bit_identical_weights_under_bsp(jobs):
    shared = jobs.run(MLP, *BSP, "shards=3", name="shared")
    wire = jobs.run(MLP, *BSP, "shards=3", "cluster.shared_memory=false", name="wire")
    assert shared["status"] == wire["status"] == "done"
    assert all(r["bytes_sent"] > 0 for r in last_train_reports(wire["_run_dir"]).values())
    np.testing.assert_array_equal(assemble(shared["_run_dir"]), assemble(wire["_run_dir"]))


def test_compressed_pushes_take_the_wire_while_reads_still_come_from_shared_memory(jobs):
    s = jobs.run(MLP, "train.steps=200", "compression.codec=fp16")
    assert s["status"] == "done", s["reason"]
    reports = last_train_reports(s["_run_dir"]).values()
    model_bytes = assemble(s["_run_dir"]).nbytes
    assert all(r["bytes_sent"] > 0 and r["bytes_received"] == model_bytes for r in reports)
    assert s["metrics"]["test_accuracy"] >= 0.9
