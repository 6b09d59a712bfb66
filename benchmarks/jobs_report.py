"""The results table: what the full-length run of every config measured, beside its target.

Reads `runs/results/NAME/summary.json` and `config.yaml` (written by `make results`), and
the published reference from the `# Reference:` line of `configs/NAME.yaml`, so each config
stays the one place that says what it should reach. Writes `benchmarks/results/jobs.json`
and two tables between `<!-- results:start -->` and `<!-- results:end -->`: README.md's, narrow
enough to read (each figure beside its target and the published reference), and
benchmarks/README.md's, with every column (model, data, workers, wall time, updates).

A full-length run takes minutes to most of an hour on a small machine, so the table is kept
row by row: a config rerun (`make results-NAME`) replaces its own row in jobs.json, and the
rows of configs not rerun stay as they were measured, with the date of their run.
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import re
import time

import yaml

log = logging.getLogger("jobs_report")

ROOT = pathlib.Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"
REFERENCE_LINE = re.compile(r"^#\s*Reference:\s*(.+?)\s*$", re.MULTILINE)
COMMAND = "make results"


def published_reference(config_path: pathlib.Path) -> str:
    """The text after `# Reference:` in a config's header comment, or '' if it has none."""
    if not config_path.is_file():
        return ""
    found = REFERENCE_LINE.search(config_path.read_text())
    return found.group(1) if found else ""


def describe_model(model: dict) -> str:
    """`mlp hidden [512, 256] dropout 0.2`: the model type and the keys the config sets."""
    details = " ".join(f"{key} {value}" for key, value in model.items() if key != "type")
    return f"{model['type']} {details}".strip()


def job_row(run_dir: pathlib.Path, configs: pathlib.Path) -> dict:
    """One run's figures, from its summary and its resolved config."""
    summary = json.loads((run_dir / "summary.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    target = summary.get("target") or {}
    metric = target.get("metric")
    bound = ("≥ %g" % target["min"]) if target.get("min") is not None else \
        ("≤ %g" % target["max"]) if target.get("max") is not None else ""
    return {
        "config": f"configs/{run_dir.name}.yaml",
        "command": f"downpour launch configs/{run_dir.name}.yaml --run-dir runs/results/{run_dir.name}",
        "model": describe_model(config["model"]),
        "data": config["data"]["dataset"],
        "consistency": summary["consistency"]["mode"],
        "workers": summary["workers"],
        "shards": summary["shards"],
        "optimizer": config["optimizer"]["type"],
        "steps_per_worker": config["train"]["steps"],
        "batch_size": config["train"]["batch_size"],
        "status": summary["status"],
        "wall_seconds": summary["wall_seconds"],
        "updates_applied": summary["updates_applied"],
        "metrics": summary.get("metrics", {}),
        "metric": metric,
        "value": target.get("value"),
        "target": f"{metric} {bound}".strip(),
        "met": target.get("met"),
        "reference": published_reference(configs / f"{run_dir.name}.yaml"),
        "measured": time.strftime("%Y-%m-%d", time.gmtime((run_dir / "summary.json").stat().st_mtime)),
    }


def collect(results: pathlib.Path, configs: pathlib.Path) -> list[dict]:
    """A row for every run directory under `results` that holds a summary, sorted by config."""
    rows = []
    for summary in sorted(results.glob("*/summary.json")):
        try:
            rows.append(job_row(summary.parent, configs))
        except (OSError, KeyError, ValueError, yaml.YAMLError) as err:
            log.warning("skipping %s: %s", summary.parent, err)
    return rows


def merge(previous: list[dict], fresh: list[dict], configs: pathlib.Path) -> list[dict]:
    """The rows of `previous` with each config's row replaced by a `fresh` one where there is
    one; rows of configs that no longer exist are dropped."""
    by_config = {row["config"]: row for row in previous}
    by_config.update({row["config"]: row for row in fresh})
    return [by_config[name] for name in sorted(by_config) if (configs / pathlib.Path(name).name).is_file()]


def _figure(row: dict) -> str:
    value = row["value"]
    if value is None:
        return f"— ({row['status']})"
    return f"{row['metric']} **{value:.4f}**" if row["metric"] else f"{value:.4f}"


def markdown_table(rows: list[dict], full: bool = True) -> str:
    """The results table, one line per config: every column (`full`), or README.md's few."""
    if full:
        lines = ["| config | model | data | consistency | workers×shards | wall time | updates "
                 "| measured | target | published reference | met? |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
    else:
        lines = ["| config | measured | target | published reference | met? |", "|---|---|---|---|---|"]
    for row in rows:
        met = {True: "yes", False: "**no**", None: "—"}[row["met"]]
        run = (f" {row['model']} | {row['data']} | {row['consistency']} | {row['workers']}×{row['shards']} "
               f"| {row['wall_seconds']:.0f} s | {row['updates_applied']} |") if full else ""
        lines.append(f"| `{row['config']}` |{run} {_figure(row)} | {row['target']} | {row['reference'] or '—'} "
                     f"| {met} |")
    lines.append("")
    dates = sorted({row.get("measured", "2026-11-25") for row in rows})
    when = " to ".join(dict.fromkeys([dates[0], dates[-1]]))
    if full:
        lines.append(f"Measured with `{COMMAND}` (or `make results-NAME` for one row) on 2-core machines shared "
                     f"with other work, {when} (wall times are noisy; the metrics are not).")
    else:
        lines.append(f"Measured with `{COMMAND}` on 2-core machines, {when}.")
    return "\n".join(lines)


def replace_between_markers(text: str, table: str, name: str = "README") -> str:
    """`text` with everything between the results markers replaced by `table`."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{name} has no {START} ... {END} region")
    return text[: start + len(START)] + "\n" + table + "\n" + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=pathlib.Path, default=ROOT / "runs" / "results")
    parser.add_argument("--configs", type=pathlib.Path, default=ROOT / "configs")
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "jobs.json")
    parser.add_argument("--readme", type=pathlib.Path, default=ROOT / "README.md")
    parser.add_argument("--benchmarks-readme", type=pathlib.Path, default=ROOT / "benchmarks" / "README.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fresh = collect(args.results, args.configs)
    previous = json.loads(args.json.read_text())["jobs"] if args.json.is_file() else []
    rows = merge(previous, fresh, args.configs)
    if not rows:
        log.error("no runs in %s; run `make results` first", args.results)
        return 1
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": COMMAND, "jobs": rows}, indent=2) + "\n")
    for readme, full in ((args.readme, False), (args.benchmarks_readme, True)):
        readme.write_text(replace_between_markers(readme.read_text(), markdown_table(rows, full), str(readme)))
    log.info("%d jobs -> %s, %s and %s", len(rows), args.json, args.readme, args.benchmarks_readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
