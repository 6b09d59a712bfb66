"""Gradient compression: bytes pushed and test accuracy reached, per codec, against no compression.

The MLP job (`configs/fashion_mlp.yaml`, 2 workers, 2 shards, async) runs to the end on a real
local cluster once per codec (`downpour launch ... --set compression.codec=CODEC`): none, fp16,
topk at 1%, onebit and twobit at threshold 0.5 (MXNet's default), each with the error feedback the
config gives by default. Every array travels over the sockets (`cluster.shared_memory: false`),
as between machines. Bytes sent are the workers' own count of push payload bytes (the last
`bytes_sent` each worker reported in metrics.jsonl, summed); accuracy is the final
`test_accuracy` in summary.json. Same seed, same data order; async runs still differ a little
from run to run, so an accuracy difference of a few tenths of a point is noise.

    python benchmarks/compression.py [--steps N] [--codecs none,fp16,topk,onebit,twobit]

Writes benchmarks/results/compression.json. Acceptance (the issue): topk at 1% with error
feedback within 1 point of the uncompressed job's accuracy while sending <= 5% of its bytes.
References: MXNet's 2-bit gradient compression (threshold 0.5, error feedback) and BytePS's
onebit compressor (sign and scale, error feedback).
"""
from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402

log = logging.getLogger("benchmarks.compression")

CONFIG = ROOT / "configs" / "fashion_mlp.yaml"
CODECS = {
    "none": ["compression.codec=none"],
    "fp16": ["compression.codec=fp16"],
    "topk": ["compression.codec=topk", "compression.ratio=0.01"],
    "onebit": ["compression.codec=onebit"],
    "twobit": ["compression.codec=twobit", "compression.threshold=0.5"],
    "sparse": ["compression.codec=sparse"],
}
ACCEPTANCE = {"codec": "topk", "max_bytes_ratio": 0.05, "max_accuracy_drop": 0.01}
REFERENCE = ("MXNet 2-bit gradient compression (threshold 0.5, error feedback); "
             "BytePS onebit (sign and scale, error feedback)")


def run_codec(name: str, steps: int | None, timeout: float) -> dict[str, Any]:
    """One full job with codec `name`; its bytes, accuracy and wall time."""
    # Compression is about the network: every array goes over it here, as between machines
    # (on one host shared memory would carry the uncompressed pushes and send nothing).
    overrides = [*CODECS[name], "workers=2", "shards=2", "consistency.mode=async", "cluster.shared_memory=false"]
    if steps is not None:
        overrides.append(f"train.steps={steps}")
    job = common.launch_job(CONFIG, overrides, timeout)
    summary, last = job.summary, job.last_train()
    result = {
        "overrides": overrides, "status": summary.get("status"), "command": job.command,
        "bytes_sent": sum(r["bytes_sent"] for r in last.values()),
        "bytes_received": sum(r.get("bytes_received", 0) for r in last.values()),
        "workers_reporting": len(last),
        "test_accuracy": summary.get("metrics", {}).get("test_accuracy"),
        "updates_applied": summary.get("updates_applied"),
        "wall_seconds": summary.get("wall_seconds", job.launcher_seconds),
        "launcher_seconds": job.launcher_seconds,
        "load_average": list(os.getloadavg()),
    }
    log.info("%s: %s, %d bytes sent, test accuracy %s, %.0f s", name, result["status"], result["bytes_sent"],
             result["test_accuracy"], result["wall_seconds"])
    return result


def compare(runs: dict[str, dict[str, Any]]) -> None:
    """Add each run's bytes ratio and accuracy difference against the uncompressed run."""
    base = runs.get("none") or {}
    for r in runs.values():
        r["bytes_ratio"] = r["bytes_sent"] / base["bytes_sent"] if base.get("bytes_sent") else None
        both = r["test_accuracy"] is not None and base.get("test_accuracy") is not None
        r["accuracy_delta"] = r["test_accuracy"] - base["test_accuracy"] if both else None


def judge(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    verdict = dict(ACCEPTANCE)
    r = runs.get(ACCEPTANCE["codec"])
    if r is None or r["bytes_ratio"] is None or r["accuracy_delta"] is None:
        return dict(verdict, met=None)
    return dict(verdict, bytes_ratio=r["bytes_ratio"], accuracy_delta=r["accuracy_delta"],
                met=r["bytes_ratio"] <= ACCEPTANCE["max_bytes_ratio"]
                and r["accuracy_delta"] >= -ACCEPTANCE["max_accuracy_drop"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="train.steps per worker (default: the config's)")
    parser.add_argument("--codecs", default=",".join(CODECS), help="comma-separated, 'none' first")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per job")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = args.codecs.split(",")
    unknown = [n for n in names if n not in CODECS]
    if unknown:
        parser.error(f"unknown codec {unknown[0]!r}: expected some of {', '.join(CODECS)}")
    runs = {name: run_codec(name, args.steps, args.timeout) for name in names}
    compare(runs)
    figures = {"config": str(CONFIG.relative_to(ROOT)), "workers": 2, "shards": 2, "consistency": "async",
               "steps": args.steps, "reference": REFERENCE, "acceptance": judge(runs), "codecs": runs}
    common.write_result("compression", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
