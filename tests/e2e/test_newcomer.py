"""A newcomer's flow, as the README tells it: launch, watch, plot, export, evaluate, and load the
export into PyTorch with matching predictions; early stopping keeps the best weights."""
import json
import subprocess
import sys

import numpy as np
import pytest

from downpour.ps import export
from tests.conftest import CONFIGS, ROOT

pytestmark = pytest.mark.e2e
torch = pytest.importorskip("torch")


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-P", "-m", "downpour", *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_export_plot_eval_and_pytorch_agree_with_the_run(jobs):
    s = jobs.run(CONFIGS / "digits_mlp.yaml", "train.steps=300")
    run_dir = s["_run_dir"]
    assert s["status"] == "done"
    npz = run_dir / "model" / "weights.npz"
    safetensors = cli("export", str(run_dir), "--format", "safetensors").strip()
    ours = export.load(npz)
    for name, array in export.load(safetensors).items():
        np.testing.assert_array_equal(array, ours[name])
    width = ours["1.bias"].shape[0]   # the config's hidden layer, as exported
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                              torch.nn.Linear(width, 10))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in ours.items()})
    net.eval()
    from downpour.worker.datasets import load
    data = load("digits")
    with torch.no_grad():
        predictions = net(torch.from_numpy(data.x_test)).argmax(1).numpy()
    assert (predictions == data.y_test).mean() == pytest.approx(s["metrics"]["test_accuracy"])
    assert f"test_accuracy {s['metrics']['test_accuracy']:.4f}" in cli("eval", str(run_dir))
    png = cli("plot", str(run_dir)).strip()
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_early_stopping_ends_the_job_and_keeps_the_best_weights(jobs):
    stop = "eval={every: 25, early_stopping: {patience: 3, metric: val_loss, mode: min}}"
    s = jobs.run(CONFIGS / "digits_mlp.yaml", "data.validation=0.2", stop, "train.steps=20000",
                 "optimizer.lr=0.2")
    assert s["status"] == "done", s["reason"]
    assert s["reason"].startswith("early stopping: val_loss best")
    assert s["pushes_sent"] < 2 * 20000
    evals = [json.loads(line) for line in (s["_run_dir"] / "metrics.jsonl").open() if '"kind": "val"' in line]
    assert len(evals) >= 4
    best = min(e["val_loss"] for e in evals)
    # The exported weights are the best seen: the best periodic ones, or the final ones if better still.
    assert s["metrics"]["val_loss"] == pytest.approx(best, rel=1e-5) or s["metrics"]["val_loss"] < best
