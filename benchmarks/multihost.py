"""Compressed pushes and reads across hosts: samples/s, bytes each way and accuracy per codec pair.

Built on the namespace harness (deploy/multihost/): every role of the job on a host of its own
(a network namespace) behind a link shaped by `tc tbf` in both directions, with the very
command lines of deploy/docker-compose.yml, and the same job by `downpour launch` on loopback.
Every array travels over the sockets (`cluster.shared_memory: false`), as between machines.
Three parts, each a few seconds a run:

- grid: the digits MLP of deploy/job.yaml (2 shards, 2 workers, async), `--grid-steps` steps,
  per (push codec, read codec) pair at 100 Mbit/s and 1 Gbit/s, and on loopback, one after the
  other, `--grid-rounds` times (medians);
- acceptance: the whole digits job (1 000 steps) at 100 Mbit/s, uncompressed, fp16 both ways
  and topk (1%) both ways, in turn, `--rounds` times: ratios within a round (side by side,
  under the same load), medians over rounds;
- time to target: the Fashion-MNIST MLP (configs/fashion_mlp.yaml, with Adam at 1e-3 and no
  dropout: FASHION_JOB) at 100 Mbit/s, the evaluator scoring the test split every
  `FASHION_EVAL_EVERY` clocks: seconds of training until test accuracy first reaches 85%, per
  codec pair (each run is stopped there), `--fashion-rounds` times.

Samples/s is the workers' own throughput over their training reports (run_job.run_figures);
bytes to the shards / to the workers are the worker hosts' link counters (sent / received:
IP headers, heartbeats and all) and, on loopback, the workers' client counts.

    python benchmarks/multihost.py [--codecs none,fp16,topk,onebit] [--rounds 3] [--fashion-rounds 2]
                                   [--parts grid,acceptance,fashion]

Needs root and iproute2 (network namespaces). Writes benchmarks/results/multihost.json and
benchmarks/results/multihost.png.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "deploy" / "multihost")]

import netns  # noqa: E402
import run_job  # noqa: E402

from benchmarks import common  # noqa: E402

log = logging.getLogger("benchmarks.multihost")

def codecs(push: str, read: str) -> list[str]:
    return [f"compression.codec={push}", f"compression.pull={read}"]


DIGITS = ROOT / "deploy" / "job.yaml"
FASHION = ROOT / "configs" / "fashion_mlp.yaml"
RATES = ("100mbit", "1gbit")
ON_THE_WIRE = ["cluster.shared_memory=false"]
GRID_CODECS = ("none", "fp16", "topk", "onebit")
ACCEPTANCE_PAIRS = (("none", "none"), ("fp16", "fp16"), ("topk", "topk"))
ACCEPTANCE = {"fp16": 1.8, "topk": 5.0, "max_accuracy_drop": 0.01, "fashion_time_ratio": 1 / 3}
FASHION_TARGET = 0.85
FASHION_EVAL_EVERY = 25   # clocks of the slowest worker between two scorings of the test split
# Adam at 1e-3 without dropout: the config's SGD (momentum 0.9, cosine over 20 000 updates) needs
# ~5 000 updates to 85%, Adam ~1 300-1 900 (measured on loopback), so a run takes ~2 minutes
# uncompressed at 100 Mbit/s rather than 7. Each run stops once the target is reached.
FASHION_JOB = ["optimizer={type: adam, lr: 0.001}", "model.dropout=0", "train.log_every=50", "target=null",
               "data.validation=0", f"eval.every={FASHION_EVAL_EVERY}"]
FASHION_PAIRS = {"none/none": codecs("none", "none"), "fp16/fp16": codecs("fp16", "fp16"),
                 "topk/topk": codecs("topk", "topk"),
                 "topk 10%/topk 10%": [*codecs("topk", "topk"), "compression.ratio=0.1"]}


def worker_bytes(run_dir: pathlib.Path) -> dict[str, int]:
    """What the workers' clients sent and received (their last reports, summed)."""
    last: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "train" and record.get("role") == "worker":
            last[record["rank"]] = record
    return {"sent": sum(r["bytes_sent"] for r in last.values()),
            "received": sum(r["bytes_received"] for r in last.values())}


