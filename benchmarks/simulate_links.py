"""The link model of the scale simulator, learnt from the multi-host harness (benchmarks/multihost.py).

What the harness measures (deploy/multihost/netns.py, run_job.py): the digits MLP of
deploy/job.yaml (2 workers, 2 shards, batch 32, async) with every role on a host of its own, a
network namespace behind a veth link to one bridge, each link shaped in both directions by
`tc tbf` (the rate, a 512 KB bucket, a 20 ms queue bound; no netem, so no delay is added);
"loopback" is the same job by `downpour launch` in one namespace, on its own unshaped `lo`.
All of them share this machine's cores. Measured there (a 32-byte TCP ping-pong between two
hosts, median of 1 800): 33 us a round trip at 100 Mbit/s, 42 us at 1 Gbit/s, 18 us on loopback.

What the job does: async with `train.overlap` (the default), a worker's round trip travels while
its next step computes, and the bucket refills while a link is idle, so a link's two directions
and the CPU work side by side, not in turn. The 100 Mbit/s grid shows it: `none/fp16` runs exactly
as fast as `none/none` (2 503 and 2 498 samples/s; a serial push-then-read step would be 1.5x
faster), and `fp16/fp16` exactly twice as fast (4 996).

The model of a point (push codec p, read codec r, network n), in updates/s of the whole job:

    t_cpu  = base + push[p] + read[r] + extra_rtt[n] / workers     machine time per update
    X_link = min(workers, shards) x rate[n] x efficiency / max(push bytes, read bytes)
    X      = (t_cpu^k + (1 / X_link)^k)^(-1/k)

`push[none] = read[none] = 0`; the bytes are the workers' payload per update as measured (the
shards' links carry 1/shards of every worker's); `extra_rtt` is the harness's round trip over
loopback's (above), paid where a trip is not hidden. The parameters, all fitted at once to every
point of the grid (loopback ones included: they fix the CPU side) by least squares of log errors:
`base` and one CPU cost per push codec and per read codec (what encoding, decoding and moving the
bytes cost the machine, from this run's measurements, so a faster codec shows at the next run);
`efficiency`, the share of the nominal rate the payload gets (TCP/IP framing alone leaves
1448/1514 = 0.956); `k`, how the CPU and the links share the time: 1 would be a serial sum, a large
k the roofline min(X_cpu, X_link).
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

HARNESS = {"params": 76_810, "workers": 2, "shards": 2, "batch": 32}  # deploy/job.yaml's digits MLP
# A round trip on the harness's links less one on loopback (measured, see above): a bridge and two veth hops.
EXTRA_RTT_S = {"100mbit": 15e-6, "1gbit": 24e-6}
TOLERANCE = 0.25        # the acceptance's bound on a point's error (issue #19)
K_BOUNDS = (1.0, 64.0)  # from a serial sum to all but the roofline
_RATE = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)bit$")


def link_rate(network: str) -> float | None:
    """Bytes/s of a network named in tc's units (`100mbit`, `1gbit`), None for `loopback`."""
    if network == "loopback":
        return None
    match = _RATE.match(network)
    if not match:
        raise ValueError(f"multihost.json grid network {network!r}: expected 'loopback' or a tc rate such as '100mbit'")
    return float(match[1]) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match[2]] / 8


def combine(x_cpu: float, x_link: float, k: float) -> float:
    """Throughput of a CPU side and a link side that overlap: the k-norm of their times per update
    (k = 1: one after the other; k = inf: the slower alone, the roofline)."""
    if math.isinf(x_link) or math.isinf(k):
        return min(x_cpu, x_link)
    t_cpu, t_link = 1.0 / x_cpu, 1.0 / x_link
    peak = max(t_cpu, t_link)
    return 1.0 / (peak * ((t_cpu / peak) ** k + (t_link / peak) ** k) ** (1.0 / k))


@dataclasses.dataclass(frozen=True)
class Point:
    """One measured cell of the grid: a codec pair on a network, with the bytes it moved."""

    network: str
    push: str
    read: str
    measured: float          # samples/s, the median over the rounds
    runs: tuple[float, ...]  # samples/s of each round
    push_bytes: float        # the workers' payload to the shards, per update
    read_bytes: float        # to the workers, per update

    @property
    def pair(self) -> str:
        return f"{self.push}/{self.read}"


