"""The consistency trade-off: time to a target test accuracy, and how long workers sat waiting.

The MLP job (`configs/fashion_mlp.yaml`, 2 workers, 2 shards) runs on a real local cluster
under async, SSP with staleness 1, 4 and 16, and BSP. The evaluator scores the test split
every `--eval-every` clocks; the time to target is when the first score at or above the target
was taken, counted from the launch. A run stops (Ctrl-C to the launcher, which stops the job
in order) once the target is reached, or at `--max-steps`.

Waiting is measured, not inferred: the kernel's scheduler statistics of each worker's main
thread (`/proc/PID/schedstat`: time on a CPU, time runnable but waiting for one) say how much of
the wall time the training loop was blocked, i.e. waiting for the shards. Time lost to other
processes on a shared machine is runnable time, so it is not counted as waiting. The window
starts at the worker's first training report and ends when the target is reached.

    python benchmarks/consistency.py [--target 0.85] [--modes async,ssp1,ssp4,ssp16,bsp]

Writes benchmarks/results/consistency.json. The reference is the OSDI'14 parameter server
paper (Li et al.), Fig. 13: barrier idle time falls from 50% at tau=0 to 1.7% at tau=16.
"""
from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import pathlib  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402

log = logging.getLogger("benchmarks.consistency")

CONFIG = ROOT / "configs" / "fashion_mlp.yaml"
MODES = {
    "async": ["consistency.mode=async"],
    "ssp1": ["consistency.mode=ssp", "consistency.staleness=1"],
    "ssp4": ["consistency.mode=ssp", "consistency.staleness=4"],
    "ssp16": ["consistency.mode=ssp", "consistency.staleness=16"],
    "bsp": ["consistency.mode=bsp"],
}
REFERENCE = "OSDI'14 parameter server, Fig. 13: idle time 50% at tau=0, 1.7% at tau=16"
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def worker_threads(run_dir: pathlib.Path) -> dict[int, int]:
    """rank -> pid of this run's worker processes (found by the run directory in their env)."""
    found = {}
    marker = f"DOWNPOUR_RUN_DIR={run_dir.resolve()}".encode()
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"worker" not in argv or marker not in (proc / "environ").read_bytes().split(b"\0"):
                continue
        except OSError:
            continue
        rank = argv[argv.index(b"--rank") + 1] if b"--rank" in argv else b"-1"
        found[int(rank)] = int(proc.name)
    return found


def scheduler_times(pid: int) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but not running) of a process's main thread."""
    try:
        on_cpu, waiting, _ = (pathlib.Path(f"/proc/{pid}/schedstat").read_text().split())
    except (OSError, ValueError):
        return None
    return int(on_cpu) / 1e9, int(waiting) / 1e9


def run_mode(name: str, target: float, eval_every: int, max_steps: int) -> dict[str, Any]:
    """One job under consistency mode `name`, stopped at the target; times and waiting."""
    with tempfile.TemporaryDirectory(prefix="downpour-consistency-") as tmp:
        run_dir = pathlib.Path(tmp) / "run"
        argv = [sys.executable, "-P", "-m", "downpour", "launch", str(CONFIG), "--run-dir", str(run_dir), "--quiet"]
        for o in [*MODES[name], "workers=2", "shards=2", f"train.steps={max_steps}", "train.log_every=25",
                  f"eval.every={eval_every}"]:
            argv += ["--set", o]
        started = time.time()
        launcher = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        metrics = run_dir / "metrics.jsonl"
        pids: dict[int, int] = {}
        window: dict[int, list] = {}  # rank -> [(wall, cpu, runnable) at start, at end]
        reached = None
        while launcher.poll() is None:
            time.sleep(0.1)
            pids = pids or worker_threads(run_dir)
            records = _records(metrics)
            for rank, pid in pids.items():
                if rank not in window and any(r.get("kind") == "train" and r.get("rank") == rank for r in records):
                    window[rank] = [(time.time(), *(scheduler_times(pid) or (0.0, 0.0)))]
            hits = [r for r in records if r.get("kind") == "test" and r.get("test_accuracy", 0) >= target]
            if hits and reached is None:
                reached = hits[0]
                for rank, pid in pids.items():
                    sample = scheduler_times(pid)
                    if rank in window and sample is not None:
                        window[rank].append((time.time(), *sample))
                launcher.send_signal(signal.SIGINT)
        launcher.wait(timeout=60)
        records = _records(metrics)
    tests = [r for r in records if r.get("kind") == "test"]
    trains = [r for r in records if r.get("kind") == "train"]
    waiting = {}
    for rank, samples in window.items():
        if len(samples) == 2:
            (w0, c0, r0), (w1, c1, r1) = samples
            waiting[str(rank)] = max(0.0, 1 - ((c1 - c0) + (r1 - r0)) / (w1 - w0))
    result: dict[str, Any] = {
        "overrides": MODES[name], "reached": reached is not None,
        "seconds_to_target": (reached["time"] - started) if reached else None,
        "clock_at_target": reached.get("clock") if reached else None,
        "best_test_accuracy": max((r["test_accuracy"] for r in tests), default=None),
        "evaluations": [[round(r["time"] - started, 2), r.get("clock"), r["test_accuracy"]] for r in tests],
        "first_train_report_seconds": (min(r["time"] for r in trains) - started) if trains else None,
        "waiting_fraction_per_worker": waiting,
        "waiting_fraction": sum(waiting.values()) / len(waiting) if waiting else None,
        "load_average": list(os.getloadavg()),
    }
    log.info("%s: %s in %s s, waiting %s", name, "reached" if reached else "missed",
             f"{result['seconds_to_target']:.1f}" if reached else "-", waiting)
    return result


def _records(path: pathlib.Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written right now
            break
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--eval-every", type=int, default=100, help="clocks between test evaluations")
    parser.add_argument("--max-steps", type=int, default=4000, help="per worker, if the target is never reached")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runs = {name: run_mode(name, args.target, args.eval_every, args.max_steps) for name in args.modes.split(",")}
    figures = {"config": str(CONFIG.relative_to(ROOT)), "workers": 2, "shards": 2, "target_accuracy": args.target,
               "eval_every_clocks": args.eval_every, "reference": REFERENCE, "modes": runs}
    common.write_result("consistency", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