def one_run(job: pathlib.Path, overrides: list[str], network: str, run_dir: pathlib.Path,
            timeout: float) -> dict[str, Any]:
    """One job on six hosts at `network` (a tc rate) or on loopback; the figures we compare."""
    overrides = [*ON_THE_WIRE, *overrides]
    started = time.monotonic()
    for attempt in (1, 2):
        try:
            if network == "loopback":
                report = run_job.run_on_loopback(job, overrides, run_dir, timeout)
            else:
                report = run_job.run_on_hosts(job, overrides, network, run_dir, timeout)
            break
        except RuntimeError as err:
            # A coordinator slow to start (loading Fashion-MNIST to check the job) can answer a
            # shard's resent registration as a second shard's: the run is started again.
            if attempt == 2 or "ranks are taken" not in str(err):
                raise
            log.warning("%s: %s; starting the run again", network, str(err).splitlines()[-1])
            shutil.rmtree(run_dir, ignore_errors=True)
    client = worker_bytes(run_dir)
    links = report.get("link_bytes")
    workers = [v for host, v in (links or {}).items() if host.startswith("worker")]
    result = {
        "status": report["status"], "samples_per_s": report["samples_per_s"],
        "test_accuracy": report["metrics"].get("test_accuracy"), "wall_seconds": report["wall_seconds"],
        "bytes_to_shards": sum(w["tx_bytes"] for w in workers) if links else client["sent"],
        "bytes_to_workers": sum(w["rx_bytes"] for w in workers) if links else client["received"],
        "client_bytes_sent": client["sent"], "client_bytes_received": client["received"],
        "wire_bytes": report["wire_bytes"], "seconds": round(time.monotonic() - started, 1),
        "load_average": os.getloadavg()[0],
    }
    log.info("%-9s %-45s %-5s %8.0f samples/s, %6.1f MB up, %6.1f MB down, accuracy %s", network,
             " ".join(overrides[len(ON_THE_WIRE):]), result["status"], result["samples_per_s"],
             result["bytes_to_shards"] / 1e6, result["bytes_to_workers"] / 1e6, result["test_accuracy"])
    return result


def grid(work: pathlib.Path, names: list[str], steps: int, rounds: int, timeout: float) -> dict[str, Any]:
    """Every (push, read) pair on each network, `rounds` times: what compression each way buys.
    A pair's three runs follow each other, so that they share the machine's load (its loopback
    run is what calibrates the simulator's CPU side for the other two: benchmarks/simulate.py).
    Each figure is the median over the rounds (the runs' samples/s are kept beside it)."""
    runs: dict[str, dict[str, list[dict]]] = {network: {} for network in (*RATES, "loopback")}
    for i in range(rounds):
        for push in names:
            for read in names:
                for network in runs:
                    run_dir = work / "grid" / network / f"{i}-{push}-{read}"
                    runs[network].setdefault(f"{push}/{read}", []).append(one_run(
                        DIGITS, [*codecs(push, read), f"train.steps={steps}"], network, run_dir, timeout))
    out: dict[str, Any] = {network: {} for network in runs}
    for network, pairs in runs.items():
        for pair, results in pairs.items():
            median = {key: statistics.median(r[key] for r in results) for key in results[0]
                      if isinstance(results[0][key], (int, float)) and not isinstance(results[0][key], bool)
                      and all(r[key] is not None for r in results)}
            out[network][pair] = {**median, "status": results[0]["status"],
                                  "samples_per_s_runs": [r["samples_per_s"] for r in results]}
    return out