@dataclasses.dataclass(frozen=True)
class LinkModel:
    """The learnt parameters (see the module's docstring)."""

    base_s: float
    push_s: dict[str, float]
    read_s: dict[str, float]
    efficiency: float
    overlap: float  # k

    def cpu_seconds(self, push: str, read: str, network: str) -> float:
        """Machine time per update of a codec pair, with what the network's round trip adds."""
        extra = EXTRA_RTT_S.get(network, max(EXTRA_RTT_S.values())) if link_rate(network) else 0.0
        total = self.base_s + self.push_s.get(push, 0.0) + self.read_s.get(read, 0.0)
        return max(total, 1e-9) + extra / HARNESS["workers"]

    def link_updates(self, network: str, push_bytes: float, read_bytes: float) -> float:
        """Updates/s the links allow: the heavier direction paces every link, full duplex."""
        rate = link_rate(network)
        if rate is None:
            return math.inf
        return min(HARNESS["workers"], HARNESS["shards"]) * rate * self.efficiency / max(push_bytes, read_bytes, 1.0)

    def samples_per_s(self, push: str, read: str, network: str, push_bytes: float, read_bytes: float,
                      cpu_scale: float = 1.0) -> float:
        """The model's samples/s for a pair on a network (`cpu_scale`: a slower or faster machine)."""
        x_cpu = 1.0 / (cpu_scale * self.cpu_seconds(push, read, network))
        return HARNESS["batch"] * combine(x_cpu, self.link_updates(network, push_bytes, read_bytes), self.overlap)

    def predict(self, p: Point) -> float:
        return self.samples_per_s(p.push, p.read, p.network, p.push_bytes, p.read_bytes)


def points(multihost: dict[str, Any]) -> list[Point]:
    """Every cell of multihost.json's grid, loopback included."""
    figures = multihost["figures"]
    updates = figures["grid_steps"] * HARNESS["workers"]
    out = []
    for network, cells in figures["grid"].items():
        link_rate(network)  # a name the model cannot read fails here, by name
        for pair, run in cells.items():
            push, _, read = pair.partition("/")
            out.append(Point(network, push, read, float(run["samples_per_s"]),
                             tuple(run.get("samples_per_s_runs", [run["samples_per_s"]])),
                             run["client_bytes_sent"] / updates, run["client_bytes_received"] / updates))
    return out


def _unpack(x: np.ndarray, push: Sequence[str], read: Sequence[str]) -> LinkModel:
    """The model of a parameter vector (milliseconds for the CPU costs)."""
    costs = [float(c) * 1e-3 for c in x[1:1 + len(push) + len(read)]]
    return LinkModel(float(x[0]) * 1e-3, dict(zip(push, costs[:len(push)])), dict(zip(read, costs[len(push):])),
                     float(x[-2]), float(x[-1]))


def fit(cells: Sequence[Point]) -> LinkModel:
    """The parameters that fit every point best: least squares of the log errors."""
    from scipy.optimize import least_squares  # noqa: PLC0415 - scipy comes with scikit-learn

    push = sorted({p.push for p in cells} - {"none"})
    read = sorted({p.read for p in cells} - {"none"})
    measured = np.log([p.measured for p in cells])
    loop = [p.measured for p in cells if p.network == "loopback"] or [p.measured for p in cells]
    base_ms = 1e3 * HARNESS["batch"] / float(np.median(loop))
    n = len(push) + len(read)
    x0 = np.array([base_ms, *[0.1 * base_ms] * n, 0.95, min(max(4.0, K_BOUNDS[0]), K_BOUNDS[1])])
    lower = np.array([1e-4, *[-1e3] * n, 0.2, K_BOUNDS[0]])
    upper = np.array([1e4, *[1e4] * n, 1.5, K_BOUNDS[1]])

    def residuals(x: np.ndarray) -> np.ndarray:
        model = _unpack(x, push, read)
        return np.log([model.predict(p) for p in cells]) - measured

    return _unpack(least_squares(residuals, x0, bounds=(lower, upper), x_scale="jac").x, push, read)


