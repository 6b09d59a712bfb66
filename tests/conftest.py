"""Shared fixtures: real jobs on real processes, and a guarantee that none of them outlives its test."""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from downpour.ps.role_env import role_env

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def processes_of(run_dir: pathlib.Path) -> list[int]:
    """Pids of live processes started for `run_dir` (the launcher marks them in their environment)."""
    marker = f"DOWNPOUR_RUN_DIR={run_dir.resolve()}".encode()
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


class Jobs:
    """Start `downpour launch` the way a user does, and clean up whatever it leaves."""

    def __init__(self, tmp_path: pathlib.Path):
        self.tmp_path = tmp_path
        self.launchers: list[subprocess.Popen] = []
        self.run_dirs: list[pathlib.Path] = []

    def start(self, config: str | pathlib.Path | None, *overrides: str, name: str | None = None,
              resume: pathlib.Path | None = None, cwd: pathlib.Path = ROOT) -> tuple[subprocess.Popen, pathlib.Path]:
        """`downpour launch CONFIG` (or `downpour launch --resume RUN_DIR`) in the background, from `cwd`."""
        run_dir = resume or self.tmp_path / (name or f"run{len(self.run_dirs)}")
        target = ["--resume", str(run_dir)] if resume else [str(config), "--run-dir", str(run_dir)]
        cmd = [sys.executable, "-P", "-m", "downpour", "launch", *target, "--quiet"]
        for o in overrides:
            cmd += ["--set", o]
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=role_env(), start_new_session=True)
        self.launchers.append(proc)
        self.run_dirs.append(run_dir)
        return proc, run_dir

    def run(self, config: str | pathlib.Path | None, *overrides: str, timeout: float = 180, name: str | None = None,
            resume: pathlib.Path | None = None, cwd: pathlib.Path = ROOT) -> dict:
        """Run a job to the end; return its summary.json (with `_run_dir` and `_output` added)."""
        proc, run_dir = self.start(config, *overrides, name=name, resume=resume, cwd=cwd)
        return self.finish(proc, run_dir, timeout)

    def finish(self, proc: subprocess.Popen, run_dir: pathlib.Path, timeout: float = 180) -> dict:
        """Wait for a started job; return its summary.json (with `_run_dir` and `_output` added)."""
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            pytest.fail(f"job did not finish in {timeout} s:\n{output}\n{logs(run_dir)}")
        summary_path = run_dir / "summary.json"
        if not summary_path.exists():
            pytest.fail(f"no summary.json (launcher exit {proc.returncode}):\n{output}\n{logs(run_dir)}")
        summary = json.loads(summary_path.read_text())
        summary["_run_dir"], summary["_output"], summary["_exit"] = run_dir, output, proc.returncode
        return summary

    def cleanup(self) -> list[int]:
        for proc in self.launchers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        leftovers = []
        deadline = time.monotonic() + 5
        for run_dir in self.run_dirs:
            while processes_of(run_dir) and time.monotonic() < deadline:
                time.sleep(0.05)
            for pid in processes_of(run_dir):
                leftovers.append(pid)
                os.kill(pid, signal.SIGKILL)
        return leftovers


def logs(run_dir: pathlib.Path, lines: int = 30) -> str:
    out = []
    for path in sorted((run_dir / "logs").glob("*.log")) if (run_dir / "logs").exists() else []:
        text = path.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {path.name}\n" + "\n".join(text))
    return "\n".join(out)


@pytest.fixture
def jobs(tmp_path):
    """Run real jobs; after the test, assert that not one of their processes is still alive."""
    j = Jobs(tmp_path)
    yield j
    leftovers = j.cleanup()
    assert not leftovers, f"processes left behind: {leftovers}"


@contextlib.contextmanager
def coordinator_and_shard(tmp_path: pathlib.Path, overrides: list[str], keys=None):
    """A coordinator and one shard of the digits logreg job as real processes, each logging to
    a file of its own, with no workers: the job stays in start-up and the shard keeps serving.
    Yields what a test needs to talk to them (`keys`: the job's CURVE keys, or None)."""
    import numpy as np
    import zmq

    from downpour.ps import config as job_config
    from downpour.ps.control import ControlClient
    from downpour.worker import models
    from downpour.worker.job import load_data

    cfg = job_config.load(CONFIGS / "digits_logreg.yaml", ["shards=1", *overrides])
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text(job_config.dump(cfg))
    env = role_env(DOWNPOUR_RUN_DIR=str(tmp_path.resolve()))
    if keys is not None:
        env["DOWNPOUR_KEYS"] = str(keys.directory)
    logs = {"coordinator": tmp_path / "coordinator.log", "shard": tmp_path / "shard.log"}
    addr_file = tmp_path / "coordinator.addr"
    procs: dict[str, subprocess.Popen] = {}

    def start(role: str, *argv: str) -> None:
        with open(logs[role], "wb") as out:
            procs[role] = subprocess.Popen([sys.executable, "-P", "-m", "downpour", role, *argv], cwd=ROOT, env=env,
                                           stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def tail(role: str) -> str:
        return "\n".join(logs[role].read_text(errors="replace").splitlines()[-40:])

    start("coordinator", "--config", str(cfg_path), "--bind", "tcp://127.0.0.1:*", "--run-dir", str(tmp_path),
          "--address-file", str(addr_file))
    ctx = zmq.Context()
    control = None
    try:
        deadline = time.monotonic() + 60
        while not addr_file.exists():
            assert time.monotonic() < deadline and procs["coordinator"].poll() is None, tail("coordinator")
            time.sleep(0.05)
        coordinator = addr_file.read_text().strip()
        start("shard", "--coordinator", coordinator, "--bind", "tcp://127.0.0.1:*")
        control = ControlClient(ctx, coordinator, "client", timeout=5,
                                configure=keys.configure_client if keys is not None else None)
        while True:
            status = control.status()
            shards = [n for n in status["nodes"] if n["role"] == "shard"]
            if shards:
                break
            assert time.monotonic() < deadline and procs["shard"].poll() is None, tail("shard")
            time.sleep(0.05)
        data = load_data(cfg)
        initial = np.concatenate([a.ravel() for _, a in
                                  models.initial_parameters(cfg["model"], models.data_info(data), cfg["seed"])])
        yield {"ctx": ctx, "control": control, "coordinator": coordinator, "shard": shards[0]["address"],
               "job": status["job_id"], "initial": initial, "procs": procs, "logs": logs, "cfg": cfg,
               "keys": keys}
    finally:
        if control is not None:
            control.close()
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        ctx.term()


def last_train_reports(run_dir: pathlib.Path) -> dict[int, dict]:
    """Each worker's last training report in a run's metrics.jsonl (its byte counts are cumulative)."""
    last = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "train":
            last[record["rank"]] = record
    return last


def ask_shard(rig: dict, header: dict, arrays=()):
    """One request to the shard of a `coordinator_and_shard` rig, its reply decoded. The
    header gets seq 5, the rig's job and the whole key range unless it says otherwise."""
    import zmq

    from downpour.ps.wire import decode, encode

    sock = rig["ctx"].socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(rig["shard"])
    try:
        sock.send_multipart(encode({"seq": 5, "job": rig["job"], "lo": 0, "hi": rig["initial"].size, **header}, arrays))
        assert sock.poll(5000), "no reply"
        return decode(sock.recv_multipart())
    finally:
        sock.close()

