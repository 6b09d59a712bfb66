"""What nodes report to the coordinator, made safe to keep, and the summary a run ends with.

A node's heartbeat statistics and metrics records come from the network, so they are cut down
to known figures of the right types (`clean_stats`) or to what JSON can hold (`json_safe`)
before the coordinator keeps them. `summary.json` (`write_summary`) is written atomically:
a reader sees the old summary or the new one, never half of one.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

from . import protocol as P


def write_summary(path: pathlib.Path, status: dict, config: dict, results: dict, rolled_back: int,
                  events: list[dict]) -> None:
    """The run's `summary.json`, from the coordinator's `status()` and what it has gathered.
    Per range: the updates and pushes its primary applied, and (`ranges`) its primary, backup,
    epoch and the seconds it ran without a ready backup (null without replication)."""
    shards = [n for n in status["nodes"] if n["role"] == P.SHARD]
    metrics = {k: v for k, v in results.items() if isinstance(v, (int, float))}
    summary = {"status": status["state"], "reason": status["reason"], "job_id": status["job_id"],
               "name": config["name"],
               "consistency": dict(config["consistency"]),
               "workers": config["workers"]["count"], "external_workers": config["workers"]["external"],
               "shards": config["shards"]["count"],
               "updates_applied": status["updates_applied"], "pushes_applied": status["pushes_applied"],
               "pushes_sent": status["pushes_sent"],
               "updates_per_shard": status["updates_per_range"], "pushes_per_range": status["pushes_per_range"],
               "ranges": status["ranges"],
               # what each shard holds and steps: a table trained by rows should spread its
               # touched keys evenly (key_updates: keys stepped, summed over updates)
               "keys_per_shard": [s["stats"].get("keys", 0) for s in shards],
               "bytes_per_shard": [s["stats"].get("bytes", 0) for s in shards],
               "key_updates_per_shard": [s["stats"].get("key_updates", 0) for s in shards],
               "duplicates_ignored": [s["stats"].get("duplicates", 0) for s in shards],
               "wall_seconds": status["elapsed"], "metrics": metrics,
               "target": _judge(config.get("target") or None, metrics),
               "read_staleness": _merge([s["stats"].get("read_staleness", {}) for s in shards]),
               "push_staleness": _merge([s["stats"].get("push_staleness", {}) for s in shards]),
               # compressed reads (ps/reads.py): full, change, over_budget (plain reads), view_bytes
               "reads": _sum([s["stats"].get("reads", {}) for s in shards]),
               "updates_rolled_back": rolled_back,
               "time_to_notice": [e["silent_seconds"] for e in events if e["event"] == "dead"],
               "events": events}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(path)


def _merge(histograms: list[dict]) -> dict:
    out: dict[str, int] = {}
    for h in histograms:
        for k, v in h.items():
            out[k] = out.get(k, 0) + v
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def _sum(counts: list[dict]) -> dict:
    out: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return out


def _judge(target: dict | None, metrics: dict) -> dict | None:
    if not target:
        return None
    value = metrics.get(target["metric"])
    met = None
    if value is not None:
        met = value >= target["min"] if target.get("min") is not None else value <= target["max"]
    return dict(target, value=value, met=met)


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# What a node may report about itself, and the type each figure must have.
_COUNTS = ("rank", "pushes", "duplicates", "updates", "pulls", "errors", "clock", "parked", "step", "restored_updates",
           "keys", "bytes", "key_updates")
_PER_RANGE = ("ranges", "range_pushes")  # {range: count}
_HISTOGRAMS = ("read_staleness", "push_staleness")
_READS = ("full", "change", "over_budget", "view_bytes")  # a shard's compressed reads (ps/reads.py)


def clean_stats(stats: dict) -> dict:
    """Keep the figures a node may report, of the right types; drop everything else."""
    out: dict[str, Any] = {k: v for k, v in stats.items() if k in _COUNTS and is_int(v) and 0 <= v < 1 << 62}
    if isinstance(stats.get("address"), str):
        out["address"] = stats["address"][:P.MAX_NAME_CHARS]
    for key in _PER_RANGE:
        per_range = stats.get(key)
        if isinstance(per_range, dict) and len(per_range) <= 1024:
            out[key] = {k: v for k, v in per_range.items() if _digits(k) and is_int(v) and v >= 0}
    backups = stats.get("backups")  # {range: [assignment, holds its state]}
    if isinstance(backups, dict) and len(backups) <= 1024:
        out["backups"] = {k: v for k, v in backups.items() if _digits(k) and isinstance(v, list) and len(v) == 2
                          and is_int(v[0]) and isinstance(v[1], bool)}
    reads = stats.get("reads")
    if isinstance(reads, dict):
        out["reads"] = {k: v for k, v in reads.items() if k in _READS and is_int(v) and 0 <= v < 1 << 62}
    for key in _HISTOGRAMS:
        h = stats.get(key)
        if isinstance(h, dict) and len(h) <= 256:
            out[key] = {k: v for k, v in h.items() if _digits(k) and is_int(v) and v >= 0}
    return out


def _digits(key: Any) -> bool:
    return isinstance(key, str) and key.isascii() and key.isdigit() and len(key) < 19


def json_safe(value: Any, depth: int = 0) -> Any:
    """A copy that json.dumps accepts (string keys, plain scalars), bounded in depth."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if depth > 8:
        return None
    if isinstance(value, dict):
        return {k: json_safe(v, depth + 1) for k, v in value.items() if isinstance(k, str)}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value]
    return repr(value)[:100]
