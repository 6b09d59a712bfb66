"""PyTorch DDP over gloo on the sparse benchmark's model and data: the all-reduce baseline.

Two processes on this machine (gloo over loopback TCP), each with torch.nn.EmbeddingBag
(buckets x classes, sum, the texts' per-entry values as per-sample weights) plus a bias: the
model of `sparse_logreg`, the same hashed batches as downpour's two workers (rank r of 2, the
job's seed), and Adagrad. With dense gradients DDP all-reduces the whole table every step; with
`sparse=True` it all-gathers the rows each process touched (gloo's sparse all-reduce).

    python benchmarks/sparse_ddp.py --buckets 4194304 [--sparse] [--steps N]

prints one JSON line: samples/s (both processes together), seconds a step, and the bytes of
gradient one process hands the all-reduce per step.
"""
from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches(rank: int, args: argparse.Namespace):
    """The hashed batches downpour's worker `rank` of 2 trains on, as torch tensors."""
    import torch

    from downpour.worker import datasets

    data = datasets.load("fortunes_langid", seed=0, features={"kind": "char", "n_min": 1, "n_max": 4,
                                                               "buckets": args.buckets})
    for x, y in data.batches(rank, WORLD, args.batch_size, seed=0):
        yield (torch.from_numpy(x.ids), torch.from_numpy(x.offsets), torch.from_numpy(x.values),
               torch.from_numpy(y))


def _worker(rank: int, args: argparse.Namespace, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    torch.sparse.check_sparse_tensor_invariants.disable()  # (the default; said aloud, torch stays quiet)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)

    class LogReg(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bag = torch.nn.EmbeddingBag(args.buckets, 7, mode="sum", sparse=args.sparse,
                                             _weight=torch.zeros(args.buckets, 7))
            self.bias = torch.nn.Parameter(torch.zeros(7))

        def forward(self, ids, offsets, values):
            return self.bag(ids, offsets, per_sample_weights=values) + self.bias

    model = DistributedDataParallel(LogReg())
    rule = torch.optim.Adagrad(model.parameters(), lr=args.lr)
    batches = _batches(rank, args)
    grad_bytes = 0
    started = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            dist.barrier()
            started = time.perf_counter()
        ids, offsets, values, y = next(batches)
        loss = torch.nn.functional.cross_entropy(model(ids, offsets, values), y)
        rule.zero_grad()
        loss.backward()
        grad = model.module.bag.weight.grad
        grad_bytes = (grad._nnz() * (8 + 4 * 7) if grad.is_sparse else 4 * grad.numel()) + 4 * 7
        rule.step()
    dist.barrier()
    elapsed = time.perf_counter() - started
    pathlib.Path(out, f"{rank}.json").write_text(json.dumps(
        {"samples_per_s": args.steps * args.batch_size / elapsed, "step_s": elapsed / args.steps,
         "grad_bytes_per_step": grad_bytes, "loss": float(loss.detach())}))
    dist.destroy_process_group()


def run(buckets: int, sparse: bool, steps: int, batch_size: int = 64, lr: float = 0.5, warmup: int = 5) -> dict:
    """One DDP run of two processes; the figures of both together."""
    import torch.multiprocessing as mp

    args = argparse.Namespace(buckets=buckets, sparse=sparse, steps=steps, batch_size=batch_size, lr=lr,
                              warmup=warmup)
    with tempfile.TemporaryDirectory(prefix="downpour-ddp-") as out:
        mp.spawn(_worker, args=(args, _free_port(), out), nprocs=WORLD, join=True)
        ranks = [json.loads(pathlib.Path(out, f"{r}.json").read_text()) for r in range(WORLD)]
    return {"buckets": buckets, "sparse": sparse, "steps": steps, "batch_size": batch_size,
            "samples_per_s": sum(r["samples_per_s"] for r in ranks),
            "step_s": max(r["step_s"] for r in ranks),
            "grad_bytes_per_step": max(r["grad_bytes_per_step"] for r in ranks),
            "loss": ranks[0]["loss"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buckets", type=int, default=1 << 22)
    parser.add_argument("--sparse", action="store_true", help="EmbeddingBag(sparse=True): sparse gradients")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.buckets, args.sparse, args.steps, args.batch_size)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