def acceptance(work: pathlib.Path, rounds: int, timeout: float) -> dict[str, Any]:
    """The whole digits job at 100 Mbit/s, the acceptance pairs in turn, `rounds` times."""
    runs: dict[str, list[dict]] = {f"{p}/{r}": [] for p, r in ACCEPTANCE_PAIRS}
    for i in range(rounds):
        for push, read in ACCEPTANCE_PAIRS:
            run_dir = work / "acceptance" / f"{i}-{push}-{read}"
            runs[f"{push}/{read}"].append(one_run(DIGITS, codecs(push, read), "100mbit", run_dir, timeout))
    base = runs["none/none"]
    summary: dict[str, Any] = {}
    for pair, results in runs.items():
        speedups = [r["samples_per_s"] / b["samples_per_s"] for r, b in zip(results, base)]
        drops = [b["test_accuracy"] - r["test_accuracy"] for r, b in zip(results, base)]
        summary[pair] = {"samples_per_s": statistics.median(r["samples_per_s"] for r in results),
                         "test_accuracy": statistics.median(r["test_accuracy"] for r in results),
                         "speedup": statistics.median(speedups), "speedups": speedups,
                         "accuracy_drop": statistics.median(drops),
                         "bytes_to_shards": statistics.median(r["bytes_to_shards"] for r in results),
                         "bytes_to_workers": statistics.median(r["bytes_to_workers"] for r in results)}
    verdict = {pair: {"needed": ACCEPTANCE[pair.split("/")[0]], "speedup": summary[pair]["speedup"],
                      "accuracy_drop": summary[pair]["accuracy_drop"],
                      "met": summary[pair]["speedup"] >= ACCEPTANCE[pair.split("/")[0]]
                      and summary[pair]["accuracy_drop"] <= ACCEPTANCE["max_accuracy_drop"]}
               for pair in summary if pair != "none/none"}
    return {"runs": runs, "medians": summary, "verdict": verdict}


