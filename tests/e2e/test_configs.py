"""Every config in configs/ is a job that works: each runs here, through `downpour launch`, on
a short budget, and must finish, lower its training loss and beat chance by a clear margin.

The configs are globbed, so a new config without a short budget below fails until it gets one.
The full-length runs, which must reach each config's own target, are `make results`.
"""
from __future__ import annotations

import functools
import json
import math
import pathlib

import pytest
import yaml

from downpour.worker import datasets
from tests.conftest import CONFIGS

pytestmark = pytest.mark.e2e

FEW = ["train.log_every=20"]
IMAGES = [*FEW, "data.limit_train=3000"]
TEXT = [*FEW, "data.max_chars=150000", "data.seq_len=32", "optimizer.lr=0.01"]

# Overrides that turn each full-length job into one of a few seconds: fewer steps, less data,
# narrower layers; the cluster (2 shards x 2 workers, async) and the data set stay as they are.
SHORT_BUDGETS: dict[str, list[str]] = {
    "digits_logreg": [*FEW, "train.steps=80"],
    "digits_mlp": [*FEW, "train.steps=80"],
    "fashion_logreg": [*IMAGES, "train.steps=80", "train.log_every=5"],  # it learns fast: look early
    "fashion_mlp": [*IMAGES, "train.steps=80", "model.hidden=[128]"],
    "fashion_lenet5": [*IMAGES, "train.steps=80"],
    "fashion_resnet": [*IMAGES, "train.steps=60", "train.batch_size=32", "model.channels=[8, 16]",
                       "model.hidden=32"],
    "mnist1d_gru": [*FEW, "train.steps=300", "train.log_every=100"],
    "jargon_lstm": [*TEXT, "train.steps=80", "model.hidden=64"],
    "jargon_gru": [*TEXT, "train.steps=80", "model.hidden=64"],
    # tables of 2^16 rows instead of 2^22 and 2^20, by rows as in the full jobs
    "fortunes_langid": [*FEW, "train.steps=60", "data.features.buckets=65536", "train.log_every=15"],
    "fortunes_topic": [*FEW, "train.steps=80", "data.features.buckets=65536"],
}

CONFIG_PATHS = sorted(CONFIGS.glob("*.yaml"))


def train_losses(run_dir: pathlib.Path) -> dict[int, list[float]]:
    """Each worker's reported training losses, in the order it reported them."""
    by_rank: dict[int, list[float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        report = json.loads(line)
        if report.get("kind") == "train" and report.get("role") == "worker":
            by_rank.setdefault(report["rank"], []).append(report["loss"])
    return by_rank


@functools.cache
def chance(dataset: str, seq_len: int, max_chars: int | None) -> float:
    """What guessing scores on a data set: 1/classes accuracy, or log2(vocab) bits per character."""
    data = datasets.load(dataset, seq_len=seq_len, max_chars=max_chars)
    return math.log2(data.num_classes) if data.kind == "language_model" else 1.0 / data.num_classes


def test_every_short_budget_names_a_config_that_exists():
    assert set(SHORT_BUDGETS) <= {path.stem for path in CONFIG_PATHS}


def test_every_config_states_the_target_its_full_length_run_must_reach():
    for path in CONFIG_PATHS:
        target = yaml.safe_load(path.read_text()).get("target") or {}
        assert target.get("metric", "").startswith("test_"), f"{path.name} has no test-set target"


@pytest.mark.parametrize("path", CONFIG_PATHS, ids=lambda path: path.stem)
def test_config_runs_on_a_short_budget_lowers_its_loss_and_beats_chance(jobs, path):
    assert path.stem in SHORT_BUDGETS, f"configs/{path.name} has no short budget in {__file__}"
    s = jobs.run(path, *SHORT_BUDGETS[path.stem], timeout=120)
    assert s["status"] == "done", s["reason"]
    assert s["_exit"] == 0

    data = yaml.safe_load((s["_run_dir"] / "config.yaml").read_text())["data"]
    guess = chance(data["dataset"], data["seq_len"], data["max_chars"])
    # Seeded initial weights predict about uniformly: training starts near the guessing loss.
    # (A worker's own first report may already be low: async, the other worker got there first.)
    start = guess * math.log(2) if "test_bpc" in s["metrics"] else -math.log(guess)
    losses = train_losses(s["_run_dir"])
    assert sorted(losses) == list(range(s["workers"]))
    for rank, reported in losses.items():
        assert len(reported) >= 2, f"worker {rank} reported only {reported}"
        first = max(reported[0], start)
        assert reported[-1] < 0.9 * first, f"worker {rank}'s training loss did not fall from {first:.3f}: {reported}"

    if "test_bpc" in s["metrics"]:
        assert s["metrics"]["test_bpc"] < 0.6 * guess
    else:
        assert s["metrics"]["test_accuracy"] > 2 * guess
