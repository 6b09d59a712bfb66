"""Sparse models at parameter-server scale: downpour by rows, downpour moving the whole table,
and PyTorch DDP over gloo, side by side, as the table grows from 2^18 to 2^24 buckets.

The model is `sparse_logreg` on `fortunes_langid` (hashed character 1- to 4-grams, 7 languages,
a table of buckets x 7), Adagrad (lr 0.5), batch 64 a worker, 2 workers and 2 shards async
(DDP: 2 processes); the same hashed batches everywhere. Per table size, in one run:

    rows    downpour with `compression.rows`: a worker reads and pushes the rows its batches use
    whole   downpour moving every key, as a dense model does
    ddp     torch DDP, dense gradients (the whole table all-reduced every step)
    ddp_sparse  torch DDP with EmbeddingBag(sparse=True) (gloo all-gathers the touched rows)

downpour runs over the sockets (`cluster.shared_memory: false`, as between machines; gloo too
goes over loopback TCP), and by rows through shared memory as well (the local default).
samples/s: downpour's is the sum over workers of the median of their training windows after
the first; DDP's, both processes' steps after a warm-up. Bytes a step: what a downpour worker
sent and received (values, and the keys it named; the first, whole read left out), and the
gradient bytes a DDP process hands the all-reduce. Step time: a worker's seconds a step.
The scikit-learn reference of the two fortunes configs is measured in the same run.

    python benchmarks/sparse.py [--sizes 18 20 22 24] [--steps 150] [--skip-reference]

Writes benchmarks/results/sparse.json and benchmarks/results/sparse.png.
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
import time  # noqa: E402
from typing import Any  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common, sparse_ddp  # noqa: E402

log = logging.getLogger("benchmarks.sparse")

CONFIG = ROOT / "configs" / "fortunes_langid.yaml"
BATCH, CLASSES = 64, 7
JOB = ["workers=2", "shards=2", "consistency.mode=async", f"train.batch_size={BATCH}",
       "optimizer={type: adagrad, lr: 0.5}", "target=null"]
WAYS = {"rows": ["compression.rows=true", "cluster.shared_memory=false"],
        "rows_shm": ["compression.rows=true", "cluster.shared_memory=true"],
        "whole": ["compression.rows=false", "cluster.shared_memory=false"]}


def downpour(way: str, buckets: int, steps: int, timeout: float) -> dict[str, Any]:
    """One job on a local cluster: samples/s, bytes and seconds a step."""
    every = max(2, steps // 6)
    overrides = [*JOB, *WAYS[way], f"data.features.buckets={buckets}", f"train.steps={steps}",
                 f"train.log_every={every}"]
    job = common.launch_job(CONFIG, overrides, timeout)
    windows: dict[int, list[float]] = {}
    for r in job.records:
        if r.get("kind") == "train":
            windows.setdefault(r["rank"], []).append(r["samples_per_s"])
    per_worker = [statistics.median(w[1:] or w) for w in windows.values()]
    whole_read = 4 * (buckets * CLASSES + CLASSES)         # the first read of every worker is whole
    last = job.last_train().values()
    moved = [(r["bytes_sent"] + r["bytes_received"] - whole_read) / r["step"] for r in last]
    result = {"way": way, "buckets": buckets, "steps": steps, "command": job.command,
              "status": job.summary.get("status"), "samples_per_s": sum(per_worker),
              "step_s": statistics.mean(BATCH / s for s in per_worker),
              "bytes_per_step": statistics.mean(moved),
              "test_accuracy": job.summary.get("metrics", {}).get("test_accuracy"),
              "key_updates_per_shard": job.summary.get("key_updates_per_shard"),
              "load_average": list(os.getloadavg())}
    log.info("downpour %-8s 2^%d: %7.0f samples/s, %6.1f ms a step, %9.0f bytes a step, accuracy %s", way,
             buckets.bit_length() - 1, result["samples_per_s"], 1e3 * result["step_s"], result["bytes_per_step"],
             result["test_accuracy"])
    return result


def ddp(sparse: bool, buckets: int, steps: int) -> dict[str, Any]:
    result = sparse_ddp.run(buckets, sparse, steps, BATCH)
    result["bytes_per_step"] = result.pop("grad_bytes_per_step")
    result["load_average"] = list(os.getloadavg())
    log.info("ddp%-9s 2^%d: %7.0f samples/s, %6.1f ms a step, %9.0f bytes a step", " sparse" if sparse else "",
             buckets.bit_length() - 1, result["samples_per_s"], 1e3 * result["step_s"], result["bytes_per_step"])
    return result


def reference(task: str, features: dict) -> dict[str, Any]:
    """scikit-learn's HashingVectorizer (the config's n-grams and buckets) + SGDClassifier (log
    loss, its defaults) on the task's fixed split: the bar the config's target is set from."""
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import SGDClassifier

    from downpour.worker.datasets import fortunes

    train, y_train, test, y_test, _ = fortunes.split(task)
    kind = features["kind"]
    vectorizer = HashingVectorizer(analyzer=kind, ngram_range=(features["n_min"], features["n_max"]),
                                   n_features=features["buckets"], lowercase=False, token_pattern=r"(?u)\w+")
    if kind == "char":                                     # downpour pads a text with a space each side
        train, test = [f" {t} " for t in train], [f" {t} " for t in test]
    started = time.perf_counter()
    model = SGDClassifier(loss="log_loss", random_state=0).fit(vectorizer.transform(train), y_train)
    accuracy = float(model.score(vectorizer.transform(test), y_test))
    log.info("scikit-learn reference on %s: test accuracy %.4f", task, accuracy)
    return {"task": task, "features": features, "test_accuracy": accuracy,
            "seconds": time.perf_counter() - started}


def _whole_steps(buckets: int, steps: int) -> int:
    """Moving the whole table costs a step about in proportion to it: fewer steps as it grows."""
    return max(8, min(steps, steps * (1 << 18) // buckets))


def measure(sizes: list[int], steps: int, timeout: float) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    for power in sizes:
        buckets = 1 << power
        row = {way: downpour(way, buckets, steps if way != "whole" else _whole_steps(buckets, steps), timeout)
               for way in WAYS}
        row["ddp"] = ddp(False, buckets, _whole_steps(buckets, steps))
        row["ddp_sparse"] = ddp(True, buckets, steps)
        faster = max(row["ddp"]["samples_per_s"], row["ddp_sparse"]["samples_per_s"])
        row["ratios"] = {
            "bytes_rows_over_whole": row["rows"]["bytes_per_step"] / row["whole"]["bytes_per_step"],
            "rows_over_whole_samples": row["rows"]["samples_per_s"] / row["whole"]["samples_per_s"],
            "rows_over_ddp_dense": row["rows"]["samples_per_s"] / row["ddp"]["samples_per_s"],
            "rows_over_faster_ddp": row["rows"]["samples_per_s"] / faster,
            "rows_shm_over_faster_ddp": row["rows_shm"]["samples_per_s"] / faster,
        }
        log.info("2^%d: %s", power, {k: round(v, 4) for k, v in row["ratios"].items()})
        table[str(buckets)] = row
    return table


def plot(table: dict[str, dict[str, Any]], path: pathlib.Path) -> None:
    """samples/s and bytes a step against the table size, one line per contender."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(b) for b in table]
    names = {"rows": "downpour by rows (sockets)", "rows_shm": "downpour by rows (shared memory)",
             "whole": "downpour, whole table", "ddp": "DDP (gloo), dense", "ddp_sparse": "DDP (gloo), sparse=True"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label in names.items():
        left.plot(sizes, [table[str(b)][key]["samples_per_s"] for b in sizes], marker="o", label=label)
        right.plot(sizes, [max(table[str(b)][key]["bytes_per_step"], 1) for b in sizes], marker="o", label=label)
    for ax, title in ((left, "samples/s (2 workers or processes)"), (right, "bytes a step (one worker)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("table rows (buckets)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle("sparse_logreg on fortunes_langid, batch 64: cost follows the rows touched, not the table")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[18, 20, 22, 24], help="log2 of the buckets")
    parser.add_argument("--steps", type=int, default=150, help="train.steps a worker (by rows; DDP sparse)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per job")
    parser.add_argument("--skip-reference", action="store_true", help="leave the scikit-learn reference out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    figures: dict[str, Any] = {"config": str(CONFIG.relative_to(ROOT)), "job": JOB, "batch_size": BATCH,
                               "steps": args.steps}
    if not args.skip_reference:
        import yaml

        figures["reference"] = {name: reference(name.removeprefix("fortunes_"),
                                                yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
                                                ["data"]["features"])
                                for name in ("fortunes_langid", "fortunes_topic")}
    table = measure(args.sizes, args.steps, args.timeout)
    figures["sizes"] = table
    first, last = table[str(1 << min(args.sizes))], table[str(1 << max(args.sizes))]
    figures["step_time_growth"] = {way: last[way]["step_s"] / first[way]["step_s"] for way in ("rows", "rows_shm")}
    common.write_result("sparse", figures)
    plot(table, common.RESULTS / "sparse.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
