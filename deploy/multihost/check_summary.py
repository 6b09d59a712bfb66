"""Judge a finished multi-node run from its summary.json (read on stdin): the deployment tests'
one place for "did the job do what it should", so the compose test and the namespace test
ask the same questions. Exits 1 with the reasons when any check fails.

    python3 check_summary.py --target [--workers N] [--dead worker-2 --timeout 3] \
        [--shards-not-loopback COORDINATOR_LOG] < RUN_DIR/summary.json

It runs with the standard library only, on the host, next to any image.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys

SHARD_REGISTERED = re.compile(r"(shard-\d+) registered at tcp://\[?([^\]\s]+?)\]?:(\d+)")
# The coordinator checks liveness every ~0.1 s; a heartbeat may have been due just before the cut.
DEAD_SLACK_SECONDS = 1.5


def problems(summary: dict, target: bool = False, workers: int | None = None, dead: str | None = None,
             timeout: float | None = None, coordinator_log: str | None = None) -> list[str]:
    """Everything wrong with the run, as sentences; an empty list means it passed."""
    found = []
    if summary.get("status") != "done":
        found.append(f"status {summary.get('status')!r} ({summary.get('reason', '')}), expected 'done'")
    judged = summary.get("target") or {}
    if target and not judged.get("met"):
        found.append(f"target not met: {judged}")
    events = summary.get("events", [])
    registered = {e["node"] for e in events if e["event"] == "registered" and e["node"].startswith("worker-")}
    if workers is not None and len(registered) != workers:
        found.append(f"{len(registered)} workers registered ({sorted(registered)}), expected {workers}")
    deaths = [e for e in events if e["event"] == "dead"]
    if dead is not None:
        if [e["node"] for e in deaths] != [dead]:
            found.append(f"declared dead: {[e['node'] for e in deaths]}, expected exactly [{dead!r}]")
        elif timeout is not None and deaths[0]["silent_seconds"] > timeout + DEAD_SLACK_SECONDS:
            found.append(f"{dead} declared dead after {deaths[0]['silent_seconds']} s of silence, "
                         f"more than the {timeout} s timeout")
    elif deaths:
        found.append(f"nodes declared dead: {[e['node'] for e in deaths]}")
    if coordinator_log is not None:
        shards = SHARD_REGISTERED.findall(coordinator_log)
        if len({name for name, _, _ in shards}) != summary.get("shards"):
            found.append(f"the coordinator's log shows {len(shards)} shard registrations, "
                         f"expected {summary.get('shards')}")
        for name, host, _ in shards:
            if _is_loopback(host):
                found.append(f"{name} advertised the loopback address {host}: peers cannot reach it")
    return found


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", action="store_true", help="the config's target metric must be met")
    parser.add_argument("--workers", type=int, help="exactly this many distinct workers registered")
    parser.add_argument("--dead", help="exactly this node was declared dead")
    parser.add_argument("--timeout", type=float, help="... within this heartbeat timeout")
    parser.add_argument("--shards-not-loopback", metavar="COORDINATOR_LOG",
                        help="every shard registered an address other than loopback")
    args = parser.parse_args()
    summary = json.load(sys.stdin)
    log = open(args.shards_not_loopback).read() if args.shards_not_loopback else None
    found = problems(summary, args.target, args.workers, args.dead, args.timeout, log)
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in summary.get("metrics", {}).items())
    print(f"summary: {summary.get('status')}: {metrics} in {summary.get('wall_seconds', 0):.1f} s, "
          f"{summary.get('updates_applied')} updates; dead: "
          f"{[(e['node'], e['silent_seconds']) for e in summary.get('events', []) if e['event'] == 'dead']}")
    for problem in found:
        print(f"  problem: {problem}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
