"""A scale model beyond this machine: predicted updates/s for 10-1000 workers and 1-100 shards.

An analytic closed queueing model, solved by exact Mean Value Analysis (Reiser & Lavenberg):
N workers cycle between a delay station (compute a gradient, then the network round trip)
and the shards, which every update visits (each shard applies its slice, the shards work in
parallel, so the station's service time is one shard's). The knobs come from measurements:

- `step_seconds`: one worker's gradient step, from `cluster.json` (the 1-worker ceiling);
- per-message cost and memory-path bandwidth of a PUSH+PULL round trip, a least-squares line
  through downpour's medians in `wire.json` (64 KiB, 4 MiB, 16 MiB): t(b) = a + b / bw;
- the shard's share of a round trip (`SHARD_SHARE`): receive, apply the rule, send;
- on one machine, the workers and shards share `cores`: compute slows by the over-subscription.

On a network, a round trip adds 2 x latency and the bytes at the link's bandwidth (full duplex:
the push and the pull overlap); a shard serves at the slower of its CPU and its link.

    python benchmarks/simulate.py [--bandwidth-gbit 10] [--latency-us 50] [--model mlp]

Checked against the 1-4 worker points of `cluster.json` measured with every array on the wire
(`cluster.shared_memory: false`, as between hosts; same machine, loopback,
2 cores); writes benchmarks/results/simulate.json and benchmarks/results/simulate.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import pathlib
import sys
from typing import Any

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

log = logging.getLogger("benchmarks.simulate")

SHARD_SHARE = 0.5  # of a loopback round trip's cost, spent in the shard (it receives, updates, sends)
MODEL_BYTES = {"mlp": 669_706 * 4, "lenet5": 61_706 * 4}  # float32 parameters of the benchmark jobs
WORKERS = (10, 20, 50, 100, 200, 500, 1000)
SHARDS = (1, 2, 5, 10, 20, 50, 100)


@dataclasses.dataclass(frozen=True)
class Calibration:
    step_seconds: float       # one worker's gradient step, alone on a core
    message_seconds: float    # fixed cost of one PUSH+PULL round trip (both ends, software)
    path_bytes_per_s: float   # bytes of model moved per second through the software path
    model_bytes: int

    def round_trip(self, nbytes: float) -> float:
        return self.message_seconds + 2 * nbytes / self.path_bytes_per_s


@dataclasses.dataclass(frozen=True)
class Network:
    """A link between hosts; None bandwidth means loopback (already inside the calibration)."""

    bandwidth_bytes_per_s: float | None
    latency_seconds: float
    cores: float | None = None  # all roles on one machine of this many cores, or None: a host each


def updates_per_second(cal: Calibration, workers: int, shards: int, net: Network) -> float:
    """Throughput of the closed network of `workers` workers and `shards` shards (exact MVA)."""
    slice_bytes = cal.model_bytes / shards
    shard_cpu = SHARD_SHARE * cal.round_trip(slice_bytes)
    client_cpu = (1 - SHARD_SHARE) * cal.round_trip(slice_bytes) * shards  # one message per shard
    wire = 0.0
    shard_service = shard_cpu
    if net.bandwidth_bytes_per_s is not None:
        wire = 2 * net.latency_seconds + cal.model_bytes / net.bandwidth_bytes_per_s
        shard_service = max(shard_cpu, slice_bytes / net.bandwidth_bytes_per_s)
    slowdown, throughput = 1.0, 0.0
    for _ in range(50):  # fixed point: on shared cores, compute slows with the total demand
        think = (cal.step_seconds + client_cpu) * slowdown + wire
        queue, throughput = 0.0, 0.0
        for n in range(1, workers + 1):
            residence = shard_service * (1 + queue)
            throughput = n / (think + residence)
            queue = throughput * residence
        if net.cores is None:
            break
        busy = throughput * ((cal.step_seconds + client_cpu) * slowdown + shards * shard_service)
        wanted = max(1.0, busy / net.cores)
        if abs(wanted - slowdown) < 1e-4:
            break
        slowdown = 0.5 * (slowdown + wanted)
    return throughput


def calibrate(wire: dict[str, Any], cluster: dict[str, Any], model: str) -> Calibration:
    """Fit the message cost line to wire.json; take the step time from cluster.json's ceiling."""
    sizes = wire["figures"]["sizes"].values()
    nbytes = np.array([s["model_bytes"] for s in sizes], float)
    seconds = np.array([s["push_pull"]["downpour_ms"]["median"] / 1e3 for s in sizes])
    slope, intercept = np.polyfit(nbytes, seconds, 1)
    one = cluster["figures"]["results"][model]["1"]["ceiling"]["updates_per_s"]
    return Calibration(1.0 / one, max(float(intercept), 1e-6), 2.0 / float(slope), MODEL_BYTES[model])


