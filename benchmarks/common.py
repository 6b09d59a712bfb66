"""What every benchmark shares: one-thread BLAS, interleaved timing with robust statistics, and
a results file that says where and how the figures were taken.

The machines these run on are shared and noisy, so a figure is the median of many samples
(with its inter-quartile range as the noise), contenders are timed in alternation so that a
burst of load hits them alike, and each results file records the load average, the BLAS kernel
and the thread settings next to the figures: a number without its conditions is not evidence.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import pathlib
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
ENV_FACTS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "MKL_NUM_THREADS", "DOWNPOUR_NO_NUMBA")


@dataclass(frozen=True)
class Stats:
    """Summary of repeated timings, in seconds."""

    median: float
    q1: float
    q3: float
    minimum: float
    samples: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def noise(self) -> float:
        """The inter-quartile range relative to the median: how much to trust the median."""
        return self.iqr / self.median if self.median else float("nan")

    def as_dict(self, scale: float = 1e3) -> dict[str, float]:
        """The figures in milliseconds (by default), plus the relative noise."""
        d = {k: v * scale for k, v in asdict(self).items() if k != "samples"}
        return {**d, "iqr": self.iqr * scale, "noise": self.noise, "samples": self.samples}


def summarize(times: list[float]) -> Stats:
    """Median and quartiles of a list of timings."""
    if not times:
        raise ValueError("no timings to summarize")
    ordered = sorted(times)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return Stats(statistics.median(ordered), q1, q3, ordered[0], len(ordered))


def calls_per_sample(fn: Callable[[], Any], target_seconds: float = 0.02) -> int:
    """How many calls of `fn` make one sample last about `target_seconds` (at least one)."""
    started = time.perf_counter()
    fn()
    once = max(time.perf_counter() - started, 1e-7)
    return max(1, int(target_seconds / once))


@dataclass(frozen=True)
class Timing:
    """Wall-clock and CPU-time statistics of one contender.

    On a shared machine the wall clock also counts the time other processes held the core;
    the process's CPU time does not, so for single-threaded code it is the steadier figure.
    """

    wall: Stats
    cpu: Stats


def time_interleaved(contenders: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 3,
                     target_seconds: float = 0.02, seed: int = 0) -> dict[str, Timing]:
    """Time each contender `repeats` times, alternating between them in a shuffled order.

    Each sample is the mean time of a block of calls lasting about `target_seconds`, so very
    fast calls are not lost in the clock's resolution; the order within each round is
    shuffled so that neither contender always runs right after the other.
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    blocks = {name: calls_per_sample(fn, target_seconds) for name, fn in contenders.items()}
    wall: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    shuffler = random.Random(seed)
    for _ in range(repeats):
        shuffler.shuffle(order)
        for name in order:
            fn, calls = contenders[name], blocks[name]
            started, started_cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                fn()
            cpu[name].append((time.process_time() - started_cpu) / calls)
            wall[name].append((time.perf_counter() - started) / calls)
    return {name: Timing(summarize(wall[name]), summarize(cpu[name])) for name in contenders}


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Limit NumPy's BLAS (and any OpenMP pool) to one thread, where threadpoolctl can."""
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415 - optional
    except ImportError:
        log.warning("threadpoolctl not installed: relying on OMP/OPENBLAS_NUM_THREADS=1")
        yield
        return
    with threadpool_limits(limits=1):
        yield


def blas_facts() -> list[dict[str, Any]]:
    """The thread pools threadpoolctl sees (library, version, kernel, threads), if installed."""
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415 - optional
    except ImportError:
        return []
    keep = ("internal_api", "version", "architecture", "num_threads", "threading_layer", "prefix")
    return [{k: pool.get(k) for k in keep} for pool in threadpool_info()]


def machine_facts() -> dict[str, Any]:
    """What a reader needs to judge a timing: the machine, the software, the load, the BLAS."""
    facts: dict[str, Any] = {
        "hostname": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_average": list(os.getloadavg()),
        "blas": blas_facts(),
        "env": {name: os.environ.get(name) for name in ENV_FACTS},
    }
    for package in ("torch", "numba", "cupy", "zmq"):
        module = sys.modules.get(package)
        if module is not None:
            facts[package] = getattr(module, "__version__", "?")
    return facts


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_result(name: str, figures: dict[str, Any], directory: pathlib.Path = RESULTS) -> pathlib.Path:
    """Write `figures` to `directory/NAME.json` with the command line, the date and the machine."""
    directory.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "command": " ".join([pathlib.Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "figures": figures,
    }
    path = directory / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    log.info("wrote %s", path)
    return path


def read_result(path: pathlib.Path) -> dict[str, Any]:
    """A results file written by `write_result`."""
    return json.loads(pathlib.Path(path).read_text())


@dataclass
class JobRun:
    """What one `downpour launch` left behind: its summary, its metrics records, the command."""

    summary: dict[str, Any]
    records: list[dict[str, Any]]
    command: str
    launcher_seconds: float

    def last_train(self) -> dict[int, dict[str, Any]]:
        """Each worker's last training report (its byte counts are cumulative)."""
        last: dict[int, dict[str, Any]] = {}
        for r in self.records:
            if r.get("kind") == "train":
                last[r.get("rank", -1)] = r
        return last


def launch_job(config: pathlib.Path, overrides: list[str], timeout: float) -> JobRun:
    """Run one job to its end on a local cluster in a scratch run directory, as a user would."""
    root = RESULTS.parent.parent
    with tempfile.TemporaryDirectory(prefix="downpour-bench-") as tmp:
        run_dir = pathlib.Path(tmp) / "run"
        argv = [sys.executable, "-P", "-m", "downpour", "launch", str(config), "--run-dir", str(run_dir), "--quiet"]
        for o in overrides:
            argv += ["--set", o]
        started = time.time()
        done = subprocess.run(argv, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              timeout=timeout, check=False)
        wall = time.time() - started
        summary_path = run_dir / "summary.json"
        if not summary_path.exists():
            raise RuntimeError(f"no summary.json (launcher exit {done.returncode}): {done.stderr[-2000:]}")
        summary = json.loads(summary_path.read_text())
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    command = "downpour launch " + str(config.relative_to(root)) + "".join(f" --set {shlex.quote(o)}" for o in overrides)
    return JobRun(summary, records, command, wall)

