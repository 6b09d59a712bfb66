"""How fast is one training step of our engine next to PyTorch's, model by model?

A step is what a worker does per minibatch: forward, loss, backward, gather the gradients into
the flat buffer and apply the update rule to the flat parameters (`worker/local.py`). PyTorch
runs the same architecture, batch and initial weights with `torch.optim.SGD`. Both get one
thread, and they are timed in alternation in one process so machine noise hits both alike.

    python benchmarks/engine.py [--repeats 30] [--models mlp,lenet5] [--device cpu|cuda]
                                [--also-default-kernel] [--also-blas-gemm]

Writes benchmarks/results/engine.json: per model the medians (ms), their noise and the ratio
ours/torch, next to the target ratio and the reference torch time from the project's brief.
`--also-default-kernel` adds a clearly separate second pass, run in a subprocess with
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset, that reports which OpenBLAS kernel it got then;
the main figures always use the machine's settings. `--also-blas-gemm` adds another such
pass with DOWNPOUR_SMALL_GEMM=0: the recurrent steps on OpenBLAS instead of `model.gemm`'s
AVX-512 loop, to show what that loop is worth. Each record says which GEMM the engine used.
"""
from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, "1")  # before NumPy and torch start their thread pools

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

log = logging.getLogger("benchmarks.engine")


@dataclass(frozen=True)
class Workload:
    """One benchmarked model: its input, its target ratio and the brief's torch reference."""

    name: str
    description: str
    input_shape: tuple[int, ...]
    classes: int
    target_ratio: float
    reference_torch_ms: float


WORKLOADS = {
    w.name: w for w in (
        Workload("logreg", "logistic regression 784->10, batch 128", (128, 784), 10, 2.0, 0.215),
        Workload("mlp", "MLP 784-512-512-10 ReLU, batch 128", (128, 784), 10, 1.15, 3.66),
        Workload("lenet5", "LeNet-5 on 1x28x28, batch 64", (64, 1, 28, 28), 10, 1.5, 4.87),
        Workload("lstm", "LSTM(32->128) over 35 steps + linear head, batch 32", (35, 32, 32), 10, 1.5, 5.68),
        Workload("gru", "GRU(32->128) over 35 steps + linear head, batch 32", (35, 32, 32), 10, 1.5, 9.57),
    )
}
LEARNING_RATE = 0.01


# ---- our engine -----------------------------------------------------------------------------
def build_ours(name: str, rng: np.random.Generator):
    """Our model for a workload, built from `model.nn` as the worker's model zoo does."""
    from downpour.model import nn  # noqa: PLC0415 - imported after the backend is chosen

    if name == "logreg":
        return nn.Sequential(nn.Linear(784, 10, rng=rng))
    if name == "mlp":
        return nn.Sequential(nn.Linear(784, 512, rng=rng), nn.ReLU(), nn.Linear(512, 512, rng=rng),
                             nn.ReLU(), nn.Linear(512, 10, rng=rng))
    if name == "lenet5":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, rng=rng), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(400, 120, rng=rng), nn.ReLU(), nn.Linear(120, 84, rng=rng), nn.ReLU(),
            nn.Linear(84, 10, rng=rng))

    class LastStepClassifier(nn.Module):
        def __init__(self, cell):
            super().__init__()
            self.rnn = cell(32, 128, rng=rng)
            self.head = nn.Linear(128, 10, rng=rng)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.head(out[-1])

    return LastStepClassifier({"lstm": nn.LSTM, "gru": nn.GRU}[name])


def our_step(net, x: np.ndarray, y: np.ndarray, device: str) -> Callable[[], float]:
    """One worker-style training step: loss, backward, gather into the flat buffer, SGD."""
    import downpour.model.functional as F  # noqa: PLC0415
    from downpour.model import optim  # noqa: PLC0415
    from downpour.model.flat import FlatParameters  # noqa: PLC0415
    from downpour.model.tensor import Tensor  # noqa: PLC0415

    if device == "cuda":
        return _our_cuda_step(net, x, y)
    flat = FlatParameters(net.named_parameters())
    grad = np.zeros_like(flat.data)
    rule = optim.make("sgd", lr=LEARNING_RATE)
    inputs = Tensor(x)

    def step() -> float:
        loss = F.cross_entropy(net(inputs), y)
        net.zero_grad()
        loss.backward()
        flat.gather_grads(out=grad)
        rule.step(flat.data, grad)
        return loss.item()

    return step


