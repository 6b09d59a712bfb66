"""How close to raw ZeroMQ does downpour move a model? PULL and PUSH+PULL, three model sizes.

downpour's side is the real thing: a coordinator and a shard started as separate processes by
the same command lines the launcher uses (`python -P -m downpour coordinator|shard`), and this
process talking to the shard through `ps.client.ShardClient` as a worker does, so every
figure includes header packing and validation, the shard's bookkeeping, its update rule (for
PUSH+PULL) and the handing of the reply to the model's parameters as a worker does it
(`FlatParameters.receive`: the parameters keep the received frame as their memory). The reference is a
raw pyzmq DEALER/ROUTER pair, its ROUTER also in a process of its own, moving the same bytes
with zero-copy sends and nothing else (the reply is not copied anywhere). The contenders are
timed in alternation in one run, so load on the shared machine hits both alike. downpour's
side keeps every array on the wire (`shared_memory=False`), as between hosts; a third contender,
the same client with shared memory (the default on one host, `ps/shm.py`), shows what a local
cluster gets instead.

The model is a logistic regression on an `npz` data set whose input width is chosen so the
flat parameters come to 64 KiB, 4 MiB and 16 MiB of float32 (to within 40 bytes).

    python benchmarks/wire.py [--repeats 15] [--sizes 64KiB,4MiB,16MiB]

Writes benchmarks/results/wire.json: per size and operation the median time per round trip
(ms), the throughput (GB/s of model bytes moved), and downpour's share of raw pyzmq.
"""
from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import multiprocessing  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from typing import Any

import numpy as np  # noqa: E402
import zmq  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402
from downpour.model.flat import FlatParameters  # noqa: E402
from downpour.model.tensor import Tensor  # noqa: E402
from downpour.ps import protocol as P  # noqa: E402
from downpour.ps.client import ShardClient  # noqa: E402
from downpour.ps.control import ControlClient  # noqa: E402
from downpour.ps.layout import layout_from_dict  # noqa: E402

log = logging.getLogger("benchmarks.wire")

SIZES = {"64KiB": 64 << 10, "4MiB": 4 << 20, "16MiB": 16 << 20}
CLASSES = 10
TARGET_PULL_SHARE = 0.80  # downpour PULL of 4 MiB vs raw pyzmq, from issue #6
TARGET_SIZE = "4MiB"