def check(cal: Calibration, cluster: dict[str, Any], model: str, cores: float) -> list[dict[str, Any]]:
    """The model on this machine (loopback, `cores` cores) against every measured point."""
    points = []
    for workers, row in cluster["figures"]["results"][model].items():
        for key, measured in row["downpour"].items():
            shards, _, variant = key.partition("+")
            if variant != "wire":  # the model is of messages on a network, not of shared memory
                continue
            predicted = updates_per_second(cal, int(workers), int(shards), Network(None, 0.0, cores))
            points.append({"workers": int(workers), "shards": int(shards), "measured": measured["updates_per_s"],
                           "predicted": predicted,
                           "error": predicted / measured["updates_per_s"] - 1})
    return points


def plot(grid: dict[str, dict[str, float]], path: pathlib.Path, title: str) -> None:
    import matplotlib  # noqa: PLC0415 - only for the picture

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for shards in SHARDS:
        ax.plot(WORKERS, [grid[str(shards)][str(w)] for w in WORKERS], marker="o", label=f"{shards} shards")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("workers")
    ax.set_ylabel("predicted updates/s (whole cluster)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bandwidth-gbit", type=float, default=10.0)
    parser.add_argument("--latency-us", type=float, default=50.0)
    parser.add_argument("--model", default="mlp", choices=sorted(MODEL_BYTES))
    parser.add_argument("--cores", type=float, default=2.0, help="cores of the machine the check ran on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    wire = common.read_result(common.RESULTS / "wire.json")
    cluster = common.read_result(common.RESULTS / "cluster.json")
    cal = calibrate(wire, cluster, args.model)
    points = check(cal, cluster, args.model, args.cores)
    net = Network(args.bandwidth_gbit * 1e9 / 8, args.latency_us * 1e-6)
    grid = {str(s): {str(w): updates_per_second(cal, w, s, net) for w in WORKERS} for s in SHARDS}
    title = (f"{args.model}: {cal.model_bytes / 1e6:.1f} MB model, step {cal.step_seconds * 1e3:.1f} ms, "
             f"{args.bandwidth_gbit:g} Gbit/s, {args.latency_us:g} us, one host per role")
    plot(grid, common.RESULTS / "simulate.png", title)
    errors = [abs(p["error"]) for p in points]
    figures = {
        "model": args.model, "calibration": dataclasses.asdict(cal), "shard_share": SHARD_SHARE,
        "network": {"bandwidth_gbit": args.bandwidth_gbit, "latency_us": args.latency_us},
        "check": {"cores": args.cores, "points": points,
                  "median_abs_error": float(np.median(errors)), "max_abs_error": float(np.max(errors))},
        "predicted_updates_per_s": grid, "plot": "benchmarks/results/simulate.png",
        "ceiling_per_worker": 1.0 / cal.step_seconds,
    }
    log.info("check against %d measured points: median |error| %.0f%%, max %.0f%%", len(points),
             100 * figures["check"]["median_abs_error"], 100 * figures["check"]["max_abs_error"])
    common.write_result("simulate", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
