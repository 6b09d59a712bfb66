"""The scale simulator's link model (benchmarks/simulate_links.py): what it predicts for a point of
the multi-host grid, that its fit finds the parameters a grid was made with, and which measured
points it calls noise."""
from __future__ import annotations

import math
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from benchmarks import simulate_links as links  # noqa: E402

MODEL_BYTES = 4 * links.HARNESS["params"]
SHARE = {"none": 1.0, "fp16": 0.5, "topk": 0.02}  # payload per update, as a share of the float32 model
TRUTH = links.LinkModel(base_s=1.0e-3, push_s={"fp16": 0.4e-3, "topk": 0.3e-3},
                        read_s={"fp16": 0.6e-3, "topk": 0.2e-3}, efficiency=0.95, overlap=5.0)


def grid(model: links.LinkModel, steps: int = 300) -> dict:
    """A multihost.json whose every cell is what `model` predicts, as the benchmark writes it."""
    updates = steps * links.HARNESS["workers"]
    cells: dict = {}
    for network in ("100mbit", "1gbit", "loopback"):
        for push in SHARE:
            for read in SHARE:
                up, down = SHARE[push] * MODEL_BYTES, SHARE[read] * MODEL_BYTES
                rate = model.samples_per_s(push, read, network, up, down)
                cells.setdefault(network, {})[f"{push}/{read}"] = {
                    "samples_per_s": rate, "samples_per_s_runs": [rate, rate, rate],
                    "client_bytes_sent": up * updates, "client_bytes_received": down * updates}
    return {"figures": {"grid_steps": steps, "grid": cells}}


def test_a_link_bound_point_runs_at_the_rate_times_efficiency_over_the_heavier_direction():
    model = links.LinkModel(1e-6, {}, {}, efficiency=0.9, overlap=math.inf)
    predicted = model.samples_per_s("none", "fp16", "100mbit", push_bytes=300e3, read_bytes=150e3)
    # both workers' links (and both shards', each carrying half of every push) at 12.5 MB/s x 0.9
    assert predicted == pytest.approx(32 * 2 * 12.5e6 * 0.9 / 300e3)


def test_on_loopback_only_the_cpu_costs_count_and_they_add_up_per_codec():
    predicted = TRUTH.samples_per_s("fp16", "topk", "loopback", push_bytes=1e9, read_bytes=1e9)
    assert predicted == pytest.approx(32 / (1.0e-3 + 0.4e-3 + 0.2e-3))


def test_the_overlap_exponent_runs_from_a_serial_sum_to_the_roofline():
    assert links.combine(100.0, 300.0, 1.0) == pytest.approx(1 / (1 / 100 + 1 / 300))
    assert links.combine(100.0, 300.0, math.inf) == 100.0
    assert links.combine(100.0, 100.0, 4.0) == pytest.approx(100 / 2 ** 0.25)
    assert links.combine(100.0, math.inf, 4.0) == 100.0


def test_the_fit_finds_the_parameters_the_grid_was_made_with():
    model, report = links.learn(grid(TRUTH))
    assert model.efficiency == pytest.approx(TRUTH.efficiency, rel=1e-3)
    assert model.overlap == pytest.approx(TRUTH.overlap, rel=1e-2)
    assert model.base_s == pytest.approx(TRUTH.base_s, rel=1e-3)
    for codec in ("fp16", "topk"):
        assert model.push_s[codec] == pytest.approx(TRUTH.push_s[codec], abs=1e-6)
        assert model.read_s[codec] == pytest.approx(TRUTH.read_s[codec], abs=1e-6)
    assert len(report["points"]) == 27
    assert report["max_abs_error"]["1gbit"] < 1e-3 and report["max_abs_error"]["100mbit"] < 1e-3
    assert report["noisy_points"] == []


def test_points_whose_rounds_disagree_or_that_beat_their_loopback_run_are_called_noise():
    measured = grid(TRUTH)
    cells = measured["figures"]["grid"]
    cells["1gbit"]["topk/topk"]["samples_per_s_runs"] = [10_000, 20_000, 15_000]
    cells["100mbit"]["topk/topk"]["samples_per_s"] = 2 * cells["loopback"]["topk/topk"]["samples_per_s"]
    _, report = links.learn(measured)
    assert set(report["noisy_points"]) == {"1gbit topk/topk", "100mbit topk/topk"}
    faster = next(p for p in report["points"] if p["network"] == "100mbit" and p["pair"] == "topk/topk")
    assert faster["faster_than_loopback"]


def test_a_network_the_model_cannot_read_is_refused_by_name():
    with pytest.raises(ValueError, match=r"'fast'.*tc rate"):
        links.points({"figures": {"grid_steps": 10, "grid": {"fast": {}}}})
