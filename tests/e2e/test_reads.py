"""Compressed reads (`compression.pull`) on real processes: a job whose reads carry the change
since each worker's view (`sparse`) ends with the very weights of the same job with full reads;
a job with lossy reads both ways trains; a live shard sends full reads and changes as the view
a reader names says, and refuses a bad one by name."""
import time

import numpy as np
import pytest

from downpour.ps import protocol as P
from downpour.ps.checkpoint import assemble
from tests.conftest import CONFIGS, ask_shard, coordinator_and_shard, last_train_reports

pytestmark = pytest.mark.e2e
MLP = CONFIGS / "digits_mlp.yaml"
# Adagrad, dropout and ReLU: a step moves only the weights of the units it used, so the
# change since a read is a part of the weights, and `sparse` sends less than a full read.
SMALL = ["train.steps=40", "train.log_every=20", "target=null", "cluster.shared_memory=false"]


def test_a_job_reading_by_sparse_ends_with_the_very_weights_of_the_job_with_full_reads(jobs):
    """Two workers held to bsp (their reads parked until a clock completes), reading every 2
    steps, each range replicated: bsp is deterministic, so the two jobs must agree bit for bit."""
    settings = ["workers=2", "consistency.mode=bsp", "train.fetch_every=2", "shards.replication=2"]
    sparse = jobs.run(MLP, *SMALL, *settings, "compression.pull=sparse")
    full = jobs.run(MLP, *SMALL, *settings)
    assert sparse["status"] == full["status"] == "done", (sparse["reason"], full["reason"])
    np.testing.assert_array_equal(assemble(sparse["_run_dir"]), assemble(full["_run_dir"]))
    assert sparse["metrics"] == full["metrics"]
    reads = sparse["reads"]   # a first, full read per worker and shard, then changes
    assert reads["full"] >= 4 and reads["change"] > 0 and full["reads"]["change"] == 0
    received = [sum(r["bytes_received"] for r in last_train_reports(run["_run_dir"]).values()) for run in (sparse, full)]
    assert received[0] < 0.8 * received[1]


def test_a_job_with_topk_pushes_and_reads_trains_on_a_fiftieth_of_the_bytes(jobs):
    """Async and overlapped (a read lands after the next step's compute), 2 workers."""
    both = jobs.run(MLP, "train.steps=150", "train.log_every=50", "target=null", "cluster.shared_memory=false",
                    "compression.codec=topk", "compression.pull=topk")
    assert both["status"] == "done", both["reason"]
    assert both["metrics"]["test_accuracy"] > 0.85
    first_read = assemble(both["_run_dir"]).nbytes                  # each worker's first read is a full one
    for report in last_train_reports(both["_run_dir"]).values():
        assert report["bytes_received"] - first_read < 0.05 * 150 * first_read
        assert report["bytes_sent"] < 0.05 * 150 * first_read
    assert both["reads"]["full"] >= 4 and both["reads"]["change"] > 0


def test_a_live_shard_sends_a_full_read_then_changes_and_refuses_a_bad_view_by_name(tmp_path):
    """Plain SGD (lr 0.1), `sparse` reads: the first read names no view and gets the weights
    and a token; after a push of three keys, a read naming that token gets those three keys
    alone; naming an older token gets a full read again."""
    with coordinator_and_shard(tmp_path, ["optimizer.momentum=0", "compression.pull=sparse"]) as rig:
        initial = rig["initial"]

        def read(view):
            reply = ask_shard(rig, {"op": P.PULL, "from": "worker-0", "clock": 0, "view": view})
            assert reply.op == P.OK, reply.header
            return reply

        first = read(0)
        assert "base" not in first.header and first.header["view"] > 0
        np.testing.assert_array_equal(first.arrays[0], initial)
        keys = np.array([3, 40, initial.size - 1], np.uint32)
        push = ask_shard(rig, {"op": P.PUSH, "from": "worker-0", "clock": 1, "codec": "sparse", "count": 3},
                         [keys, np.ones(3, np.float32)])
        assert push.op == P.OK, push.header
        change = read(first.header["view"])
        assert change.header["base"] == first.header["view"] and change.header["codec"] == "sparse"
        np.testing.assert_array_equal(change.arrays[0], keys)
        np.testing.assert_allclose(change.arrays[1], initial[keys] - np.float32(0.1), rtol=1e-6)
        again = read(first.header["view"])          # a reply lost on the way: the shard moved on
        assert "base" not in again.header and again.header["view"] not in (first.header["view"], change.header["view"])
        bad = ask_shard(rig, {"op": P.PULL, "from": "worker-0", "clock": 0, "view": "7"})
        assert bad.op == P.ERROR and bad.header["reason"].startswith("header field 'view': expected an integer in")
        deadline = time.monotonic() + 10
        while True:   # the shard's heartbeat carries its counts to the coordinator
            shard = next(n for n in rig["control"].status()["nodes"] if n["role"] == "shard")
            if shard["stats"].get("reads", {}).get("full") == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert shard["stats"]["reads"] == {"full": 2, "change": 1, "over_budget": 0, "view_bytes": 4 * initial.size}