# ---- the raw pyzmq reference ------------------------------------------------------------------
def serve_raw(address_queue: Any, nbytes: int) -> None:
    """A ROUTER that answers every request with one preallocated `nbytes` frame, zero-copy."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    address_queue.put(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    weights = np.ones(nbytes // 4, np.float32)
    while True:
        frames = sock.recv_multipart(copy=False)
        if frames[1].bytes == b"stop":
            break
        sock.send_multipart([frames[0], b"ok", memoryview(weights).cast("B")], copy=False)
    sock.close(0)
    ctx.term()


class RawPair:
    """The client end of the raw reference: one request, one reply, as little else as possible."""

    def __init__(self, ctx: zmq.Context, nbytes: int):
        mp = multiprocessing.get_context("spawn")
        addresses = mp.Queue()
        self.server = mp.Process(target=serve_raw, args=(addresses, nbytes), daemon=True)
        self.server.start()
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(addresses.get(timeout=60))
        self.gradient = memoryview(np.ones(nbytes // 4, np.float32)).cast("B")

    def pull(self) -> None:
        self.sock.send(b"pull")
        self.sock.recv_multipart(copy=False)

    def push_pull(self) -> None:
        self.sock.send_multipart([b"push_pull", self.gradient], copy=False)
        self.sock.recv_multipart(copy=False)

    def close(self) -> None:
        self.sock.send(b"stop")
        self.server.join(timeout=10)
        if self.server.is_alive():
            self.server.kill()
        self.sock.close(0)


# ---- downpour: a real coordinator and shard -------------------------------------------------
def input_width(nbytes: int) -> int:
    """The logistic regression input width whose weights and biases fill about `nbytes`."""
    return round((nbytes // 4 - CLASSES) / CLASSES)


def write_config(directory: pathlib.Path, nbytes: int) -> pathlib.Path:
    """A one-shard async job of the right size on a tiny random `npz` data set."""
    width = input_width(nbytes)
    rng = np.random.default_rng(0)
    data = directory / "data.npz"
    # Every class present: the loader counts the classes from the labels, and so sizes the model.
    np.savez(data, x_train=rng.standard_normal((CLASSES, width), dtype=np.float32), y_train=np.arange(CLASSES),
             x_test=rng.standard_normal((CLASSES, width), dtype=np.float32), y_test=np.arange(CLASSES))
    config = directory / "job.yaml"
    config.write_text(
        f"name: wire_{nbytes}\nworkers: 1\nshards: 1\ndata:\n  dataset: npz:{data}\n"
        "model:\n  type: logreg\noptimizer:\n  type: sgd\n  lr: 1.0e-9\n"
        "cluster:\n  host: 127.0.0.1\n  startup_timeout: 900\n  heartbeat_timeout: 30\n")
    return config


@contextlib.contextmanager
def downpour_shard(ctx: zmq.Context, nbytes: int) -> Iterator[tuple[ShardClient, ShardClient]]:
    """A coordinator and one shard as processes, and two ShardClients registered as worker 0:
    one that keeps every array on the wire, one that uses shared memory (ps/shm.py).

    The job stays in its start-up state (no evaluator registers), which keeps the shard
    serving for as long as the benchmark needs it."""
    env = dict(os.environ)
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="downpour-wire-") as tmp:
        directory = pathlib.Path(tmp)
        config = write_config(directory, nbytes)
        address_file = directory / "coordinator.addr"
        with open(directory / "roles.log", "wb") as logs, _stopped_at_exit(procs):
            procs.append(subprocess.Popen(
                [sys.executable, "-P", "-m", "downpour", "coordinator", "--config", str(config), "--bind",
                 "tcp://127.0.0.1:*", "--run-dir", str(directory), "--address-file", str(address_file)],
                env=env, stdout=logs, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + 120
            while not address_file.exists():
                if procs[0].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the coordinator did not start:\n" + (directory / "roles.log").read_text())
                time.sleep(0.05)
            coordinator = address_file.read_text().strip()
            procs.append(subprocess.Popen(
                [sys.executable, "-P", "-m", "downpour", "shard", "--coordinator", coordinator, "--bind",
                 "tcp://127.0.0.1:*", "--rank", "0"], env=env, stdout=logs, stderr=subprocess.STDOUT))
            control = ControlClient(ctx, coordinator, P.WORKER, timeout=10.0)
            info = control.register({"rank": 0}, startup_timeout=60).body()
            layout = layout_from_dict(info["layout"])
            address = _wait_for_shard(control, procs[1], directory)
            wire = ShardClient(ctx, layout, [address], info["job_id"], control.name, timeout=30.0,
                               shared_memory=False)
            local = ShardClient(ctx, layout, [address], info["job_id"], control.name, timeout=30.0)
            try:
                yield wire, local
            finally:
                wire.close()
                local.close()
                control.close()


@contextlib.contextmanager
def _stopped_at_exit(procs: list[subprocess.Popen]) -> Iterator[None]:
    """Terminate (then kill) every process in `procs` when the block ends, however it ends."""
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_for_shard(control: ControlClient, shard: subprocess.Popen, directory: pathlib.Path) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if shard.poll() is not None:
            raise RuntimeError("the shard exited:\n" + (directory / "roles.log").read_text())
        nodes = control.status()["nodes"]
        found = [n["address"] for n in nodes if n["role"] == P.SHARD and n["address"] and n["stats"]]
        if found:
            return found[0]
        time.sleep(0.1)
    raise RuntimeError("the shard did not register in time")


# ---- the measurement --------------------------------------------------------------------------
def measure_size(ctx: zmq.Context, label: str, nbytes: int, repeats: int) -> dict[str, Any]:
    raw = None
    try:
        with downpour_shard(ctx, nbytes) as (client, local):
            flat = np.zeros(client.layout.total, np.float32)
            model = FlatParameters([(p.name, Tensor(np.zeros(p.shape, np.float32))) for p in client.layout.params])
            if abs(flat.nbytes - nbytes) > 64:
                raise RuntimeError(f"{label}: the job's model has {flat.nbytes} bytes, not about {nbytes}")
            raw = RawPair(ctx, flat.nbytes)  # the very same bytes each way
            grad = np.full_like(flat, 1e-3)
            local_grad = local.gradient_buffers(1)[0]
            local_grad[:] = grad
            clock = iter(range(1, 1 << 40))
            client.pull(0, flat)
            local.pull(0, flat)  # the first read tells it where the shard's memory is
            contenders = {
                "downpour_pull": lambda: client.pull(0, model),
                "raw_pull": raw.pull,
                "shm_pull": lambda: local.pull(0, model),
                "downpour_push_pull": lambda: client.push_pull(grad, next(clock), model),
                "raw_push_pull": raw.push_pull,
                "shm_push_pull": lambda: local.push_pull(local_grad, next(clock), model),
            }
            timings = common.time_interleaved(contenders, repeats, warmup=3, target_seconds=0.05)
            model_bytes = flat.nbytes
    finally:
        if raw is not None:
            raw.close()
    figures: dict[str, Any] = {"model_bytes": model_bytes, "label": label}
    for op, moved in (("pull", model_bytes), ("push_pull", 2 * model_bytes)):
        ours, theirs = timings[f"downpour_{op}"].wall, timings[f"raw_{op}"].wall
        figures[op] = {
            "downpour_ms": ours.as_dict(), "raw_ms": theirs.as_dict(),
            "downpour_gb_per_s": moved / ours.median / 1e9, "raw_gb_per_s": moved / theirs.median / 1e9,
            "share_of_raw": theirs.median / ours.median,
            "shm_ms": timings[f"shm_{op}"].wall.as_dict(), "shm_gb_per_s": moved / timings[f"shm_{op}"].wall.median / 1e9,
        }
    log.info("%s: pull %.2f GB/s vs raw %.2f GB/s (%.0f%%); push+pull %.2f vs %.2f GB/s", label,
             figures["pull"]["downpour_gb_per_s"], figures["pull"]["raw_gb_per_s"],
             100 * figures["pull"]["share_of_raw"], figures["push_pull"]["downpour_gb_per_s"],
             figures["push_pull"]["raw_gb_per_s"])
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--sizes", default=",".join(SIZES))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ctx = zmq.Context()
    sizes = {}
    for label in args.sizes.split(","):
        sizes[label] = measure_size(ctx, label, SIZES[label], args.repeats)
        sizes[label]["load_average"] = list(os.getloadavg())
    ctx.term()
    figures: dict[str, Any] = {
        "repeats": args.repeats, "sizes": sizes,
        "downpour_side": "coordinator + shard as separate processes (ps.cli), ShardClient in this process, pulling "
                         "into the model's parameters as a worker does (they keep the received frame: no copy)",
        "raw_side": "pyzmq DEALER -> ROUTER in a separate process, zero-copy frames, reply not copied",
        "shm_side": "the same shard and client with the arrays in shared memory (the default on one host): "
                    "the weights copied once from the shard's memory, the gradient read where it lies",
        "target": {"size": TARGET_SIZE, "op": "pull", "min_share_of_raw": TARGET_PULL_SHARE},
    }
    if TARGET_SIZE in sizes:
        share = sizes[TARGET_SIZE]["pull"]["share_of_raw"]
        figures["target"].update(share=share, met=share >= TARGET_PULL_SHARE)
    common.write_result("wire", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
