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

On a network, a round trip adds 2 x latency, and the links carry a bounded rate (`links_bound`):
every update moves its bytes through its worker's link and 1/shards of them through each
shard's, at the link's rate times its learnt `efficiency`, full duplex, so the heavier direction
(pushes to the shards or reads to the workers, each by its codec: `Traffic`) paces each link.
The CPUs' throughput and the links' are joined as the learnt `overlap` k says (a k-norm of the
times per update: 1 a serial sum, large k the roofline).

Both are learnt from `multihost.json` (benchmarks/multihost.py: the digits job on six hosts
behind shaped links, per codec pair, beside the same pair on loopback) by
benchmarks/simulate_links.py, which models every point of that grid with a few physical
parameters (a CPU cost per update and per codec, the efficiency, k), fits them to all the points
at once and reports the error on each, and on the figures of issue #19's table.

    python benchmarks/simulate.py [--bandwidth-gbit 10] [--latency-us 50] [--model mlp]
                                  [--push none] [--read none] [--ratio 0.01]

Checked against the 1-4 worker points of `cluster.json` measured with every array on the wire
(`cluster.shared_memory: false`, as between hosts; same machine, loopback,
2 cores); writes benchmarks/results/simulate.json and benchmarks/results/simulate.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import pathlib
import sys
from typing import Any

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402
from benchmarks import simulate_links as links  # noqa: E402

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
    efficiency: float = 1.0     # the share of the nominal rate the job's payload gets (learnt)
    overlap: float = math.inf   # how the CPU and the links share the time: 1 serial, inf the roofline (learnt)


# Payload bytes per float32 value each codec sends (ps/compression.py, ps/reads.py); `sparse`
# depends on how much of the model moves: counted as a full read (its fall-back), the worst case.
CODEC_BYTES = {"none": 4.0, "fp16": 2.0, "onebit": 1 / 8, "twobit": 1 / 4, "sparse": 4.0}


@dataclasses.dataclass(frozen=True)
class Traffic:
    """Bytes an update moves each way, as a share of the float32 model."""

    push: float = 1.0  # to the shards
    read: float = 1.0  # to the workers

    @classmethod
    def of(cls, push: str, read: str, ratio: float = 0.01) -> Traffic:
        """The nominal traffic of a codec pair (topk: 8 bytes a kept value)."""
        per_value = {**CODEC_BYTES, "topk": 8.0 * ratio}
        return cls(per_value[push] / 4, per_value[read] / 4)


def updates_per_second(cal: Calibration, workers: int, shards: int, net: Network,
                       traffic: Traffic = Traffic()) -> float:
    """Throughput of the closed network of `workers` workers and `shards` shards: exact MVA
    over the CPUs, joined with what the links carry (`traffic`: the codecs' bytes each way) as the
    harness taught (`links.combine`, with the network's learnt `overlap`)."""
    slice_bytes = cal.model_bytes / shards
    shard_cpu = SHARD_SHARE * cal.round_trip(slice_bytes)
    client_cpu = (1 - SHARD_SHARE) * cal.round_trip(slice_bytes) * shards  # one message per shard
    wire = 0.0 if net.bandwidth_bytes_per_s is None else 2 * net.latency_seconds
    shard_service = shard_cpu
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
    return links.combine(throughput, links_bound(cal, workers, shards, net, traffic), net.overlap)


def links_bound(cal: Calibration, workers: int, shards: int, net: Network, traffic: Traffic) -> float:
    """The updates/s the links allow: every update moves its bytes through its worker's link
    and 1/shards of them through each shard's, full duplex, so the heavier direction paces each
    link, and async workers keep them busy (a push and a read travel while the next step
    computes): a roofline, not a queue."""
    if net.bandwidth_bytes_per_s is None:
        return float("inf")
    heavier = cal.model_bytes * max(traffic.push, traffic.read)
    return min(workers, shards) * net.bandwidth_bytes_per_s * net.efficiency / heavier


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


# ---- the links, learnt from the multi-host harness (benchmarks/simulate_links.py) ------------------

# Issue #19's table (the same job on the harness, another day, a quieter machine): samples/s per
# (link, push, read); its loopback run (38 599 samples/s, none/none) gives that day's machine speed.
ISSUE_POINTS = (("100mbit", "none", "none", 2487), ("100mbit", "fp16", "none", 2490),
                ("100mbit", "topk", "none", 2491), ("1gbit", "none", "none", 24275))
ISSUE_LOOPBACK = 38599


def issue_points(model: links.LinkModel) -> list[dict[str, Any]]:
    """The learnt model on issue #19's table: the CPU costs scaled to that day's loopback speed,
    the codecs' nominal bytes (only pushes were compressed then)."""
    model_bytes = 4 * links.HARNESS["params"]
    scale = links.HARNESS["batch"] / ISSUE_LOOPBACK / model.cpu_seconds("none", "none", "loopback")
    out = []
    for network, push, read, measured in ISSUE_POINTS:
        traffic = Traffic.of(push, read)
        predicted = model.samples_per_s(push, read, network, traffic.push * model_bytes, traffic.read * model_bytes,
                                        cpu_scale=scale)
        out.append({"network": network, "pair": f"{push}/{read}", "measured": measured, "predicted": predicted,
                    "error": predicted / measured - 1})
    return out


