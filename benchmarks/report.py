"""Render the benchmarks' results into the README's performance section.

    python benchmarks/report.py [--readme README.md] [--results benchmarks/results] [--check]

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
from typing import Any, Callable

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


# Which results file each renderer reads: add a line here for a new benchmark.
RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "engine": render_engine,
}


def render_all(results: pathlib.Path) -> str:
    """The Markdown for every known results file (in RENDERERS' order), and a note on others."""
    blocks, unknown = [], []
    for name, render in RENDERERS.items():
        path = results / f"{name}.json"
        if path.exists():
            blocks.append(render(common.read_result(path)))
    for path in sorted(results.glob("*.json")):
        if path.stem not in RENDERERS:
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
    parser.add_argument("--readme", type=pathlib.Path, default=ROOT / "README.md")
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