def _our_cuda_step(net, x: np.ndarray, y: np.ndarray) -> Callable[[], float]:
    """On CuPy the flat buffer (host memory by design) is skipped: SGD runs per parameter."""
    import cupy  # noqa: PLC0415 - present, or backend.use('cuda') would have failed

    import downpour.model.functional as F  # noqa: PLC0415
    from downpour.model.tensor import Tensor  # noqa: PLC0415

    inputs, labels = Tensor(cupy.asarray(x)), cupy.asarray(y)
    params = list(net.parameters())

    def step() -> float:
        loss = F.cross_entropy(net(inputs), labels)
        net.zero_grad()
        loss.backward()
        for p in params:
            p.data -= LEARNING_RATE * p.grad
        cupy.cuda.Device().synchronize()
        return loss.item()

    return step


# ---- PyTorch --------------------------------------------------------------------------------
def build_torch(name: str):
    import torch  # noqa: PLC0415
    from torch import nn  # noqa: PLC0415

    if name == "logreg":
        return nn.Sequential(nn.Linear(784, 10))
    if name == "mlp":
        return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                             nn.Linear(512, 10))
    if name == "lenet5":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5),
            nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))

    class LastStepClassifier(nn.Module):
        def __init__(self, cell):
            super().__init__()
            self.rnn = cell(32, 128)
            self.head = nn.Linear(128, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(x)
            return self.head(out[-1])

    return LastStepClassifier({"lstm": nn.LSTM, "gru": nn.GRU}[name])


def torch_step(net, x: np.ndarray, y: np.ndarray, device: str) -> Callable[[], float]:
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    net.to(device)
    inputs = torch.from_numpy(x).to(device)
    labels = torch.from_numpy(y).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(inputs), labels)
        loss.backward()
        opt.step()
        sync()
        return loss.item()

    return step


# ---- the comparison -------------------------------------------------------------------------
def prepare(workload: Workload, device: str, seed: int = 0) -> dict[str, Callable[[], float]]:
    """Both steps for one workload, with the same data and the same initial weights."""
    import torch  # noqa: PLC0415

    from downpour.model import backend  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(workload.input_shape).astype(np.float32)
    batch = x.shape[1] if workload.name in ("lstm", "gru") else x.shape[0]
    y = rng.integers(0, workload.classes, batch).astype(np.int64)
    ours = build_ours(workload.name, rng)
    theirs = build_torch(workload.name)
    state = {k: torch.from_numpy(np.array(backend.to_numpy(v))) for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state)
    steps = {"ours": our_step(ours, x, y, device), "torch": torch_step(theirs, x, y, device)}
    first = {name: step() for name, step in steps.items()}
    if not np.isclose(first["ours"], first["torch"], rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"{workload.name}: first losses differ (ours {first['ours']:.6f}, "
                           f"torch {first['torch']:.6f}): the two models are not the same")
    return steps


def check_device(device: str) -> None:
    """Fail early, and clearly, when the asked-for device cannot run both engines."""
    if device != "cuda":
        return
    import torch  # noqa: PLC0415

    from downpour.model import backend  # noqa: PLC0415

    backend.use("cuda")  # raises a RuntimeError that names what is missing (CuPy or a GPU)
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda: CuPy sees a GPU but this torch build has no CUDA")


