"""Render the benchmarks' results into benchmarks/README.md's performance tables.

    python benchmarks/report.py [--readme benchmarks/README.md] [--results benchmarks/results] [--check]

Every `benchmarks/results/NAME.json` with a renderer in `RENDERERS` becomes one Markdown block,
each figure next to its reference and its target, and the blocks replace whatever stands
between `<!-- perf:start -->` and `<!-- perf:end -->` in the README (nothing else is touched).
A new benchmark shows up by adding a renderer for its NAME; results without one are listed,
not silently dropped. `--check` exits 1 when the README is not what the results say.
"""
from __future__ import annotations

import argparse
import logging
import pathlib
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks import common  # noqa: E402

log = logging.getLogger("benchmarks.report")

ROOT = pathlib.Path(__file__).resolve().parent.parent
START, END = "<!-- perf:start -->", "<!-- perf:end -->"


def _conditions(record: dict[str, Any]) -> str:
    """One line saying when, where and under what load and BLAS the figures were taken."""
    machine = record.get("machine", {})
    blas = next((b for b in machine.get("blas", []) if b.get("internal_api") == "openblas"), {})
    load = machine.get("load_average") or [float("nan")]
    kernel = f"OpenBLAS {blas.get('version')} {blas.get('architecture')} kernel" if blas else "BLAS unknown"
    return (f"_{record.get('date', '?')}, {machine.get('cpu', '?')} ({machine.get('cores', '?')} cores), "
            f"load average {load[0]:.1f}, numpy {machine.get('numpy', '?')}, "
            f"torch {machine.get('torch', '-')}, {kernel}; `{record.get('command', '?')}`_")