def time_to_target(run_dir: pathlib.Path, batch_size: int, target: float) -> tuple[float | None, list]:
    """Seconds from the start of training to the first scoring at or above `target`, and the
    curve (seconds, accuracy) of every scoring. Training starts when the first worker does
    (its first report, less the time its first steps took)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    starts = {}
    for r in records:
        if r.get("kind") == "train" and r.get("role") == "worker" and r["rank"] not in starts:
            starts[r["rank"]] = r["time"] - r["step"] * batch_size / r["samples_per_s"]
    start = min(starts.values())
    curve = [(round(r["time"] - start, 2), r["test_accuracy"]) for r in records
             if r.get("kind") == "test" and "test_accuracy" in r]
    reached = next((t for t, accuracy in curve if accuracy >= target), None)
    return reached, curve


@contextlib.contextmanager
def stop_at_target(run_dir: pathlib.Path, target: float) -> Iterator[None]:
    """Stop the job on the hosts (`downpour stop`, from the coordinator's own host) once a
    scoring in its metrics reaches `target`: the time after that is not part of the figure."""
    done = threading.Event()
    coordinator = f"tcp://{next(netns.SUBNET.hosts())}:5555"   # the first host: run_job.placement
    stop = ["ip", "netns", "exec", f"dp{os.getpid()}-coordinator", sys.executable, "-P", "-m", "downpour",
            "stop", coordinator]

    def watch() -> None:
        while not done.wait(0.5):
            metrics = run_dir / "metrics.jsonl"
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            if any(json.loads(line).get("test_accuracy", 0) >= target for line in lines if '"test"' in line):
                subprocess.run(stop, capture_output=True, timeout=60, check=False)
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


def fashion(work: pathlib.Path, steps: int, rounds: int, timeout: float) -> dict[str, Any]:
    """Time to 85% test accuracy on the Fashion-MNIST MLP at 100 Mbit/s, per codec pair."""
    batch = 128
    runs: dict[str, list[dict]] = {pair: [] for pair in FASHION_PAIRS}
    for i in range(rounds):
        for pair, overrides in FASHION_PAIRS.items():
            run_dir = work / "fashion" / f"{i}-{pair.replace('/', '-').replace(' ', '').replace('%', '')}"
            with stop_at_target(run_dir, FASHION_TARGET):
                result = one_run(FASHION, [*FASHION_JOB, *overrides, f"train.steps={steps}"], "100mbit",
                                 run_dir, timeout)
            result["seconds_to_target"], result["curve"] = time_to_target(run_dir, batch, FASHION_TARGET)
            log.info("  %s: %.0f%% test accuracy after %s s", pair, 100 * FASHION_TARGET, result["seconds_to_target"])
            runs[pair].append(result)
    medians = {}
    for pair, results in runs.items():
        times = [r["seconds_to_target"] for r in results]
        medians[pair] = statistics.median(times) if None not in times else None
    reached = {pair: t for pair, t in medians.items() if t is not None and pair != "none/none"}
    best = min(reached, key=reached.get) if reached else None
    base = medians.get("none/none")
    ratio = reached[best] / base if best and base else None
    return {"target": FASHION_TARGET, "steps": steps, "eval_every": FASHION_EVAL_EVERY, "job": FASHION_JOB,
            "runs": runs, "median_seconds_to_target": medians, "best": best, "time_ratio": ratio,
            "met": ratio is not None and ratio <= ACCEPTANCE["fashion_time_ratio"]}


def plot(figures: dict[str, Any], path: pathlib.Path) -> None:
    """Samples/s per codec pair on each network (left); test accuracy against seconds of
    training on the Fashion-MNIST MLP at 100 Mbit/s (right)."""
    import matplotlib  # noqa: PLC0415 - only for the picture

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    cells = figures.get("grid") or {}
    pairs = list(next(iter(cells.values()), {}))
    width = 0.8 / max(1, len(cells))
    for i, (network, runs) in enumerate(cells.items()):
        left.bar([j + i * width for j in range(len(pairs))], [runs[p]["samples_per_s"] for p in pairs],
                 width, label=network)
    left.set_xticks([j + width * (len(cells) - 1) / 2 for j in range(len(pairs))], pairs, rotation=60, fontsize=7)
    left.set_yscale("log")
    left.set_ylim(bottom=1000)
    left.set_ylabel("samples/s, both workers")
    left.set_title("digits MLP, 6 hosts: push codec / read codec", fontsize=10)
    left.legend(fontsize=8)
    left.grid(True, axis="y", which="both", alpha=0.3)
    for pair, results in (figures.get("fashion") or {}).get("runs", {}).items():
        seconds, accuracy = zip(*results[0]["curve"]) if results and results[0]["curve"] else ((), ())
        right.plot(seconds, accuracy, marker=".", label=pair)
    right.axhline(FASHION_TARGET, color="grey", linestyle="--", linewidth=1)
    right.set_xlabel("seconds of training")
    right.set_ylabel("test accuracy")
    right.set_ylim(0.6, 0.92)
    right.set_title("Fashion-MNIST MLP at 100 Mbit/s (first round)", fontsize=10)
    right.legend(fontsize=8)
    right.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codecs", default=",".join(GRID_CODECS), help="the grid's codecs, each way")
    parser.add_argument("--grid-steps", type=int, default=1500,
                        help="train.steps of each grid run (300 last a second where the CPU binds: too short to measure)")
    parser.add_argument("--grid-rounds", type=int, default=1, help="runs of each grid pair on each network")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each acceptance pair")
    parser.add_argument("--fashion-rounds", type=int, default=2, help="runs of each fashion pair")
    parser.add_argument("--fashion-steps", type=int, default=1500, help="train.steps of each fashion run")
    parser.add_argument("--parts", default="grid,acceptance,fashion")
    parser.add_argument("--timeout", type=float, default=600, help="seconds each job may take")
    parser.add_argument("--keep", type=pathlib.Path, help="keep the runs' directories here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("multihost").setLevel(logging.WARNING)
    logging.getLogger("netns").setLevel(logging.WARNING)
    if os.geteuid() != 0:
        parser.error("needs root (it creates network namespaces)")
    signal.signal(signal.SIGTERM, run_job._terminate)  # a stopped run still deletes its namespaces
    parts = args.parts.split(",")
    figures: dict[str, Any] = {"job": str(DIGITS.relative_to(ROOT)), "fashion_job": str(FASHION.relative_to(ROOT)),
                               "acceptance_needed": ACCEPTANCE}
    previous = common.RESULTS / "multihost.json"
    if args.parts != parser.get_default("parts") and previous.exists():   # the parts not run now stay
        figures = {**common.read_result(previous)["figures"], **figures}
    with tempfile.TemporaryDirectory(prefix="downpour-multihost-bench-") as scratch:
        work = args.keep or pathlib.Path(scratch)
        if "grid" in parts:
            figures["grid_steps"], figures["grid_rounds"] = args.grid_steps, args.grid_rounds
            figures["grid"] = grid(work, args.codecs.split(","), args.grid_steps, args.grid_rounds, args.timeout)
            common.write_result("multihost", figures)
        if "acceptance" in parts:
            figures["acceptance"] = acceptance(work, args.rounds, args.timeout)
            common.write_result("multihost", figures)
        if "fashion" in parts:
            figures["fashion"] = fashion(work, args.fashion_steps, args.fashion_rounds, args.timeout)
    plot(figures, common.RESULTS / "multihost.png")
    figures["plot"] = "benchmarks/results/multihost.png"
    common.write_result("multihost", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
