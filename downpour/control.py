"""A job's control line, for anyone who is not one of its nodes: status, stop, checkpoint.

A target is a run directory (its `coordinator.addr` names the coordinator, its `keys/` the
CURVE keys if the job uses them) or a `tcp://HOST:PORT` address. A run that is over answers
from its `summary.json`: `status` of a finished, stopped or failed run says how it ended.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import time
from collections.abc import Callable, Iterator

import zmq

from downpour.ps import protocol as P
from downpour.ps.control import ControlClient
from downpour.ps.wire import RemoteError

Target = str | os.PathLike


class JobError(RuntimeError):
    """A job that cannot be reached, started or read; the message says which and why."""


def is_address(target: Target) -> bool:
    return str(target).startswith("tcp://")


def address(target: Target, wait: float = 0.0) -> str:
    """The coordinator's address: the target itself, or what its run directory says, waiting
    up to `wait` seconds for a job just launched to write it (not for one that is over)."""
    if is_address(target):
        return str(target)
    run_dir = pathlib.Path(target)
    path = run_dir / "coordinator.addr"
    deadline = time.monotonic() + wait
    while not path.exists():
        if ended(run_dir):
            raise JobError(f"{target}: the job is over (its summary.json says how it ended)")
        if time.monotonic() >= deadline or not (run_dir / "config.yaml").exists():
            raise JobError(f"{target}: not a run directory with a running coordinator (no {path.name})")
        time.sleep(0.05)
    return path.read_text().strip()


def ended(run_dir: pathlib.Path) -> bool:
    """The run directory's last run is over: its summary is newer than the config its launcher
    wrote when it started (a resumed run rewrites the config, and the summary only at its end)."""
    summary, config = run_dir / "summary.json", run_dir / "config.yaml"
    try:
        return summary.stat().st_mtime >= config.stat().st_mtime
    except FileNotFoundError:
        return False


def client_keys(target: Target, keys_dir: str | os.PathLike | None = None) -> Callable[[zmq.Socket], None] | None:
    """What prepares a client socket for the job: its CURVE keys (`keys_dir`, else the run
    directory's own `keys/`), or None for a job without them."""
    if keys_dir is None and not is_address(target) and (pathlib.Path(target) / "keys").is_dir():
        keys_dir = pathlib.Path(target) / "keys"
    if keys_dir is None:
        return None
    from downpour.ps import security
    try:
        return security.load(str(keys_dir), server=False).configure_client
    except security.KeysError as err:
        raise JobError(str(err)) from None


@contextlib.contextmanager
def line(target: Target, keys_dir: str | os.PathLike | None = None, timeout: float = 5.0) -> Iterator[ControlClient]:
    """A control line to the target's coordinator, closed (with its context) afterwards."""
    configure = client_keys(target, keys_dir)
    ctx = zmq.Context()
    client = ControlClient(ctx, address(target), "client", timeout=timeout, configure=configure)
    try:
        yield client
    finally:
        client.close()
        ctx.term()


def live_status(target: Target, keys_dir: str | os.PathLike | None = None, timeout: float = 5.0) -> dict:
    """The coordinator's status of the job (JobError if it does not answer)."""
    try:
        with line(target, keys_dir, timeout) as client:
            return client.status()
    except (TimeoutError, RemoteError) as err:
        raise JobError(f"{target}: {err}") from None


def status(target: Target, keys_dir: str | os.PathLike | None = None, ask: bool = True) -> dict:
    """What `downpour status` shows: the live status while the coordinator answers (`ask`),
    else, for a run directory, how the run ended (from its summary.json, with no nodes)."""
    if ask:
        try:
            return live_status(target, keys_dir)
        except JobError:
            if is_address(target) or not (pathlib.Path(target) / "summary.json").exists():
                raise
    return final_status(target)


def final_status(run_dir: Target) -> dict:
    """A finished run's status, from its summary.json, in the shape of the coordinator's."""
    path = pathlib.Path(run_dir) / "summary.json"
    if not path.exists():
        raise JobError(f"{run_dir}: the job is not running and wrote no summary.json")
    s = json.loads(path.read_text())
    return {"job_id": s.get("job_id"), "name": s.get("name"), "state": s["status"], "reason": s.get("reason", ""),
            "elapsed": s.get("wall_seconds", 0.0), "consistency": s.get("consistency", {}).get("mode"),
            "updates_applied": s.get("updates_applied", 0), "pushes_applied": s.get("pushes_applied", 0),
            "pushes_sent": s.get("pushes_sent", 0), "nodes": [], "events": s.get("events", [])[-50:],
            "results": s.get("metrics", {}), "final": True}


def stop(target: Target, reason: str = "stopped by request", keys_dir: str | os.PathLike | None = None) -> dict:
    """Ask the job to stop gracefully (shards checkpoint, every process ends); its state after."""
    try:
        with line(target, keys_dir) as client:
            return client.stop(reason)
    except (TimeoutError, RemoteError) as err:
        raise JobError(f"{target}: {err}") from None


def checkpoint(target: Target, keys_dir: str | os.PathLike | None = None) -> dict:
    """Ask every shard of a running job to write its checkpoint now."""
    try:
        with line(target, keys_dir) as client:
            return client.checkpoint()
    except (TimeoutError, RemoteError) as err:
        raise JobError(f"{target}: {err}") from None


def is_over(status_: dict) -> bool:
    return status_.get("state") in P.FINAL_STATES
