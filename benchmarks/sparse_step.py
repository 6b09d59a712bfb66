"""Where a step by rows spends its CPU: one worker's step of `benchmarks/sparse.py`'s job and both
shards' handling of it, phase by phase, in one process (no sockets), as the table grows.

The job is sparse_logreg on fortunes_langid (batch 64, Adagrad lr 0.5, 2 shards), overlapped as
the benchmark's async workers are: each step reads the rows of the batch two steps ahead and
pushes its own. The phases run the code the roles run (worker/rows.py, ps/spans.py, the client's
span parts, the shard's header spans, ParameterStore, the sink), in the order a step runs them;
what it leaves out is the wire (ZeroMQ, msgpack) and the roles' bookkeeping around it. The
figures are CPU milliseconds a step (`time.process_time`, the mean over the steps after a
warm-up), so other processes on the machine disturb them less than they disturb wall time.

    python benchmarks/sparse_step.py [--sizes 18 22 24] [--steps 100]

Writes benchmarks/results/sparse_step.json.
"""
from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

log = logging.getLogger("benchmarks.sparse_step")
WARM_UP = 8


def measure(power: int, steps: int) -> dict[str, Any]:
    """CPU ms a step by phase, for a table of 2^power buckets."""
    from downpour.model.flat import FlatParameters
    from downpour.ps import layout, spans
    from downpour.ps.client.sink import deliver_spans
    from downpour.ps.incoming import header_spans
    from downpour.ps.store import ParameterStore
    from downpour.worker import models
    from downpour.worker.datasets import registry
    from downpour.worker.objective import batch_loss
    from downpour.worker.rows import AccruedByRows, RowPlan

    data = registry.load("fortunes_langid", features={"kind": "char", "n_min": 1, "n_max": 4, "buckets": 1 << power})
    net = models.build({"type": "sparse_logreg"}, models.data_info(data), 0)
    flat = FlatParameters(net.named_parameters())
    ranges = layout.make_layout(list(flat.specs), 2).ranges
    stores = [ParameterStore(lo, hi, flat.data[lo:hi], {"type": "adagrad", "lr": 0.5}, "async", 0, [0, 1])
              for lo, hi in ranges]
    plan = RowPlan(net, flat)
    accrued = AccruedByRows([np.zeros(flat.size, np.float32) for _ in range(2)], flat, plan)
    parts = spans.Parts(ranges)
    batches = data.batches(0, 2, 64, 0, epoch_start=0)
    drawn = [next(batches) for _ in range(steps + 2)]
    spent: collections.Counter = collections.Counter()

    @contextlib.contextmanager
    def phase(name: str):
        began = time.process_time()
        yield
        spent[name] += time.process_time() - began

    def step(i: int) -> None:
        x, y = drawn[i]
        ahead = drawn[i + 2][0]
        with phase("worker: featurize the batch read ahead"):
            ahead.ids  # noqa: B018 - hashed on first use
        with phase("worker: engine forward + backward"):
            loss = batch_loss(net, data.kind, x, y)
            net.zero_grad()
            loss.backward()
        with phase("worker: accrue the gradient at its rows"):
            accrued.add(flat)
        with phase("worker: keys of the read and the push"):
            read, pushed = plan.keys([ahead]), plan.keys([x])
        with phase("worker: take the push's values, norm"):
            _, values = accrued.take(pushed)
            float(np.dot(values, values))
        with phase("worker: each shard's spans and values"):
            out = [(parts(read, s), parts(pushed, s, values)) for s in range(len(ranges))]
        replies = []
        for (lo, hi), store, ((read_part, read_raw, _), (_, push_raw, push_values)) in zip(ranges, stores, out):
            with phase("shards: header spans"):
                grad_keys = header_spans(push_raw, lo, hi, "grad_spans")
                read_keys = header_spans(read_raw, lo, hi, "read_spans")
            with phase("shards: step the pushed keys"):
                store.push(0, i, lo, hi, push_values, keys=grad_keys)
            with phase("shards: gather the read keys"):
                replies.append((read_part, spans.gather(store.weights, lo, read_keys)))
        with phase("worker: deliver the read"):
            for read_part, weights in replies:
                deliver_spans(flat, read_part, weights, keep=True)

    for i in range(WARM_UP):
        step(i)
    spent.clear()
    for i in range(WARM_UP, steps):
        step(i)
    per_step = {name: 1e3 * seconds / (steps - WARM_UP) for name, seconds in spent.items()}
    moving = sum(v for k, v in per_step.items() if "featurize" not in k and "engine" not in k)
    result = {"buckets": 1 << power, "steps": steps - WARM_UP, "cpu_ms": sum(per_step.values()),
              "moving_rows_ms": moving, "phases_ms": per_step, "load_average": list(os.getloadavg())}
    log.info("2^%d: %.2f ms CPU a step, %.2f ms of it moving rows", power, result["cpu_ms"], moving)
    for name, ms in per_step.items():
        log.info("    %-42s %6.2f ms", name, ms)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[18, 22, 24], help="log2 of the buckets")
    parser.add_argument("--steps", type=int, default=100, help="steps a size, the first 8 a warm-up")
    args = parser.parse_args(argv)
    if args.steps <= WARM_UP:
        parser.error(f"--steps {args.steps}: expected more than the {WARM_UP} warm-up steps")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    figures = {"sizes": {str(1 << p): measure(p, args.steps) for p in args.sizes}}
    common.write_result("sparse_step", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
