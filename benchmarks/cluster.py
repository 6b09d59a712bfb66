"""Does the cluster keep its workers computing? Updates/s of real jobs against two references.

For the MLP (784-512-512-10, batch 128, SGD) and LeNet-5 (batch 64, Adam) on Fashion-MNIST,
with 1, 2 and 4 workers and 1 and 2 shards (async), three contenders run the same model, batch,
data and update rule, in alternation, in one run:

- downpour: a real local cluster (`python -P -m downpour launch`), its rate read from the workers'
  metrics (steps between their first and last report over the time between them, so start-up,
  data loading and the final evaluation are not counted);
- the no-communication ceiling: N processes, each computing gradients and applying the update
  to its own copy of the weights, nothing sent anywhere;
- a Ray actor parameter server: one actor holding the weights and the update rule, N worker
  actors looping pull-compute-push (one `push_pull` call per step, as the naive loop of issue
  #6). Ray is not a dependency of downpour: it runs under the interpreter given by `--ray-python`
  (a virtualenv of its own, e.g. `python -m venv /tmp/raybench && /tmp/raybench/bin/pip install
  ray numpy numba`), with the project installed in it (`pip install -e . --no-deps`); without one, that column is skipped and the
  reason recorded.

    python benchmarks/cluster.py [--seconds 10] [--workers 1,2,4] [--shards 1,2] [--models mlp,lenet5]
                                 [--ray-python /tmp/raybench/bin/python]

Every process gets one BLAS thread. Writes benchmarks/results/cluster.json.
"""
from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402

log = logging.getLogger("benchmarks.cluster")

# The jobs: a shipped config plus the overrides that make it the benchmark's model.
JOBS = {
    "mlp": ("configs/fashion_mlp.yaml", ["model.hidden=[512,512]", "model.dropout=0", "optimizer.momentum=0"],
            "MLP 784-512-512-10, batch 128, SGD"),
    "lenet5": ("configs/fashion_lenet5.yaml", ["model.dropout=0"], "LeNet-5, batch 64, Adam"),
}
TARGET = {"model": "mlp", "workers": 2, "shards": 1, "min_share_of_ceiling": 0.65, "min_times_ray": 2.5}
# Every row, every shard count, also with every array on the wire: what roles on separate hosts
# would see (and what the scale model, benchmarks/simulate.py, is checked against).
WIRE = ("cluster.shared_memory=false",)
# Measured on the target row too (1 shard), to show what each part of the design buys.
VARIANTS = {"wire+fp16": [*WIRE, "compression.codec=fp16"], "no-overlap": ["train.overlap=false"]}
WARMUP_SECONDS = 1.0  # left out of every rate: first-touch allocations, Numba dispatch, caches
ENV_ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                  "NUMBA_NUM_THREADS": "1"}


