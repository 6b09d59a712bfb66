"""Embedding tables by rows (`compression.rows`): a worker reads only the rows its coming
batches use and pushes only the rows its batches touched, and trains exactly as if it moved
every key; a live shard serves reads and pushes by key spans and refuses bad ones by name."""

import numpy as np
import pytest

from downpour.ps import protocol as P
from downpour.ps import spans
from downpour.ps.checkpoint import assemble
from tests.conftest import CONFIGS, ask_shard, coordinator_and_shard, last_train_reports

pytestmark = pytest.mark.e2e
LSTM = CONFIGS / "jargon_lstm.yaml"
# A small char LSTM with a 20 000-row table of hashed trigrams: 97% of its weights, of which a
# batch of 8 x 32 characters reads a few hundred rows. Two shards: the boundary cuts the table.
SMALL = ["workers=1", "shards=2", "train.steps=30", "model.hidden=32", "model.dropout=0",
         "model.ngram_buckets=20000", "data.max_chars=200000", "data.seq_len=32", "train.batch_size=8",
         "train.log_every=10", "target=null"]


@pytest.mark.parametrize("settings", [
    # async, overlapped (a read serves the step after next), pushes through shared memory; Adagrad,
    # where a zero gradient changes nothing, so the shards step only the rows pushed
    ["consistency.mode=async", "optimizer={type: adagrad, lr: 0.05}"],
    # ssp over the wire, pushing every 2 steps and reading every 3 (a read serves 3 batches);
    # Adam (the config's), which steps every key; each range's replica gets the pushes by rows
    ["consistency.mode=ssp", "cluster.shared_memory=false", "train.push_every=2", "train.fetch_every=3",
     "shards.replication=2"],
], ids=["async-overlap-shm-adagrad", "ssp-wire-push2-fetch3-adam-replicated"])
def test_a_job_by_rows_ends_with_the_very_weights_of_the_job_that_moves_every_key(jobs, settings):
    by_rows = jobs.run(LSTM, *SMALL, *settings, "compression.rows=true")
    dense = jobs.run(LSTM, *SMALL, *settings)
    assert by_rows["status"] == dense["status"] == "done", (by_rows["reason"], dense["reason"])
    np.testing.assert_array_equal(assemble(by_rows["_run_dir"]), assemble(dense["_run_dir"]))
    assert by_rows["metrics"] == dense["metrics"]
    if "cluster.shared_memory=false" in settings:   # what crossed the sockets
        rows, every = last_train_reports(by_rows["_run_dir"])[0], last_train_reports(dense["_run_dir"])[0]
        first = assemble(dense["_run_dir"]).nbytes              # the first read is always whole
        assert rows["bytes_received"] - first < 0.1 * (every["bytes_received"] - first)
        assert rows["bytes_sent"] < 0.1 * every["bytes_sent"]


def test_a_model_without_an_embedding_table_is_refused_by_rows_before_anything_starts(jobs, tmp_path):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-P", "-m", "downpour", "launch", str(CONFIGS / "digits_logreg.yaml"),
                          "--run-dir", str(tmp_path / "run"), "--set", "compression.rows=true"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "compression.rows: the model (Sequential) has no embedding table to read by rows" in out.stderr


def test_a_live_shard_reads_and_pushes_by_key_spans_and_refuses_bad_spans_by_name(tmp_path):
    """Plain SGD (lr 0.1): a push by spans moves exactly those keys; a read by spans returns
    exactly those keys, packed; every malformed request gets an ERROR reply and changes nothing."""
    with coordinator_and_shard(tmp_path, ["optimizer.momentum=0"]) as rig:
        n, initial = rig["initial"].size, rig["initial"]

        def ask(header, arrays=()):
            return ask_shard(rig, header, arrays)

        def read(wanted=None):
            extra = {} if wanted is None else {"read_spans": spans.pack(wanted)}
            reply = ask({"op": P.PULL, "from": "client-0", "clock": 0, **extra})
            assert reply.op == P.OK, reply.header
            return reply.arrays[0]

        wanted = (np.array([3, 100, n - 2]), np.array([7, 110, n]))
        np.testing.assert_array_equal(read(wanted), np.concatenate([initial[3:7], initial[100:110], initial[-2:]]))

        pushed = (np.array([10, 40]), np.array([12, 43]))
        values = np.array([1, 2, 3, 4, 5], np.float32)
        ok = ask({"op": P.PUSH, "from": "worker-0", "clock": 1, "grad_spans": spans.pack(pushed)}, [values])
        assert ok.op == P.OK, ok.header
        after = read()
        keys = spans.positions(*pushed)
        np.testing.assert_array_equal(np.flatnonzero(after != initial), keys)
        np.testing.assert_allclose(after[keys], initial[keys] - np.float32(0.1) * values, rtol=1e-6)

        outside = spans.pack((np.array([n - 1]), np.array([n + 1])))
        for header, arrays, reason in [
            ({"op": P.PULL, "clock": 0, "read_spans": outside}, [],
             f"header field 'read_spans': spans [{n - 1}, {n + 1}) reach outside the range [0, {n})"),
            ({"op": P.PUSH_PULL, "clock": 2, "grad_spans": spans.pack(pushed), "read_spans": b"\x01"}, [values],
             "header field 'read_spans': spans of 1 bytes: expected at most 32768 (gap, length) pairs"),
            ({"op": P.PUSH, "clock": 2, "grad_spans": spans.pack(pushed)}, [values[:4]],
             "push of 5 keys by spans needs one float32 array of shape (5,)"),
            ({"op": P.PUSH, "clock": 2, "grad_spans": spans.pack(pushed), "codec": "fp16", "exponent": 0},
             [values.astype(np.float16)], "push with both 'codec' and 'grad_spans'"),
        ]:
            bad = ask({"from": "worker-0", **header}, arrays)
            assert bad.op == P.ERROR and reason in bad.header["reason"], bad.header
        np.testing.assert_array_equal(read(), after)        # nothing applied, still serving
