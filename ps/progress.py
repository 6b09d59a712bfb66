"""What a person sees of a running job: a live progress line and the `downpour status` table."""
from __future__ import annotations

import sys
from typing import TextIO


def _workers(status: dict) -> list[dict]:
    return [n for n in status.get("nodes", []) if n["role"] == "worker"]


def summary_line(status: dict) -> str:
    """One line: state, steps, loss, throughput, slowest/fastest worker, staleness."""
    workers = _workers(status)
    alive = sum(1 for w in workers if w["state"] == "alive")
    latest = [w["latest"] for w in workers if "loss" in w.get("latest", {})]
    steps = [w["stats"].get("step", 0) for w in workers]
    total = status.get("steps_per_worker", 0)
    loss = f"{sum(r['loss'] for r in latest) / len(latest):.4f}" if latest else "-"
    rate = sum(r.get("samples_per_s", 0.0) for r in latest if r.get("step", 0) < total)
    shards = [n for n in status.get("nodes", []) if n["role"] == "shard"]
    stale = max((int(k) for s in shards for k in s["stats"].get("read_staleness", {})), default=0)
    span = f"{min(steps)}..{max(steps)}" if steps else "0"
    return (f"[{status.get('elapsed', 0):7.1f}s] {status.get('state', '?'):9s} step {span}/{total}  "
            f"loss {loss:>6}  {rate:8.0f} samples/s  updates {status.get('updates_applied', 0)}  "
            f"workers {alive}/{len(workers)}  staleness<={stale}")


class Progress:
    """Progress lines for `downpour launch`: rewritten in place on a terminal, plain lines otherwise."""

    def __init__(self, cfg: dict, stream: TextIO = sys.stdout, every: float = 5.0):
        self.stream = stream
        self.tty = stream.isatty()
        self.every = every
        self._last = -1e9
        self._line = ""
        self._state = ""

    def __call__(self, status: dict) -> None:
        line = summary_line(status)
        if self.tty:
            self.stream.write("\r" + line.ljust(len(self._line)))
            self.stream.flush()
        elif status.get("elapsed", 0) - self._last >= self.every or status.get("state") != self._state:
            self.stream.write(line + "\n")
            self.stream.flush()
            self._last = status.get("elapsed", 0)
        self._line = line
        self._state = status.get("state", "")

    def close(self) -> None:
        if self.tty and self._line:
            self.stream.write("\n")
            self.stream.flush()


def status_table(status: dict) -> str:
    """`downpour status`: the job, then one row per node."""
    rows = [("NODE", "ADDRESS", "STATE", "HEARTBEAT", "STEP", "CLOCK", "UPDATES", "KEYS", "MB", "KEY UPDATES", "LOSS")]
    for n in status.get("nodes", []):
        stats, latest = n.get("stats", {}), n.get("latest", {})
        rows.append((n["name"], n.get("address") or "-", n["state"], f"{n['last_heartbeat']:.1f}s ago",
                     str(stats.get("step", "-")), str(stats.get("clock", "-")), str(stats.get("updates", "-")),
                     str(stats.get("keys", "-")), f"{stats['bytes'] / 1e6:.1f}" if "bytes" in stats else "-",
                     str(stats.get("key_updates", "-")), f"{latest['loss']:.4f}" if "loss" in latest else "-"))
    lines = [f"job {status.get('job_id')} ({status.get('consistency')}): {status.get('state')}"
             + (f" - {status['reason']}" if status.get("reason") else ""),
             summary_line(status), ""]
    lines += _aligned(rows)
    if status.get("ranges"):  # who serves each key range, who backs it up, at which epoch
        ranges = [("RANGE", "PRIMARY", "EPOCH", "BACKUP", "UNREPLICATED")]
        for r in status["ranges"]:
            backup = f"{r['backup']} ({r['backup_state']})" if r.get("backup") else "-"
            alone = r.get("unreplicated_seconds")
            ranges.append((str(r["range"]), r["primary"], str(r["epoch"]), backup,
                           "-" if alone is None else f"{alone:.1f}s"))
        lines += [""] + _aligned(ranges)
    return "\n".join(lines)


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
