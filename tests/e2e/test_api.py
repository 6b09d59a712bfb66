"""The Python API on real processes: `downpour.launch` and its `Job`, `downpour.connect` (read
only, and as an external worker), `downpour.train`; and weights that are never lost: a run's
weights come out of its checkpoints however it ended, even killed with its launcher."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import downpour
from downpour.ps import checkpoint
from downpour.ps import config as job_config
from downpour.ps.role_env import role_env
from downpour.worker.job import initial_parameters
from tests.conftest import CONFIGS, ROOT, logs, processes_of

pytestmark = pytest.mark.e2e
MLP = CONFIGS / "digits_mlp.yaml"
SMALL = {"model.hidden": [64], "model.dropout": 0}  # the torch example's MLP: Flatten, Linear, ReLU, Linear


@pytest.fixture
def runs(tmp_path):
    """Where the test's runs go; afterwards, not one of their processes may be alive."""
    yield tmp_path
    leftovers = []
    for run_dir in (p for p in tmp_path.iterdir() if p.is_dir()):
        deadline = time.monotonic() + 5
        while processes_of(run_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in processes_of(run_dir):
            leftovers.append(pid)
            os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"processes left behind: {leftovers}"


def initial_weights(cfg: dict) -> dict:
    return dict(initial_parameters(cfg))


def test_launch_returns_a_job_whose_metrics_status_and_weights_follow_it_to_the_end(runs):
    with downpour.launch(MLP, ["train.steps=300", "train.log_every=50"], run_dir=runs / "run") as job:
        assert job.running and not (job.run_dir / "summary.json").exists()   # it returned at once
        records, live, status = [], None, None
        for record in job.metrics():
            records.append(record)
            if live is None and record.get("kind") == "train":
                live, status = job.state_dict(), job.status()          # while it runs
                with downpour.connect(job.run_dir) as reader:           # read only: no worker, no push
                    assert set(reader.pull(["4.bias"])) == {"4.bias"}
                    with pytest.raises(RuntimeError, match="read-only client cannot push"):
                        reader.push({})
                    with pytest.raises(KeyError, match="unknown parameter 'fc.weight'"):
                        reader.pull(["fc.weight"])
        assert not job.running                                           # the metrics ended with the job
        summary = job.wait()
    assert summary["status"] == "done" and summary["metrics"]["test_accuracy"] >= 0.95
    assert status["state"] in ("starting", "running") and {n["role"] for n in status["nodes"]} >= {"shard", "worker"}
    assert {(r["rank"], r["step"]) for r in records if r["kind"] == "train"} >= {(0, 300), (1, 300)}
    assert records[-1]["kind"] == "test" and records[-1]["test_accuracy"] == summary["metrics"]["test_accuracy"]
    final = job.state_dict()
    shapes = {name: a.shape for name, a in initial_weights(job_config.load(job.run_dir / "config.yaml")).items()}
    assert {n: a.shape for n, a in live.items()} == {n: a.shape for n, a in final.items()} == shapes
    assert not np.array_equal(live["1.weight"], final["1.weight"])       # it trained on after the live read
    np.testing.assert_array_equal(final["1.weight"], np.load(job.run_dir / "model" / "weights.npz")["1.weight"])
    assert job.status()["state"] == "done"                               # from the summary, once over
    assert not processes_of(job.run_dir)


def test_a_stopped_long_job_still_gives_its_weights_from_the_checkpoints(runs):
    job = downpour.launch(MLP, {"train.steps": 100_000, "train.log_every": 10}, run_dir=runs / "long")
    with job:
        next(r for r in job.metrics() if r.get("kind") == "train")
        job.stop()
        assert not job.running and not processes_of(job.run_dir)
    summary = job.wait()
    assert summary["status"] == "stopped"
    weights = job.state_dict()
    cfg = job_config.load(job.run_dir / "config.yaml")
    assert not np.array_equal(weights["1.weight"], initial_weights(cfg)["1.weight"])
    assembled = checkpoint.assemble(job.run_dir)
    np.testing.assert_array_equal(np.concatenate([a.ravel() for a in weights.values()]), assembled)


PARENT = """
import sys, downpour
job = downpour.launch(sys.argv[1], {"train.steps": 100_000, "train.log_every": 10}, run_dir=sys.argv[2])
next(r for r in job.metrics() if r.get("kind") == "train")
print("running", flush=True)
sys.stdin.read()   # until its stdin closes (then atexit stops the job) or it is killed
"""


def test_a_job_ends_in_order_when_the_interpreter_that_launched_it_exits_or_is_killed(runs):
    """atexit stops a job whose interpreter ends; one whose interpreter is killed stops itself
    (its launcher holds a pipe from it). Either way the shards checkpoint and nothing is left."""
    parents = {how: subprocess.Popen([sys.executable, "-c", PARENT, str(MLP), str(runs / how)], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for how in ("exits", "killed")}
    try:
        for parent in parents.values():
            assert parent.stdout.readline() == "running\n", parent.stdout.read()
        parents["killed"].kill()
        parents["exits"].stdin.close()
        assert parents["exits"].wait(90) == 0
        assert not processes_of(runs / "exits")                   # atexit waited for the job to end
    finally:
        for parent in parents.values():
            parent.kill()
            parent.wait()
    deadline = time.monotonic() + 60
    while processes_of(runs / "killed") and time.monotonic() < deadline:
        time.sleep(0.1)
    for how in parents:
        summary = json.loads((runs / how / "summary.json").read_text())
        assert summary["status"] == "stopped", how
        assert summary["reason"] == {"exits": "the Python interpreter that launched the job is exiting",
                                     "killed": "the process that launched the job ended"}[how]
        assert checkpoint.load(runs / how / "checkpoints" / "shard-0.npz")[1]["updates"] > 0


def test_train_is_the_one_process_reference_and_takes_overrides_as_a_list_or_a_dict():
    by_list = downpour.train(MLP, ["train.steps=60", "model.hidden=[32]"])
    by_dict = downpour.train(MLP, {"train.steps": 60, "model.hidden": [32]})
    assert by_list["metrics"] == by_dict["metrics"] and by_list["metrics"]["test_accuracy"] > 0.5
    assert {n: a.shape for n, a in by_dict["state_dict"].items()} == \
        {"1.weight": (32, 64), "1.bias": (32,), "4.weight": (10, 32), "4.bias": (10,)}


def test_a_bad_config_or_a_used_run_dir_is_refused_before_anything_starts(runs):
    with pytest.raises(downpour.ConfigError, match=r"^workers.count: expected a positive integer .*got 0$"):
        downpour.launch(MLP, {"workers": 0}, run_dir=runs / "bad")
    assert not (runs / "bad").exists()
    used = runs / "used"
    used.mkdir()
    (used / "config.yaml").write_text("name: x\n")
    with pytest.raises(downpour.JobError, match="already holds a run"):
        downpour.launch(MLP, run_dir=used)


def test_resume_without_a_checkpoint_is_an_error_not_a_fresh_start(runs):
    run_dir = runs / "empty"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(job_config.dump(job_config.load(MLP)))
    done = subprocess.run([sys.executable, "-P", "-m", "downpour", "launch", "--resume", str(run_dir), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "cannot resume" in done.stderr and "shard-0: no checkpoint" in done.stderr
    assert not (run_dir / "logs").exists() or not list((run_dir / "logs").iterdir())   # nothing started


def test_an_external_worker_is_held_to_bsp_and_each_push_is_one_clock(runs):
    """One built-in worker and this test's process as the external one, under BSP: the
    built-in worker can get no further than the clocks we push. With CURVE: the clients find
    the job's keys in its run directory."""
    overrides = {"workers": {"count": 1, "external": 1}, "consistency.mode": "bsp", "train.steps": 20,
                 "cluster.curve": True, **SMALL}
    with downpour.launch(MLP, overrides, run_dir=runs / "bsp") as job:
        with downpour.connect(job.run_dir, worker=True) as me:
            assert me.rank == 1                                   # never the built-in worker's rank
            with pytest.raises(ValueError, match=r"grads\['1.bias'\]: expected shape \(64,\), got \(3,\)"):
                me.push({"1.bias": np.zeros(3)})
            with pytest.raises(KeyError, match="unknown parameter 'bias'"):
                me.push({"bias": np.zeros(3)})
            for _ in range(10):
                me.pull()
                me.push({"3.bias": np.full(10, 0.01, np.float32)})   # the other names: zero gradient
            workers = {n["rank"]: n for n in job.status()["nodes"] if n["role"] == "worker"}
            assert me.clock == 10 and workers[0]["stats"].get("clock", 0) <= 11   # held back by BSP
            assert job.state_dict()["3.bias"].shape == (10,)                   # a read-only client too
            for _ in range(10):
                me.pull()
                me.push({"3.bias": np.full(10, 0.01, np.float32)})
        summary = job.wait(120)
    assert summary["status"] == "done", summary["reason"]
    assert (summary["workers"], summary["external_workers"]) == (1, 1)
    assert summary["updates_applied"] == 20                                  # one averaged update per clock
    assert "worker-1" in [e["node"] for e in summary["events"] if e["event"] == "finished"]


def test_two_torch_workers_train_through_connect_to_the_accuracy_of_the_built_in_ones(runs):
    """tests/e2e/torch_worker.py, the README's example, run twice as plain scripts. Measured
    on digits, 300 steps each of batch 32, hidden 64, seeds 0-2: built-in workers 0.964-0.975,
    these 0.958-0.964 (they draw batches at random, the built-in ones go through epochs)."""
    overrides = {"workers": {"count": 0, "external": 2}, "train.steps": 300, **SMALL}
    with downpour.launch(MLP, overrides, run_dir=runs / "torch") as job:
        scripts = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "e2e" / "torch_worker.py"), str(job.run_dir),
                                     str(part), "2", "300"], cwd=ROOT, env=role_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                   for part in range(2)]
        try:
            said = [s.communicate(timeout=120)[0] for s in scripts]
        finally:
            for s in scripts:
                s.kill()
        summary = job.wait(120)
    assert [s.returncode for s in scripts] == [0, 0], said
    assert summary["status"] == "done", f"{summary['reason']}\n{logs(job.run_dir)}"
    assert summary["pushes_applied"] == 600 and summary["metrics"]["test_accuracy"] >= 0.94


def test_a_run_killed_with_its_launcher_exports_weights_that_load_into_pytorch(jobs):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file
    slow = "faults=[{kind: delay, role: worker, seconds: 0.01, fraction: 1.0}]"
    proc, run_dir = jobs.start(MLP, "train.steps=100000", "checkpoint.every_seconds=0.5", slow, "model.hidden=[64]",
                               "model.dropout=0")
    deadline = time.monotonic() + 60
    paths = [run_dir / "checkpoints" / f"shard-{r}.npz" for r in range(2)]
    while not all(p.exists() and checkpoint.load(p)[1]["updates"] > 0 for p in paths):   # trained, then checkpointed
        assert time.monotonic() < deadline and proc.poll() is None, logs(run_dir)
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)                        # the launcher's whole process group
    proc.wait()
    deadline = time.monotonic() + 10
    while processes_of(run_dir) and time.monotonic() < deadline:   # every role dies with its launcher
        time.sleep(0.05)
    assert not processes_of(run_dir)
    done = subprocess.run([sys.executable, "-P", "-m", "downpour", "export", str(run_dir), "--format", "safetensors"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    said = done.stderr.splitlines()                            # which clock each shard's weights come from
    assert [line.split(": clock ")[0] for line in said] == ["weights: shard-0", "weights: shard-1"], said
    state = load_file(done.stdout.strip())
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    net.load_state_dict(state)                                 # strict: every name and shape matches
    initial = initial_weights(job_config.load(run_dir / "config.yaml"))
    assert not np.array_equal(net[1].weight.detach().numpy(), initial["1.weight"])
