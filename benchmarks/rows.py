"""Embedding tables by rows (`compression.rows`): updates/s and bytes per step against moving every key.

The model is the char LSTM of `configs/jargon_lstm.yaml` (128 units) with a table of hashed
character trigrams of 131 072 rows x 32 (`model.ngram_buckets`, fastText-style): 4.2 M of its
4.3 M weights, of which a batch of 32 x 64 characters reads about 2 000 rows. Adagrad, the
update rule Downpour used for its embeddings, lets a shard step only the rows pushed. The same
job runs on a real local cluster (2 workers, 2 shards, async) four times in one run: dense and
by rows, over the sockets (`cluster.shared_memory: false`, as between machines) and through
shared memory (the local default).

Updates/s is the sum over workers of their median training throughput (the `samples_per_s`
of each `train.log_every` window after the first, over the batch size), and of `--rounds` runs
of each job, taken in turn, the median run is reported; bytes per step are the
workers' own counts of what crossed the sockets (the first, whole read included), per step.
Same seed, same data order; async runs still differ a little, so the bpc agrees to noise.

    python benchmarks/rows.py [--steps N] [--rounds R]

Writes benchmarks/results/rows.json.
"""
from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import pathlib  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402

log = logging.getLogger("benchmarks.rows")

CONFIG = ROOT / "configs" / "jargon_lstm.yaml"
BATCH = 32
MODEL = ["workers=2", "shards=2", "consistency.mode=async", "model.hidden=128", "model.embed=32",
         "model.ngram_buckets=131072", "data.seq_len=64", f"train.batch_size={BATCH}",
         "optimizer={type: adagrad, lr: 0.05}", "train.log_every=25", "target=null"]
DESCRIPTION = "a hashed-trigram table of 4.2 M of the model's 4.3 M weights"  # of MODEL
TRANSPORTS = {"wire": ["cluster.shared_memory=false"], "shared memory": ["cluster.shared_memory=true"]}
WAYS = {"dense": ["compression.rows=false"], "rows": ["compression.rows=true"]}


def run(transport: str, way: str, steps: int, timeout: float) -> dict[str, Any]:
    overrides = [*MODEL, *TRANSPORTS[transport], *WAYS[way], f"train.steps={steps}"]
    job = common.launch_job(CONFIG, overrides, timeout)
    windows: dict[int, list[float]] = {}
    for r in job.records:
        if r.get("kind") == "train":
            windows.setdefault(r["rank"], []).append(r["samples_per_s"])
    per_worker = [statistics.median(w[1:] or w) / BATCH for w in windows.values()]
    last = job.last_train()
    result = {
        "overrides": overrides, "command": job.command, "status": job.summary.get("status"),
        "updates_per_s": sum(per_worker),
        "received_per_step": statistics.mean(r["bytes_received"] / r["step"] for r in last.values()),
        "sent_per_step": statistics.mean(r["bytes_sent"] / r["step"] for r in last.values()),
        "test_bpc": job.summary.get("metrics", {}).get("test_bpc"),
        "updates_applied": job.summary.get("updates_applied"),
        "wall_seconds": job.summary.get("wall_seconds", job.launcher_seconds),
        "load_average": list(os.getloadavg()),
    }
    log.info("%s, %s: %.1f updates/s, %.0f KB in and %.0f KB out per step, test bpc %s", transport, way,
             result["updates_per_s"], result["received_per_step"] / 1e3, result["sent_per_step"] / 1e3,
             result["test_bpc"])
    return result


def _median_run(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median updates/s, with every run's updates/s beside it."""
    ordered = sorted(samples, key=lambda r: r["updates_per_s"])
    return dict(ordered[len(ordered) // 2], updates_per_s_samples=[r["updates_per_s"] for r in samples])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="train.steps per worker")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each job, taken in turn")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per job")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runs: dict[str, dict[str, Any]] = {}
    for transport in TRANSPORTS:
        samples: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
        for _ in range(args.rounds):           # dense and rows in turn, so that load hits both alike
            for way in WAYS:
                samples[way].append(run(transport, way, args.steps, args.timeout))
        dense, rows = (_median_run(samples[way]) for way in WAYS)
        runs[transport] = {
            "dense": dense, "rows": rows,
            "speedup": rows["updates_per_s"] / dense["updates_per_s"],
            "received_ratio": rows["received_per_step"] / dense["received_per_step"] if dense["received_per_step"] else None,
            "sent_ratio": rows["sent_per_step"] / dense["sent_per_step"] if dense["sent_per_step"] else None,
        }
    figures = {"config": str(CONFIG.relative_to(ROOT)), "model": MODEL, "description": DESCRIPTION,
               "steps": args.steps, "rounds": args.rounds, "transports": runs}
    common.write_result("rows", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
