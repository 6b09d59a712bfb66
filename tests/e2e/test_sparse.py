"""Sparse jobs on real processes (hashed word n-grams of the fortunes_topic texts, a table of
2^15 rows): a job by rows applies exactly the updates of the same job moving the whole table,
under FTRL and Adagrad; a lazy rule by rows trains differently, and the test says how; a shard
killed with SIGKILL under replication 2 loses no acknowledged row update."""
import numpy as np
import pytest

from downpour.model.flat import FlatParameters
from downpour.ps.checkpoint import assemble
from downpour.worker import datasets, models
from tests.conftest import CONFIGS, Jobs, last_train_reports

pytestmark = pytest.mark.e2e
TOPIC = CONFIGS / "fortunes_topic.yaml"
BUCKETS, BATCH, STEPS = 1 << 15, 16, 24
# One worker, so that a run is deterministic; two shards, whose boundary cuts the table.
SMALL = ["workers=1", "shards=2", f"train.steps={STEPS}", f"train.batch_size={BATCH}", "train.log_every=8",
         f"data.features.buckets={BUCKETS}", "target=null"]
FTRL = [*SMALL, "model={type: sparse_logreg}", "optimizer={type: ftrl, alpha: 0.5, beta: 0.1, l1: 0.001}"]
FAST_DEATH = ("cluster.heartbeat_interval=0.25", "cluster.heartbeat_timeout=2.5")


@pytest.fixture(scope="module")
def module_jobs(tmp_path_factory):
    j = Jobs(tmp_path_factory.mktemp("sparse"))
    yield j
    assert not j.cleanup(), "processes left behind"


def _pair(jobs, settings):
    """The job by rows and the job moving the whole table, run side by side."""
    started = [jobs.start(TOPIC, *settings, f"compression.rows={rows}") for rows in ("true", "false")]
    return [jobs.finish(proc, run_dir, timeout=180) for proc, run_dir in started]


@pytest.fixture(scope="module")
def ftrl(module_jobs):
    """sparse_logreg with FTRL, async and overlapped, through shared memory: by rows, and moving
    the whole table."""
    return _pair(module_jobs, FTRL)


def _same_updates(by_rows, whole):
    assert by_rows["status"] == whole["status"] == "done", (by_rows["reason"], whole["reason"])
    np.testing.assert_array_equal(assemble(by_rows["_run_dir"]), assemble(whole["_run_dir"]))
    assert by_rows["metrics"] == whole["metrics"]
    # The shards stepped only the keys pushed: a small share of what the whole table costs.
    assert sum(by_rows["key_updates_per_shard"]) < 0.2 * sum(whole["key_updates_per_shard"])


def test_ftrl_by_rows_applies_exactly_the_updates_of_the_job_moving_the_whole_table(ftrl):
    _same_updates(*ftrl)


def test_adagrad_by_rows_over_the_wire_applies_exactly_the_updates_of_the_whole_table(jobs):
    """fasttext (the config's model) with Adagrad; bsp over the sockets (each clock's mean
    stepped at the rows pushed), pushing every 2 steps and reading every 3; by rows, a small
    share of the bytes cross them."""
    settings = [*SMALL, "consistency.mode=bsp", "cluster.shared_memory=false", "train.push_every=2",
                "train.fetch_every=3"]
    by_rows, whole = _pair(jobs, settings)
    _same_updates(by_rows, whole)
    rows, every = last_train_reports(by_rows["_run_dir"])[0], last_train_reports(whole["_run_dir"])[0]
    first = assemble(whole["_run_dir"]).nbytes              # the first read is always whole
    assert rows["bytes_received"] - first < 0.1 * (every["bytes_received"] - first)
    assert rows["bytes_sent"] < 0.1 * every["bytes_sent"]


def _table(run_dir) -> np.ndarray:
    """The final (buckets, classes) table of a sparse_logreg run."""
    net = models.build({"type": "sparse_logreg"}, {"input_shape": (BUCKETS,), "num_classes": 43,
                                                    "kind": "classification"}, seed=0)
    return FlatParameters(net.named_parameters()).unflatten(assemble(run_dir))["bag.weight"]


def _rows_pushed_once() -> np.ndarray:
    """The table rows exactly one of the worker's pushes carried (one batch a push)."""
    data = datasets.load("fortunes_topic", features={"kind": "word", "n_min": 1, "n_max": 2, "buckets": BUCKETS})
    batches = data.batches(0, 1, BATCH, seed=0)
    counts = np.zeros(BUCKETS, np.int64)
    for _ in range(STEPS):
        x, _ = next(batches)
        counts[np.unique(x.ids)] += 1
    return np.flatnonzero(counts == 1)


def test_a_lazy_rule_by_rows_moves_a_row_only_when_a_push_carries_it(jobs):
    """lazy_adam by rows against the same job moving the whole table (where the shards step
    every key, as Adam). What differs: a row that one push carried took one Adam step, at most
    lr, and stayed; moving the whole table, Adam kept moving it on its momentum afterwards."""
    lr = 0.01
    lazy, whole = _pair(jobs, [*SMALL, "model={type: sparse_logreg}", f"optimizer={{type: lazy_adam, lr: {lr}}}"])
    assert lazy["status"] == whole["status"] == "done", (lazy["reason"], whole["reason"])
    once = _rows_pushed_once()
    assert once.size > 100
    moved = {name: np.abs(_table(s["_run_dir"])[once]).max(axis=1) for name, s in (("lazy", lazy), ("whole", whole))}
    assert np.all(moved["lazy"] <= lr * 1.001)              # one step of Adam: at most lr
    assert np.mean(moved["whole"] > lr * 1.001) > 0.5       # most drifted on past it
    assert sum(lazy["key_updates_per_shard"]) < 0.2 * sum(whole["key_updates_per_shard"])


def test_a_shard_killed_under_replication_loses_no_acknowledged_row_update(jobs, ftrl):
    """SIGKILL shard 0 after 10 updates: its backup on shard 1 takes over range 0, the worker's
    unanswered push goes there and is applied once, and the job ends with the very model of
    the run nobody killed (the same test metrics, to the last bit of the loss)."""
    kill = "faults=[{kind: kill, role: shard, rank: 0, at_step: 10}]"
    s = jobs.run(TOPIC, *FTRL, "compression.rows=true", "shards={count: 2, replication: 2}", kill, *FAST_DEATH)
    assert s["status"] == "done", s["reason"]
    assert [e["node"] for e in s["events"] if e["event"] == "dead"] == ["shard-0"]
    assert "promoted" in (s["_run_dir"] / "logs" / "shard-1.log").read_text()
    assert s["pushes_sent"] == STEPS and s["updates_per_shard"] == [STEPS, STEPS]
    assert s["metrics"] == ftrl[0]["metrics"]


def test_a_job_whose_shards_would_exceed_their_memory_budget_is_refused_before_anything_starts(tmp_path):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-P", "-m", "downpour", "launch", str(TOPIC), "--run-dir", str(tmp_path / "run"),
                          "--set", "shards.memory_mb=40"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and not (tmp_path / "run" / "logs").exists()
    # 2^20 rows x 16 and Adagrad's sum: 128 MiB over 2 shards, 64 MiB each
    assert "shards.memory_mb: shard 0 would hold 64.0 MB" in out.stderr and "use shards.count >= 4" in out.stderr