def measure(names: list[str], repeats: int, device: str) -> dict[str, Any]:
    """Time every named workload; the figures `engine.json` holds per model."""
    import torch  # noqa: PLC0415

    torch.set_num_threads(1)
    figures: dict[str, Any] = {}
    with common.single_threaded():
        for name in names:
            workload = WORKLOADS[name]
            timing = common.time_interleaved(prepare(workload, device), repeats)
            ours, theirs = timing["ours"], timing["torch"]
            ratio = ours.wall.median / theirs.wall.median
            figures[name] = {
                "description": workload.description,
                "ours_ms": ours.wall.as_dict(),
                "torch_ms": theirs.wall.as_dict(),
                "ratio": ratio,
                "ours_cpu_ms": ours.cpu.as_dict(),
                "torch_cpu_ms": theirs.cpu.as_dict(),
                "cpu_ratio": ours.cpu.median / theirs.cpu.median,
                "target_ratio": workload.target_ratio,
                "meets_target": ratio <= workload.target_ratio,
                "reference_torch_ms": workload.reference_torch_ms,
            }
            log.info("%-7s ours %7.3f ms  torch %7.3f ms  ratio %.2f (by CPU time %.2f, target %.2f)",
                     name, ours.wall.median * 1e3, theirs.wall.median * 1e3, ratio,
                     figures[name]["cpu_ratio"], workload.target_ratio)
    return figures


def _subprocess_pass(names: list[str], repeats: int, env: dict[str, str]) -> dict[str, Any]:
    """The same measurement in a subprocess with another environment (an extra, never the main)."""
    command = [sys.executable, __file__, "--repeats", str(repeats), "--models", ",".join(names),
               "--print-only"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def default_kernel_pass(names: list[str], repeats: int) -> dict[str, Any]:
    """The same measurement in a subprocess with OPENBLAS_CORETYPE/L2_SIZE unset (an extra)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    result = _subprocess_pass(names, repeats, env)
    return {
        "note": "extra pass with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset: OpenBLAS picks its "
                "own kernel, which some older builds get wrong on some CPUs; timing only",
        "blas": result["blas"],
        "figures": result["figures"],
    }


def blas_gemm_pass(names: list[str], repeats: int) -> dict[str, Any]:
    """The same measurement in a subprocess with DOWNPOUR_SMALL_GEMM=0 (an extra)."""
    result = _subprocess_pass(names, repeats, dict(os.environ, DOWNPOUR_SMALL_GEMM="0"))
    return {
        "note": "extra pass with DOWNPOUR_SMALL_GEMM=0: the recurrent steps' GEMMs on OpenBLAS "
                "instead of model.gemm's loop; same machine settings otherwise; timing only",
        "engine": result["engine"],
        "figures": result["figures"],
    }


def engine_facts() -> dict[str, Any]:
    """Which of our own kernels ran: Numba's, and the small-GEMM loop (`model.gemm.fast()`)."""
    from downpour.model import gemm, kernels  # noqa: PLC0415

    return {"numba": kernels.HAVE_NUMBA, "small_gemm": gemm.fast(),
            "DOWNPOUR_SMALL_GEMM": os.environ.get("DOWNPOUR_SMALL_GEMM")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="samples per engine and model")
    parser.add_argument("--models", default=",".join(WORKLOADS),
                        help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--also-default-kernel", action="store_true",
                        help="add a second pass with OpenBLAS choosing its own kernel (subprocess)")
    parser.add_argument("--also-blas-gemm", action="store_true",
                        help="add a second pass with DOWNPOUR_SMALL_GEMM=0 (subprocess)")
    parser.add_argument("--print-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}: choose from {list(WORKLOADS)}")
    try:
        check_device(args.device)
    except RuntimeError as exc:
        print(f"engine benchmark: {exc}", file=sys.stderr)
        return 2
    figures = measure(names, args.repeats, args.device)
    if args.print_only:
        print(json.dumps({"blas": common.blas_facts(), "engine": engine_facts(), "figures": figures}))
        return 0
    record: dict[str, Any] = {"device": args.device, "repeats": args.repeats,
                              "engine": engine_facts(), "models": figures}
    if args.also_default_kernel:
        record["default_kernel_extra"] = default_kernel_pass(names, args.repeats)
    if args.also_blas_gemm:
        record["blas_gemm_extra"] = blas_gemm_pass(names, args.repeats)
    common.write_result("engine", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