def learn_links(multihost: dict[str, Any]) -> tuple[links.LinkModel, dict[str, Any]]:
    """The link model fitted to multihost.json, its report, and its error on the issue's table."""
    model, report = links.learn(multihost)
    report["issue_points"] = issue_points(model)
    report["issue_max_abs_error"] = max(abs(p["error"]) for p in report["issue_points"])
    return model, report


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


def log_links(learnt: dict[str, Any]) -> None:
    """The learnt parameters, and the error on every measured point, network by network."""
    cpu = learnt["cpu_ms_per_update"]
    log.info("links: efficiency %.3f, overlap k %.1f; CPU ms per update: base %.3f, push %s, read %s",
             learnt["efficiency"], learnt["overlap_exponent"], cpu["base"],
             " ".join(f"{c} {v:+.3f}" for c, v in cpu["push"].items()),
             " ".join(f"{c} {v:+.3f}" for c, v in cpu["read"].items()))
    for p in learnt["points"]:
        log.info("  %-8s %-13s measured %8.0f  predicted %8.0f  %+5.0f%%  %-4s%s", p["network"], p["pair"],
                 p["measured"], p["predicted"], 100 * p["error"], p["bound"], "  noisy" if p["noisy"] else "")
    for network, s in learnt["by_network"].items():
        clean = learnt["by_network_not_noisy"][network]
        log.info("%-8s median |error| %3.0f%%, max %3.0f%%, %d of %d points over %.0f%% (not noisy: %d points, max %s)",
                 network, 100 * s["median_abs_error"], 100 * s["max_abs_error"], s["over_tolerance"], s["points"],
                 100 * links.TOLERANCE, clean["points"],
                 "-" if clean["max_abs_error"] is None else f"{100 * clean['max_abs_error']:.0f}%")
    log.info("on issue #19's table: max |error| %.0f%%", 100 * learnt["issue_max_abs_error"])
    verdict = learnt["acceptance"]
    if verdict["met"] is None:
        log.info("no point across shaped links in the grid: nothing to judge the links by")
    else:
        log.info("within %.0f%% of every %s point: %s%s", 100 * verdict["tolerance"],
                 " and ".join(verdict["networks"]), "yes" if verdict["met"] else "no",
                 "" if verdict["met"] else f" ({', '.join(verdict['over'])})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bandwidth-gbit", type=float, default=10.0)
    parser.add_argument("--latency-us", type=float, default=50.0)
    parser.add_argument("--model", default="mlp", choices=sorted(MODEL_BYTES))
    parser.add_argument("--cores", type=float, default=2.0, help="cores of the machine the check ran on")
    parser.add_argument("--push", default="none", choices=sorted([*CODEC_BYTES, "topk"]), help="the push codec")
    parser.add_argument("--read", default="none", choices=sorted([*CODEC_BYTES, "topk"]), help="the read codec")
    parser.add_argument("--ratio", type=float, default=0.01, help="topk's share of the values")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    wire = common.read_result(common.RESULTS / "wire.json")
    cluster = common.read_result(common.RESULTS / "cluster.json")
    cal = calibrate(wire, cluster, args.model)
    points = check(cal, cluster, args.model, args.cores)
    measured = common.RESULTS / "multihost.json"
    model, learnt = learn_links(common.read_result(measured)) if measured.exists() else (None, None)
    efficiency, overlap = (model.efficiency, model.overlap) if model else (1.0, math.inf)
    net = Network(args.bandwidth_gbit * 1e9 / 8, args.latency_us * 1e-6, efficiency=efficiency, overlap=overlap)
    traffic = Traffic.of(args.push, args.read, args.ratio)
    grid = {str(s): {str(w): updates_per_second(cal, w, s, net, traffic) for w in WORKERS} for s in SHARDS}
    title = (f"{args.model}: {cal.model_bytes / 1e6:.1f} MB model, step {cal.step_seconds * 1e3:.1f} ms, "
             f"{args.bandwidth_gbit:g} Gbit/s x {efficiency:.2f} (k {overlap:.1f}), {args.latency_us:g} us, push {args.push}, "
             f"read {args.read}, one host per role")
    plot(grid, common.RESULTS / "simulate.png", title)
    errors = [abs(p["error"]) for p in points]
    figures = {
        "model": args.model, "calibration": dataclasses.asdict(cal), "shard_share": SHARD_SHARE,
        "network": {"bandwidth_gbit": args.bandwidth_gbit, "latency_us": args.latency_us, "efficiency": efficiency,
                    "overlap_exponent": overlap,
                    "push": args.push, "read": args.read, "ratio": args.ratio},
        "links": learnt,
        "check": {"cores": args.cores, "points": points,
                  "median_abs_error": float(np.median(errors)), "max_abs_error": float(np.max(errors))},
        "predicted_updates_per_s": grid, "plot": "benchmarks/results/simulate.png",
        "ceiling_per_worker": 1.0 / cal.step_seconds,
    }
    log.info("check against %d measured points: median |error| %.0f%%, max %.0f%%", len(points),
             100 * figures["check"]["median_abs_error"], 100 * figures["check"]["max_abs_error"])
    if learnt:
        log_links(learnt)
    common.write_result("simulate", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
