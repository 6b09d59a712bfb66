"""Issue #16: a user's own model, data and loss, named by path in the job config, loaded the same
way by every role of a real cluster.

The user's directory (outside the repository, off `sys.path`) holds `mynet.py` and the job
config; it and the directory `downpour` is started from (a third one) also hold files named
`model.py`, `ps.py`, `worker.py` and `downpour.py` that raise on import: if any process
imported one of them instead of ours, or imported the user's directory's modules by name, the
job would fail.
"""
import subprocess
import sys

import pytest

from downpour.ps.role_env import role_env

pytestmark = pytest.mark.e2e

MYNET = '''\
"""A two-branch network on digits stored as memory-mapped .npy files, with a label-smoothed loss."""
import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np

from downpour.model import functional as F
from downpour.model import nn

HERE = Path(__file__).parent


class TwoBranch(nn.Module):
    """A wide shallow branch and a narrow deep one over the pixels, summed, then scaled by a learnt
    gain over a learnt temperature: two 0-d parameters, divided one by the other."""

    def __init__(self, inputs, hidden, classes):
        super().__init__()
        self.wide = nn.Linear(inputs, hidden)
        self.narrow = nn.Linear(inputs, hidden // 2)
        self.deep = nn.Linear(hidden // 2, hidden)
        self.head = nn.Linear(hidden, classes)
        self.gain = nn.Parameter(np.asarray(1.0, np.float32))
        self.temperature = nn.Parameter(np.asarray(1.0, np.float32))

    def forward(self, x):
        x = x.flatten(1)
        shallow = self.wide(x).tanh()
        deep = self.deep(self.narrow(x).relu()).relu()
        return self.head(shallow + deep) * (self.gain / self.temperature)


def build(hidden=32):
    return TwoBranch(64, hidden, 10)


def _digits():
    spec = importlib.util.find_spec("sklearn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path) as stream:
        table = np.loadtxt(stream, delimiter=",", dtype=np.float32)
    return table[:, :64] / 16.0, table[:, 64].astype(np.int64)


def _written_once(path, make):
    """Every role calls load(): the first writes the file (atomically), then all map it."""
    if not path.exists():
        temporary = path.with_name(f".{path.stem}.{os.getpid()}.npy")
        np.save(temporary, make())
        os.replace(temporary, path)
    return np.load(path, mmap_mode="r")


def load(test=360):
    x = _written_once(HERE / "digits_x.npy", lambda: _digits()[0])
    y = _written_once(HERE / "digits_y.npy", lambda: _digits()[1])
    return {"train": (x[test:], y[test:]), "test": (x[:test], y[:test])}


def loss(output, target, smoothing=0.1):
    """Label-smoothed cross-entropy, written with the engine's ops."""
    n, classes = output.shape
    soft = np.full((n, classes), smoothing / classes, np.float32)
    soft[np.arange(n), target] += 1.0 - smoothing
    return -(F.log_softmax(output) * soft).sum() / n
'''

JOB = """\
name: mynet
model: {factory: mynet.py:build, hidden: 32}
data: {factory: mynet.py:load}
loss: mynet.py:loss
workers: 2
shards: 2
optimizer: {type: adam, lr: 0.01}
train: {steps: 200, batch_size: 32, log_every: 100}
"""


def decoys(directory):
    directory.mkdir(exist_ok=True)
    for name in ("model", "ps", "worker", "downpour"):
        (directory / f"{name}.py").write_text(f"raise RuntimeError('{name}.py in {directory} was imported')\n")
    return directory


@pytest.fixture
def dirs(tmp_path):
    user, elsewhere = decoys(tmp_path / "user"), decoys(tmp_path / "elsewhere")
    (user / "mynet.py").write_text(MYNET)
    (user / "job.yaml").write_text(JOB)
    return user, elsewhere


def downpour(*args, cwd):
    return subprocess.run([sys.executable, "-P", "-m", "downpour", *args], cwd=cwd, capture_output=True, text=True,
                          env=role_env(), timeout=120)


def test_launch_trains_a_users_model_data_and_loss_on_two_shards_and_two_workers(jobs, dirs):
    user, elsewhere = dirs
    summary = jobs.run(user / "job.yaml", cwd=elsewhere)
    assert summary["_exit"] == 0 and summary["status"] == "done", summary["_output"]
    assert (summary["shards"], summary["workers"]) == (2, 2)
    assert summary["metrics"]["test_accuracy"] >= 0.9  # chance is 0.1; 0.92-0.96 seen
    assert summary["metrics"]["test_loss"] < 1.0  # label smoothing 0.1 keeps it above ~0.5
    assert (user / "digits_x.npy").exists() and (user / "digits_y.npy").exists()
    run_dir = summary["_run_dir"]
    assert f"factory: {user}/mynet.py:build" in (run_dir / "config.yaml").read_text()
    logs = {path.stem: path.read_text() for path in (run_dir / "logs").glob("*.log")}
    for role in ("coordinator-0", "evaluator-0", "worker-0", "worker-1"):
        assert f"plugins INFO loaded {user}/mynet.py" in logs[role], role
    for role in ("shard-0", "shard-1"):
        assert "mynet" not in logs[role], f"{role} loaded the user's code"
    scored = downpour("eval", str(run_dir), cwd=elsewhere)  # the verbs find the plug-ins from the run alone
    assert scored.returncode == 0, scored.stderr
    assert scored.stdout.startswith(f"test_loss {summary['metrics']['test_loss']:.4f}, test_accuracy ")
    trained = downpour("train", str(user / "job.yaml"), "--set", "train.steps=30", cwd=elsewhere)
    assert trained.returncode == 0 and "test_accuracy" in trained.stdout, trained.stderr


@pytest.mark.parametrize("old, new, line", [
    ("        deep = self.deep(self.narrow(x).relu()).relu()", "        deep = self.deep(self.narow(x).relu()).relu()",
     31),
    ("def build(hidden=32):", "def build(hidden=32)", 35),
], ids=["misspelt-layer-in-forward", "syntax-error"])
def test_validate_and_launch_refuse_a_broken_user_file_naming_its_file_and_line(dirs, old, new, line):
    user, elsewhere = dirs
    assert old in MYNET
    (user / "mynet.py").write_text(MYNET.replace(old, new))
    checked = downpour("validate", str(user / "job.yaml"), cwd=elsewhere)
    assert checked.returncode != 0
    assert f"{user}/mynet.py, line {line}" in checked.stderr, checked.stderr
    launched = downpour("launch", str(user / "job.yaml"), "--run-dir", str(elsewhere / "run"), "--quiet", cwd=elsewhere)
    assert launched.returncode != 0 and f"{user}/mynet.py, line {line}" in launched.stderr
    assert not (elsewhere / "run").exists()  # nothing started