def job_config(model: str, workers: int, shards: int, extra: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    """The config path and `--set` overrides of one benchmark job."""
    path, overrides, _ = JOBS[model]
    return str(ROOT / path), [*overrides, f"workers={workers}", f"shards={shards}",
                              "consistency.mode=async", *extra]


# ---- what every contender computes --------------------------------------------------------------
class LocalStep:
    """One worker's gradient computation, exactly as `worker.loop` does it, without the network."""

    def __init__(self, config: dict, rank: int, world: int):
        from downpour.model import optim  # noqa: PLC0415
        from downpour.worker.job import build_job  # noqa: PLC0415 - also runs under the Ray interpreter

        self.config = config
        self.job = build_job(config, rank=rank)
        self.grad = np.zeros_like(self.job.flat.data)
        t = config["train"]
        self.batches = self.job.data.batches(rank, world, t["batch_size"], config["seed"])
        opt = {k: v for k, v in config["optimizer"].items() if k not in ("schedule", "final_lr")}
        self.rule = optim.make(opt.pop("type"), **opt)
        self.job.net.train()

    def gradient(self) -> np.ndarray:
        from downpour.worker.objective import batch_loss  # noqa: PLC0415

        x, y = next(self.batches)
        loss = batch_loss(self.job.net, self.job.data.kind, x, y)
        self.job.net.zero_grad()
        loss.backward()
        self.job.flat.gather_grads(out=self.grad)
        return self.grad

    def local_update(self) -> None:
        self.rule.step(self.job.flat.data, self.gradient())


def count_steps(step, start_at: float, seconds: float) -> dict[str, float]:
    """Run `step` from the wall-clock time `start_at`; count the steps of the measured window."""
    while time.time() < start_at:
        time.sleep(0.001)
    begin = start_at + WARMUP_SECONDS
    while time.time() < begin:
        step()
    steps, started = 0, time.perf_counter()
    cpu = time.process_time()
    while time.perf_counter() - started < seconds:
        step()
        steps += 1
    elapsed = time.perf_counter() - started
    return {"steps": steps, "seconds": elapsed, "cpu_seconds": time.process_time() - cpu}


# ---- (a) the no-communication ceiling -------------------------------------------------------------
def ceiling_worker(config_json: str, rank: int, world: int, start_at: float, seconds: float) -> None:
    """One process of the ceiling (run as `cluster.py --ceiling-worker ...`): prints its count."""
    step = LocalStep(json.loads(config_json), rank, world)
    print(json.dumps(count_steps(step.local_update, start_at, seconds)), flush=True)


def run_ceiling(config: dict, workers: int, seconds: float) -> dict[str, Any]:
    start_at = time.time() + 4.0 + workers  # time enough for every process to load the data
    procs = [subprocess.Popen(
        [sys.executable, __file__, "--ceiling-worker", json.dumps(config), str(rank), str(workers),
         str(start_at), str(seconds)], stdout=subprocess.PIPE, env=_env()) for rank in range(workers)]
    counts = [json.loads(p.communicate(timeout=300)[0].decode().strip().splitlines()[-1]) for p in procs]
    return _totals(counts, config)


# ---- (b) a Ray actor parameter server ------------------------------------------------------------
def ray_part(config_json: str, workers: int, seconds: float) -> None:
    """Under the Ray interpreter: the naive actor parameter server; prints the workers' counts."""
    import ray  # noqa: PLC0415 - only in the benchmark's own virtualenv

    config = json.loads(config_json)
    ray.init(num_cpus=workers + 1, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, runtime_env={"env_vars": ENV_ONE_THREAD})

    @ray.remote
    class ParameterServer:
        def __init__(self) -> None:
            self.step = LocalStep(config, 0, 1)  # the same seeded weights and update rule
            self.weights = self.step.job.flat.data

        def pull(self) -> np.ndarray:
            return self.weights

        def push_pull(self, grad: np.ndarray) -> np.ndarray:
            self.step.rule.step(self.weights, grad)
            return self.weights

    @ray.remote
    class Worker:
        def __init__(self, rank: int) -> None:
            self.step = LocalStep(config, rank, workers)

        def ready(self) -> bool:
            return True

        def run(self, server, start_at: float) -> dict[str, float]:
            flat = self.step.job.flat.data
            np.copyto(flat, ray.get(server.pull.remote()))

            def one_step() -> None:
                np.copyto(flat, ray.get(server.push_pull.remote(self.step.gradient())))
            return count_steps(one_step, start_at, seconds)

    server = ParameterServer.remote()
    pool = [Worker.remote(rank) for rank in range(workers)]
    ray.get([w.ready.remote() for w in pool])
    start_at = time.time() + 1.0
    counts = ray.get([w.run.remote(server, start_at) for w in pool])
    print(json.dumps({"counts": counts, "ray": ray.__version__}), flush=True)
    ray.shutdown()


def run_ray(python: str | None, config: dict, workers: int, seconds: float) -> dict[str, Any]:
    if not python:
        return {"skipped": "no --ray-python interpreter given"}
    env = _env()
    try:
        done = subprocess.run([python, __file__, "--ray-part", json.dumps(config), str(workers), str(seconds)],
                              capture_output=True, env=env, timeout=300 + 3 * seconds, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"skipped": f"the Ray run failed: {exc}"}
    if done.returncode != 0:
        return {"skipped": "the Ray run failed: " + done.stderr.decode(errors="replace")[-800:]}
    answer = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return {**_totals(answer["counts"], config), "ray_version": answer["ray"]}


# ---- downpour ------------------------------------------------------------------------------------
def run_downpour(model: str, workers: int, shards: int, steps: int, batch: int,
                 extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Launch a real local cluster; its rate from the workers' reports (start-up not counted)."""
    path, overrides = job_config(model, workers, shards, (f"train.steps={steps}", "train.log_every=25", *extra))
    with tempfile.TemporaryDirectory(prefix="downpour-cluster-") as tmp:
        run_dir = pathlib.Path(tmp) / "run"
        argv = [sys.executable, "-P", "-m", "downpour", "launch", path, "--run-dir", str(run_dir), "--quiet"]
        for o in overrides:
            argv += ["--set", o]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, env=_env(), timeout=600,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{model} x{workers}/{shards} failed: {done.stderr.decode(errors='replace')[-800:]}")
        reports = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((run_dir / "summary.json").read_text())
    rates, blocked = [], []
    for rank in range(workers):
        mine = [r for r in reports if r.get("kind") == "train" and r.get("role") == "worker" and r.get("rank") == rank]
        first = next((r for r in mine if r["time"] - mine[0]["time"] >= WARMUP_SECONDS), mine[0])
        last = mine[-1]
        if last["time"] <= first["time"]:
            raise RuntimeError(f"{model} x{workers}/{shards}: too few reports to measure a rate")
        rates.append((last["step"] - first["step"]) / (last["time"] - first["time"]))
        blocked.append((last["comm_wait_s"] - first["comm_wait_s"]) / (last["time"] - first["time"]))
    return {"updates_per_s": sum(rates), "samples_per_s": sum(rates) * batch,
            "per_worker_updates_per_s": rates, "blocked_share": blocked, "updates_applied": summary["updates_applied"],
            "wall_seconds": summary["wall_seconds"], "status": summary["status"]}


# ---- plumbing ------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    return dict(os.environ, **ENV_ONE_THREAD)


def _totals(counts: list[dict[str, float]], config: dict) -> dict[str, Any]:
    rates = [c["steps"] / c["seconds"] for c in counts]
    return {"updates_per_s": sum(rates), "samples_per_s": sum(rates) * config["train"]["batch_size"],
            "per_worker_updates_per_s": rates,
            "cpu_share": [c["cpu_seconds"] / c["seconds"] for c in counts]}


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median updates/s (an odd number of rounds gives a real run), plus all rates."""
    ranked = sorted(runs, key=lambda r: r["updates_per_s"])
    return {**ranked[(len(ranked) - 1) // 2], "rounds": [r["updates_per_s"] for r in runs]}


def measure_row(args: argparse.Namespace, model: str, workers: int, rounds: int,
                variants: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """One (model, workers) row: ceiling, downpour with each shard count (and each variant, on 1
    shard) and Ray, in alternation."""
    from downpour.ps import config as job_config_module  # noqa: PLC0415

    path, overrides = job_config(model, workers, 1)
    config = job_config_module.load(path, overrides)
    variants = variants or {}
    runs: dict[str, list[dict[str, Any]]] = {"ceiling": [], "ray": [], **{f"downpour/{s}": [] for s in args.shards},
                                             **{f"downpour/{s}+wire": [] for s in args.shards},
                                             **{f"downpour/1+{name}": [] for name in variants}}
    loads = []
    for _ in range(rounds):
        runs["ceiling"].append(run_ceiling(config, workers, args.seconds))
        per_worker = runs["ceiling"][-1]["updates_per_s"] / workers
        steps = max(300, int(per_worker * (args.seconds + WARMUP_SECONDS)))
        for position, shards in enumerate(args.shards):
            runs[f"downpour/{shards}"].append(run_downpour(model, workers, shards, steps,
                                                                config["train"]["batch_size"]))
            runs[f"downpour/{shards}+wire"].append(run_downpour(model, workers, shards, steps,
                                                                     config["train"]["batch_size"], WIRE))
            if position == 0:  # Ray between the downpour runs: load drifts hit both alike
                runs["ray"].append(run_ray(args.ray_python, config, workers, args.seconds))
        for name, extra in variants.items():
            runs[f"downpour/1+{name}"].append(run_downpour(model, workers, 1, steps, config["train"]["batch_size"],
                                                           tuple(extra)))
        loads.append(list(os.getloadavg()))
    ray = runs.pop("ray")
    row: dict[str, Any] = {"ceiling": _median_of(runs.pop("ceiling")), "load_average": loads, "rounds": rounds,
                           "ray": _median_of(ray) if all("updates_per_s" in r for r in ray) else ray[-1],
                           "downpour": {key.split("/")[1]: _median_of(r) for key, r in runs.items()}}
    for d in row["downpour"].values():
        d["share_of_ceiling"] = d["updates_per_s"] / row["ceiling"]["updates_per_s"]
        if "updates_per_s" in row["ray"]:
            d["times_ray"] = d["updates_per_s"] / row["ray"]["updates_per_s"]
    log.info("%s x%d: ceiling %.0f, ray %s, downpour %s updates/s (load %.1f)", model, workers,
             row["ceiling"]["updates_per_s"], f"{row['ray'].get('updates_per_s', float('nan')):.0f}",
             {s: round(d["updates_per_s"]) for s, d in row["downpour"].items()}, os.getloadavg()[0])
    return row


def measure(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for workers in args.workers:
        for model in args.models:
            is_target = (model, workers) == (TARGET["model"], TARGET["workers"])
            rounds = max(args.rounds, args.target_rounds) if is_target else args.rounds
            results.setdefault(model, {})[str(workers)] = measure_row(args, model, workers, rounds,
                                                                      VARIANTS if is_target else None)
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--ceiling-worker":
        ceiling_worker(argv[1], int(argv[2]), int(argv[3]), float(argv[4]), float(argv[5]))
        return 0
    if argv and argv[0] == "--ray-part":
        ray_part(argv[1], int(argv[2]), float(argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=lambda s: [int(n) for n in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--shards", type=lambda s: [int(n) for n in s.split(",")], default=[1, 2])
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(JOBS))
    parser.add_argument("--rounds", type=int, default=1, help="alternation rounds per row (median taken)")
    parser.add_argument("--target-rounds", type=int, default=3, help="rounds for the row the target is judged on")
    parser.add_argument("--ray-python", default="/tmp/raybench/bin/python")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.ray_python and not pathlib.Path(args.ray_python).exists():
        log.warning("%s not found: skipping the Ray parameter server", args.ray_python)
        args.ray_python = None
    results = measure(args)
    figures: dict[str, Any] = {"seconds": args.seconds, "warmup_seconds": WARMUP_SECONDS, "models": {m: JOBS[m][2] for m in args.models},
                               "results": results, "target": dict(TARGET)}
    row = results.get(TARGET["model"], {}).get(str(TARGET["workers"]))
    if row and str(TARGET["shards"]) in row["downpour"]:
        d = row["downpour"][str(TARGET["shards"])]
        figures["target"].update(share_of_ceiling=d["share_of_ceiling"], times_ray=d.get("times_ray"),
                                 met=d["share_of_ceiling"] >= TARGET["min_share_of_ceiling"]
                                 and (d.get("times_ray") or 0) >= TARGET["min_times_ray"])
    common.write_result("cluster", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