def render_engine(record: dict[str, Any]) -> str:
    """The engine's training step next to PyTorch's, per model."""
    figures = record["figures"]
    lines = [
        f"**Engine: one training step (forward, backward, SGD on the flat buffer), ours vs PyTorch, "
        f"1 thread, {figures.get('device', 'cpu')}** — median of {figures.get('repeats', '?')} "
        "interleaved samples (± half the inter-quartile range); the ratio by "
        "process CPU time is the steadier one on a shared machine",
        "",
        "| model | ours (ms) | torch (ms) | ratio ours/torch | by CPU time | target | torch reference (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in figures["models"].items():
        ours, theirs = m["ours_ms"], m["torch_ms"]
        verdict = "" if m["meets_target"] else " (missed)"
        lines.append(
            f"| {m.get('description', name)} | {ours['median']:.3f} ± {ours['iqr'] / 2:.3f} "
            f"| {theirs['median']:.3f} ± {theirs['iqr'] / 2:.3f} | **{m['ratio']:.2f}**{verdict} "
            f"| {m['cpu_ratio']:.2f} | ≤ {m['target_ratio']:.2f} | {m['reference_torch_ms']:.3f} |")
    extra = figures.get("default_kernel_extra")
    if extra:
        kernel = next((b.get("architecture") for b in extra.get("blas", [])
                       if b.get("internal_api") == "openblas"), "?")
        ratios = ", ".join(f"{name} {m['ratio']:.2f}" for name, m in extra["figures"].items())
        lines += ["", f"Extra, not the figures above: with OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset "
                      f"OpenBLAS chose its {kernel} kernel; ratios then: {ratios}."]
    lines += ["", _conditions(record)]
    return "\n".join(lines)


def _met(ok: bool | None) -> str:
    return "" if ok else " (missed)"


def render_wire(record: dict[str, Any]) -> str:
    """PULL and PUSH+PULL through a real shard next to a raw pyzmq pair, per model size."""
    figures = record["figures"]
    target = figures["target"]
    lines = [
        f"**Wire: one round trip through a real shard process vs a raw pyzmq DEALER/ROUTER pair** — median "
        f"of {figures['repeats']} interleaved samples; throughput is model bytes moved per second "
        "(PUSH+PULL moves the model twice)",
        "",
        "| model | op | downpour (ms) | raw pyzmq (ms) | downpour GB/s | raw GB/s | downpour / raw | target "
        "| shared memory (ms) | shared memory GB/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, size in figures["sizes"].items():
        for op, name in (("pull", "PULL"), ("push_pull", "PUSH+PULL")):
            f = size[op]
            judged = label == target["size"] and op == target["op"]
            verdict = f"≥ {target['min_share_of_raw']:.0%}" if judged else ""
            share = f"**{f['share_of_raw']:.0%}**{_met(f['share_of_raw'] >= target['min_share_of_raw'])}" \
                if judged else f"{f['share_of_raw']:.0%}"
            local = (f"{f['shm_ms']['median']:.3f} | {f['shm_gb_per_s']:.2f}" if "shm_ms" in f else "- | -")
            lines.append(f"| {label} | {name} | {f['downpour_ms']['median']:.3f} | {f['raw_ms']['median']:.3f} "
                         f"| {f['downpour_gb_per_s']:.2f} | {f['raw_gb_per_s']:.2f} | {share} | {verdict} | {local} |")
    lines += ["", f"downpour: {figures['downpour_side']}; raw: {figures['raw_side']}. "
              + (f"Shared memory: {figures['shm_side']}. " if "shm_side" in figures else "")
              + "Reference (the project's brief): ZeroMQ over loopback moves 4 MiB frames at 2.4–4 GB/s.",
              "", _conditions(record)]
    return "\n".join(lines)


def render_cluster(record: dict[str, Any]) -> str:
    """Updates/s of real jobs against the no-communication ceiling and a Ray parameter server."""
    figures = record["figures"]
    target = figures["target"]
    lines = [
        f"**Cluster: total updates/s (samples/s), async, {figures['seconds']:g} s measured per run after "
        f"{figures.get('warmup_seconds', 1):g} s warm-up** — downpour against N processes computing with no "
        "communication (ceiling) and a Ray actor parameter server (same model, batch, data, update rule)",
        "",
        "| model | workers | ceiling | Ray PS | downpour 1 shard | 2 shards | 1 shard / ceiling | 1 shard / Ray "
        "| on the wire: 1 shard | 2 shards |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, rows in figures["results"].items():
        for workers, row in rows.items():
            c, r, d = row["ceiling"], row["ray"], row["downpour"]
            ray = f"{r['updates_per_s']:.0f} ({r['samples_per_s']:.0f})" if "updates_per_s" in r else "skipped"
            cells = [f"{d[s]['updates_per_s']:.0f} ({d[s]['samples_per_s']:.0f})" if s in d else "-"
                     for s in ("1", "2", "1+wire", "2+wire")]
            one = d.get("1", {})
            judged = (model, int(workers)) == (target["model"], target["workers"])
            share = f"{one.get('share_of_ceiling', float('nan')):.0%}"
            times = f"{one['times_ray']:.2f}×" if "times_ray" in one else "-"
            if judged:
                share = f"**{share}**{_met(one.get('share_of_ceiling', 0) >= target['min_share_of_ceiling'])}"
                times = f"**{times}**{_met(one.get('times_ray', 0) >= target['min_times_ray'])}"
            lines.append(f"| {figures['models'].get(model, model)} | {workers} | {c['updates_per_s']:.0f} "
                         f"({c['samples_per_s']:.0f}) | {ray} | {cells[0]} | {cells[1]} | {share} | {times} "
                         f"| {cells[2]} | {cells[3]} |")
    judged_row = figures["results"].get(target["model"], {}).get(str(target["workers"]), {})
    parts = []
    for key, label in (("1", "as shipped (shared memory, overlap on)"), ("1+no-overlap", "overlap off"),
                       ("1+wire", "every array through the sockets (`cluster.shared_memory: false`)"),
                       ("1+wire+fp16", "through the sockets with fp16 pushes")):
        d = judged_row.get("downpour", {}).get(key)
        if d:
            blocked = d.get("blocked_share")
            waits = f", workers blocked on the network {sum(blocked) / len(blocked):.0%} of the time" if blocked else ""
            parts.append(f"{label}: {d['updates_per_s']:.0f} updates/s = {d['share_of_ceiling']:.0%} of the "
                         f"ceiling{waits}")
    if len(parts) > 1:
        lines += ["", f"The target row ({target['model']}, {target['workers']} workers, 1 shard) part by part: "
                  + "; ".join(parts) + "."]
    lines += ["", f"Targets (MLP, 2 workers, 1 shard): ≥ {target['min_share_of_ceiling']:.0%} of the ceiling and "
              f"≥ {target['min_times_ray']:g}× Ray. References (the project's brief, this kind of machine): ceiling ≈ 480 "
              "updates/s for 2 workers, naive pyzmq PS ≈ 180, Ray actor PS ≈ 107.", "", _conditions(record)]
    return "\n".join(lines)


def render_consistency(record: dict[str, Any]) -> str:
    """Time to a target accuracy and the workers' waiting, per consistency model."""
    figures = record["figures"]
    lines = [
        f"**Consistency: time to {figures['target_accuracy']:.0%} test accuracy on Fashion-MNIST** "
        f"(`{figures['config']}`, {figures['workers']} workers, {figures['shards']} shards; test scored every "
        f"{figures['eval_every_clocks']} clocks; waiting = share of the training loop's wall time blocked, from "
        "the kernel's scheduler statistics)",
        "",
        "| mode | seconds to target | clock at target | best accuracy seen | workers waiting |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, m in figures["modes"].items():
        seconds = f"{m['seconds_to_target']:.1f}" if m["reached"] else "not reached"
        waiting = f"{m['waiting_fraction']:.0%}" if m.get("waiting_fraction") is not None else "-"
        best = f"{m['best_test_accuracy']:.3f}" if m.get("best_test_accuracy") is not None else "-"
        lines.append(f"| {name} | {seconds} | {m['clock_at_target'] or '-'} | {best} | {waiting} |")
    lines += ["", f"Reference: {figures['reference']}.", "", _conditions(record)]
    return "\n".join(lines)


def render_simulate(record: dict[str, Any]) -> str:
    """The scale model's predictions and its error on the measured points."""
    figures = record["figures"]
    cal, check, net = figures["calibration"], figures["check"], figures["network"]
    grid = figures["predicted_updates_per_s"]
    workers = list(next(iter(grid.values())))
    lines = [
        f"**Scale model ({figures['model']}): predicted updates/s at {net['bandwidth_gbit']:g} Gbit/s, "
        f"{net['latency_us']:g} µs latency, one host per role** — closed queueing model (exact MVA) calibrated "
        f"on step {cal['step_seconds'] * 1e3:.2f} ms, {cal['message_seconds'] * 1e6:.0f} µs per round trip and "
        f"{cal['path_bytes_per_s'] / 1e9:.2f} GB/s through the software path; against the {len(check['points'])} "
        f"points measured on this machine with every array on the wire: median error {check['median_abs_error']:.0%}, "
        f"max {check['max_abs_error']:.0%}",
        "",
        "| shards \\ workers | " + " | ".join(workers) + " |",
        "|---|" + "---:|" * len(workers),
    ]
    for shards, row in grid.items():
        lines.append(f"| {shards} | " + " | ".join(f"{row[w]:.0f}" for w in workers) + " |")
    points = ", ".join(f"{p['workers']}w/{p['shards']}s {p['measured']:.0f} vs {p['predicted']:.0f}"
                       for p in check["points"])
    lines += ["", f"Measured (over the wire) vs predicted on this machine: {points}."]
    links = figures.get("links")
    if links:
        issue = ", ".join(f"{p['network']} {p['pair']} {p['measured']:,.0f} vs {p['predicted']:,.0f}"
                          for p in links["issue_points"])
        cpu = links["cpu_ms_per_update"]
        costs = "; ".join(f"{side} " + ", ".join(f"{c} +{ms:.2f}" for c, ms in cpu[side].items()) for side in ("push", "read"))
        errors = "; ".join(f"{net}: median {_share(e['median_abs_error'])}, max {_share(e['max_abs_error'])}, "
                           f"{e['over_tolerance']} of {e['points']} points over 25%" for net, e in links["by_network"].items())
        verdict = links["acceptance"]
        lines += ["", f"Links learnt from `{links['source']}` (`benchmarks/simulate_links.py`): every grid point is a "
                      f"CPU time per update (base {cpu['base']:.2f} ms; {costs} ms) and a link roofline at "
                      f"{links['efficiency']:.1%} of the nominal rate, joined by a k-norm (k = "
                      f"{links['overlap_exponent']:.1f}: the job overlaps its round trips with compute), all fitted at "
                      f"once over the grid. Error per network: {errors}. Within 25% of every 100 Mbit/s and 1 Gbit/s "
                      f"point: " + ("yes" if verdict["met"] else "no (" + ", ".join(verdict["over"]) + ")")
                      + f". On issue #19's reference points: {issue} (max error {links['issue_max_abs_error']:.0%})."]
    lines += ["",
              "![predicted updates/s](results/simulate.png)", "", _conditions(record)]
    return "\n".join(lines)


def _share(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def render_compression(record: dict[str, Any]) -> str:
    """Bytes pushed and accuracy reached per gradient codec, against the uncompressed job."""
    figures = record["figures"]
    steps = f"{figures['steps']} steps per worker" if figures.get("steps") else "the config's steps"
    lines = [
        f"**Compression: bytes pushed and test accuracy per codec** (`{figures['config']}`, "
        f"{figures['workers']} workers, {figures['shards']} shards, {figures['consistency']}, {steps}; "
        "bytes = the workers' push payload, summed; error feedback on for topk, onebit and twobit)",
        "",
        "| codec | settings | bytes pushed | of uncompressed | test accuracy | vs uncompressed | wall time |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    acceptance = figures.get("acceptance", {})
    for name, r in figures["codecs"].items():
        settings = ", ".join(o.split(".", 1)[1] for o in r["overrides"]
                             if o.startswith("compression.") and not o.startswith("compression.codec=")) or "-"
        ratio = f"{r['bytes_ratio']:.1%}" if r.get("bytes_ratio") is not None else "-"
        accuracy = f"{r['test_accuracy']:.4f}" if r.get("test_accuracy") is not None else "-"
        delta = f"{100 * r['accuracy_delta']:+.2f} points" if r.get("accuracy_delta") is not None else "-"
        if name == acceptance.get("codec") and acceptance.get("met") is not None:
            ratio = f"**{ratio}**{_met(r['bytes_ratio'] <= acceptance['max_bytes_ratio'])}"
            delta = f"**{delta}**{_met(r['accuracy_delta'] >= -acceptance['max_accuracy_drop'])}"
        lines.append(f"| {name} | {settings} | {r['bytes_sent'] / 1e6:,.1f} MB | {ratio} | {accuracy} | {delta} "
                     f"| {r['wall_seconds']:.0f} s |")
    if acceptance:
        lines += ["", f"Target ({acceptance['codec']}, error feedback): ≤ {acceptance['max_bytes_ratio']:.0%} of the "
                      f"uncompressed bytes, accuracy within {100 * acceptance['max_accuracy_drop']:g} point of it. "
                      f"References: {figures.get('reference', '-')}."]
    lines += ["", _conditions(record)]
    return "\n".join(lines)


def render_rows(record: dict[str, Any]) -> str:
    """Updates/s and bytes per step by rows against dense, over the sockets and in shared memory."""
    figures = record["figures"]
    settings = ", ".join(o for o in figures["model"] if not o.startswith(("train.log_every", "target")))
    lines = [
        f"**Embedding tables by rows** (`compression.rows`; `{figures['config']}` with {settings}, "
        f"{figures['steps']} steps per worker: {figures['description']}). "
        f"Updates/s: the workers' median training throughput, summed, of the median of {figures.get('rounds', 1)} "
        "runs taken in turn (all runs in brackets); bytes: what crossed the sockets per step and worker, "
        "the first whole read included",
        "",
        "| transport | keys moved | updates/s | by rows / dense | received per step | sent per step | test bpc |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for transport, t in figures["transports"].items():
        for way in ("dense", "rows"):
            r = t[way]
            speed = f"**{t['speedup']:.2f}×**" if way == "rows" else "1"
            share = f" ({t['received_ratio']:.1%})" if way == "rows" and t.get("received_ratio") else ""
            runs = ", ".join(f"{u:.1f}" for u in r.get("updates_per_s_samples", []))
            lines.append(f"| {transport} | {'every key' if way == 'dense' else 'rows the batches use'} "
                         f"| {r['updates_per_s']:.1f} ({runs}) | {speed} | {r['received_per_step'] / 1e3:,.0f} KB{share} "
                         f"| {r['sent_per_step'] / 1e3:,.0f} KB | {r['test_bpc']:.3f} |")
    lines += ["", "Reference: the same job moving every key, in the same run. A job by rows applies "
                  "exactly the dense job's updates (tests/e2e/test_rows.py checks the weights bit for bit).",
              "", _conditions(record)]
    return "\n".join(lines)


def render_sparse(record: dict[str, Any]) -> str:
    """Samples/s and bytes a step as the table grows: by rows, whole table, DDP dense and sparse."""
    figures = record["figures"]
    names = {"rows": "downpour by rows, sockets", "rows_shm": "downpour by rows, shared memory",
             "whole": "downpour, whole table, sockets", "ddp": "DDP (gloo), dense", "ddp_sparse": "DDP (gloo), sparse=True"}
    lines = [
        f"**Sparse models at parameter-server scale** (`sparse_logreg` on `fortunes_langid`, hashed character "
        f"1-4-grams, a table of buckets × 7, Adagrad, batch {figures['batch_size']} a worker, 2 workers and 2 shards "
        "async; DDP: 2 processes, the same model, batches and rule). samples/s: both workers together; bytes: what "
        "one downpour worker sent and received a step (values and the keys named), and the gradient one DDP process "
        "hands the all-reduce; step: a worker's milliseconds a step",
        "",
        "| buckets | | samples/s | bytes a step | step (ms) | test accuracy |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for buckets, row in figures["sizes"].items():
        for key, label in names.items():
            r = row[key]
            accuracy = f"{r['test_accuracy']:.4f}" if r.get("test_accuracy") is not None else ""
            lines.append(f"| 2^{int(buckets).bit_length() - 1} | {label} | {r['samples_per_s']:,.0f} "
                         f"| {r['bytes_per_step']:,.0f} | {1e3 * r['step_s']:.1f} | {accuracy} |")
    ratios = {b: row["ratios"] for b, row in figures["sizes"].items()}
    at22 = ratios.get(str(1 << 22))
    if at22:
        lines += ["", f"At 2^22 buckets: by rows a worker moves **{at22['bytes_rows_over_whole']:.2%}** of the bytes "
                      f"of the whole table (target ≤ 2%), and trains **{at22['rows_over_ddp_dense']:.0f}×** as many "
                      f"samples/s as DDP's dense all-reduce, **{at22['rows_over_faster_ddp']:.2f}×** the faster of the "
                      "two DDP runs (target ≥ 10×: " + ("met" if at22["rows_over_faster_ddp"] >= 10 else
                                                        "missed; DDP's sparse all-gather moves the same rows") + ")."]
    growth = figures.get("step_time_growth", {})
    if growth:
        lines += ["", f"Step time by rows at 2^24 buckets against 2^18: **{growth['rows']:.2f}×** over the sockets, "
                      f"{growth['rows_shm']:.2f}× in shared memory (target ≤ 1.5×): the cost follows the rows a batch "
                      "touches, not the table.", "", "![sparse step time and samples/s by table size](results/sparse.png)"]
    reference = figures.get("reference", {})
    if reference:
        lines += ["", "scikit-learn references, same run: " + ", ".join(
            f"{name} {r['test_accuracy']:.4f}" for name, r in reference.items())
            + " (HashingVectorizer with the config's n-grams and buckets + SGDClassifier, log loss)."]
    lines += ["", _conditions(record)]
    return "\n".join(lines)


def render_sparse_step(record: dict[str, Any]) -> str:
    """Where a step by rows spends its CPU, phase by phase, as the table grows."""
    sizes = record["figures"]["sizes"]
    columns = list(sizes)
    lines = ["**Where a step by rows spends its CPU** (`benchmarks/sparse_step.py`: one worker's step of the sparse "
             "benchmark and both shards' handling of it, in one process, without the wire; CPU ms a step)", "",
             "| phase | " + " | ".join(f"2^{int(b).bit_length() - 1}" for b in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for phase in sizes[columns[0]]["phases_ms"]:
        lines.append(f"| {phase} | " + " | ".join(f"{sizes[b]['phases_ms'][phase]:.2f}" for b in columns) + " |")
    for key, label in (("moving_rows_ms", "moving rows, in all"), ("cpu_ms", "the whole step")):
        lines.append(f"| **{label}** | " + " | ".join(f"**{sizes[b][key]:.2f}**" for b in columns) + " |")
    lines += ["", _conditions(record)]
    return "\n".join(lines)


def render_multihost(record: dict[str, Any]) -> str:
    """Samples/s and bytes each way per (push, read) codec pair on six hosts, and time to target."""
    figures = record["figures"]
    grid = figures.get("grid") or {}
    lines = [f"**Compressed pushes and reads on six hosts** (`{figures['job']}`: digits MLP, 2 shards, 2 workers, "
             f"async; {figures.get('grid_steps', '-')} steps a run; every role on a host of its own behind links "
             "shaped by `tc tbf`, beside loopback; bytes = the worker hosts' links, MB sent / received)", "",
             "| push / read | 100 Mbit/s samples/s | MB to shards / to workers | 1 Gbit/s samples/s | loopback "
             "samples/s | test accuracy (100 Mbit/s) |", "|---|---:|---:|---:|---:|---:|"]
    for pair in grid.get("100mbit", {}):
        slow, fast, loop = (grid.get(n, {}).get(pair, {}) for n in ("100mbit", "1gbit", "loopback"))
        accuracy = f"{slow['test_accuracy']:.3f}" if slow.get("test_accuracy") is not None else "-"
        lines.append(f"| {pair} | {slow['samples_per_s']:,.0f} | {slow['bytes_to_shards'] / 1e6:,.1f} / "
                     f"{slow['bytes_to_workers'] / 1e6:,.1f} | {fast.get('samples_per_s', float('nan')):,.0f} | "
                     f"{loop.get('samples_per_s', float('nan')):,.0f} | {accuracy} |")
    acceptance = figures.get("acceptance")
    if acceptance:
        rounds = len(acceptance["runs"]["none/none"])
        lines += ["", f"The whole job (1 000 steps) at 100 Mbit/s, {rounds} rounds of the pairs in turn; medians, "
                      "speed-up against the uncompressed run of the same round:", "",
                  "| push / read | samples/s | speed-up | needed | test accuracy | vs uncompressed |",
                  "|---|---:|---:|---:|---:|---:|"]
        for pair, m in acceptance["medians"].items():
            verdict = acceptance["verdict"].get(pair)
            needed = f"≥ {verdict['needed']:g}×{_met(verdict['met'])}" if verdict else "-"
            lines.append(f"| {pair} | {m['samples_per_s']:,.0f} | {m['speedup']:.2f}× | {needed} | "
                         f"{m['test_accuracy']:.3f} | {-100 * m['accuracy_drop']:+.2f} points |")
    fashion = figures.get("fashion")
    if fashion:
        times = ", ".join(f"{pair} {t:.0f} s" if t is not None else f"{pair} not reached"
                          for pair, t in fashion["median_seconds_to_target"].items())
        ratio = f"{fashion['time_ratio']:.2f}" if fashion.get("time_ratio") is not None else "-"
        lines += ["", f"Fashion-MNIST MLP at 100 Mbit/s, seconds of training to {fashion['target']:.0%} test accuracy "
                      f"(median of {len(next(iter(fashion['runs'].values())))} runs): {times}; the best pair, "
                      f"{fashion['best']}, takes {ratio} of the uncompressed time (needed ≤ 1/3"
                      f"{_met(fashion['met'])})."]
    lines += ["", "![samples/s per codec pair](results/multihost.png)", "", _conditions(record)]
    return "\n".join(lines)


# Which results file each renderer reads: add a line here for a new benchmark.
RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "engine": render_engine,
    "wire": render_wire,
    "cluster": render_cluster,
    "consistency": render_consistency,
    "simulate": render_simulate,
    "compression": render_compression,
    "rows": render_rows,
    "multihost": render_multihost,
    "sparse": render_sparse,
    "sparse_step": render_sparse_step,
}


# Results that other scripts render: jobs.json is the results table (jobs_report.py).
RENDERED_ELSEWHERE = {"jobs"}


def render_all(results: pathlib.Path) -> str:
    """The Markdown for every known results file (in RENDERERS' order), and a note on others."""
    blocks, unknown = [], []
    for name, render in RENDERERS.items():
        path = results / f"{name}.json"
        if path.exists():
            blocks.append(render(common.read_result(path)))
    for path in sorted(results.glob("*.json")):
        if path.stem not in RENDERERS and path.stem not in RENDERED_ELSEWHERE:
            unknown.append(path.name)
    if unknown:
        blocks.append("Results without a renderer yet: " + ", ".join(f"`{n}`" for n in unknown) + ".")
    return "\n\n".join(blocks) if blocks else "(not measured yet)"


def replace_region(text: str, body: str) -> str:
    """`text` with everything between the perf markers replaced by `body`."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the README needs the markers {START} and {END}, in that order")
    return text[:start + len(START)] + "\n" + body + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", type=pathlib.Path, default=ROOT / "benchmarks" / "README.md")
    parser.add_argument("--results", type=pathlib.Path, default=common.RESULTS)
    parser.add_argument("--check", action="store_true", help="only check the README is up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    text = args.readme.read_text()
    updated = replace_region(text, render_all(args.results))
    if args.check:
        if updated != text:
            log.error("%s is out of date: run python benchmarks/report.py", args.readme)
            return 1
        return 0
    if updated != text:
        args.readme.write_text(updated)
        log.info("updated %s", args.readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