def _summary(errors: Sequence[float]) -> dict[str, Any]:
    magnitudes = [abs(e) for e in errors]
    return {"points": len(magnitudes), "median_abs_error": float(np.median(magnitudes)) if magnitudes else None,
            "max_abs_error": max(magnitudes, default=None),
            "over_tolerance": sum(m > TOLERANCE for m in magnitudes)}


def evaluate(model: LinkModel, cells: Sequence[Point]) -> list[dict[str, Any]]:
    """Every point with its prediction, error, what bounds it, and whether its measurement
    looks like noise: its rounds disagree by more than the tolerance, or it is faster than the
    same pair on loopback by more than that (a link only adds to the CPU's work)."""
    loopback = {p.pair: p.measured for p in cells if p.network == "loopback"}
    rows = []
    for p in cells:
        predicted = model.predict(p)
        x_cpu = 1.0 / model.cpu_seconds(p.push, p.read, p.network)
        x_link = model.link_updates(p.network, p.push_bytes, p.read_bytes)
        ratio = x_link / x_cpu
        spread = max(p.runs) / min(p.runs) - 1
        faster = p.network != "loopback" and p.pair in loopback and p.measured > (1 + TOLERANCE) * loopback[p.pair]
        rows.append({"network": p.network, "pair": p.pair, "measured": p.measured, "runs": list(p.runs),
                     "predicted": predicted, "error": predicted / p.measured - 1,
                     "bound": "link" if ratio < 0.8 else "cpu" if ratio > 1.25 else "both",
                     "cpu_samples_per_s": HARNESS["batch"] * x_cpu,
                     "link_samples_per_s": HARNESS["batch"] * x_link if math.isfinite(x_link) else None,
                     "push_share": p.push_bytes / (4 * HARNESS["params"]),
                     "read_share": p.read_bytes / (4 * HARNESS["params"]),
                     "runs_spread": spread, "within_runs": min(p.runs) <= predicted <= max(p.runs),
                     "faster_than_loopback": faster, "noisy": spread > TOLERANCE or faster})
    return rows


def learn(multihost: dict[str, Any]) -> tuple[LinkModel, dict[str, Any]]:
    """Fit the model to multihost.json's grid: the model, and a report of its parameters and its
    error on every point, with the median and maximum per network (also over the points that do
    not look like noise)."""
    cells = points(multihost)
    model = fit(cells)
    rows = evaluate(model, cells)
    networks = sorted({r["network"] for r in rows}, key=lambda n: (n == "loopback", link_rate(n) or 0))
    shaped = [n for n in networks if n != "loopback"]
    return model, {
        "source": "benchmarks/results/multihost.json", "efficiency": model.efficiency,
        "overlap_exponent": model.overlap,
        "cpu_ms_per_update": {"base": 1e3 * model.base_s, "push": {c: 1e3 * s for c, s in model.push_s.items()},
                              "read": {c: 1e3 * s for c, s in model.read_s.items()}},
        "extra_round_trip_us": {n: 1e6 * EXTRA_RTT_S.get(n, max(EXTRA_RTT_S.values())) for n in shaped},
        "points": rows,
        "by_network": {n: _summary([r["error"] for r in rows if r["network"] == n]) for n in networks},
        "by_network_not_noisy": {n: _summary([r["error"] for r in rows if r["network"] == n and not r["noisy"]])
                                 for n in networks},
        "max_abs_error": {n: max(abs(r["error"]) for r in rows if r["network"] == n) for n in shaped},
        "median_abs_error": {n: float(np.median([abs(r["error"]) for r in rows if r["network"] == n]))
                             for n in shaped},
        "noisy_points": [f"{r['network']} {r['pair']}" for r in rows if r["noisy"]],
        "acceptance": {"tolerance": TOLERANCE, "networks": shaped,
                       "over": [f"{r['network']} {r['pair']} {r['error']:+.0%}" for r in rows
                                if r["network"] != "loopback" and abs(r["error"]) > TOLERANCE],
                       "met": all(abs(r["error"]) <= TOLERANCE for r in rows if r["network"] != "loopback")
                       if shaped else None},  # nothing measured across links: nothing to judge
    }
