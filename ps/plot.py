"""`downpour plot`: loss and metric curves of a run, against time and clock, one line per worker."""
from __future__ import annotations

import collections
import json
import pathlib


def read_metrics(run_dir: pathlib.Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot(run_dir: str | pathlib.Path, out: str | pathlib.Path | None = None) -> pathlib.Path:
    """Write a PNG with training loss per worker (vs seconds and vs clock) and evaluation metrics."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("plotting needs matplotlib: pip install 'downpour[plot]'") from exc
    run_dir = pathlib.Path(run_dir)
    records = read_metrics(run_dir)
    start = min((r["time"] for r in records), default=0.0)
    train = collections.defaultdict(list)
    evals = collections.defaultdict(list)
    for r in records:
        if r.get("kind") == "train":
            train[r["rank"]].append(r)
        elif r.get("kind") in ("val", "test"):
            for key, value in r.items():
                if key.startswith(("val_", "test_")) and isinstance(value, (int, float)):
                    evals[key].append((r["time"] - start, r.get("clock", 0), value))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for rank, rows in sorted(train.items()):
        axes[0].plot([r["time"] - start for r in rows], [r["loss"] for r in rows], label=f"worker {rank}")
        axes[1].plot([r["clock"] for r in rows], [r["loss"] for r in rows], label=f"worker {rank}")
    for ax, xlabel in ((axes[0], "seconds"), (axes[1], "clock (pushes)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training loss")
        ax.legend()
        ax.grid(alpha=0.3)
    for key, rows in sorted(evals.items()):
        axes[2].plot([t for t, _, _ in rows], [v for _, _, v in rows], marker="o", label=key)
    axes[2].set_xlabel("seconds")
    axes[2].set_title("evaluation")
    if evals:
        axes[2].legend()
    axes[2].grid(alpha=0.3)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = pathlib.Path(out) if out else run_dir / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
