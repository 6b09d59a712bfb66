"""`downpour.launch`: a local cluster started from Python, and the `Job` that handles it.

The job runs under the `downpour launch` command line, started as a process of its own (in
its own process group), not in a thread of the caller. Why a process:

- The launcher sets each role up to die with it (a parent-death signal) and turns SIGTERM
  into an orderly stop; a signal handler can only be set in a main thread, and a thread that
  ends would take its roles with it. In a process of its own it is the same launcher a shell
  user runs, with the same guarantees.
- Ctrl-C in a notebook or a script interrupts only the caller (the launcher is in another
  process group): the caller decides. Leaving a `with` block, `Job.stop()`, and the end of the
  interpreter (atexit) stop the job in order: shards checkpoint, every process ends.
- If the caller dies without a word (a killed kernel), the launcher sees the pipe it holds
  from us close and stops the job the same way; a parent-death signal would have tied it to
  the thread that called `launch`, a pipe ties it to the process.

`Job(run_dir)` also attaches to a run started elsewhere (`downpour launch` in a shell), running
or over, for its status, metrics and weights.
"""
from __future__ import annotations

import atexit
import itertools
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np

from downpour.ps import config as job_config
from downpour.ps.launcher import make_run_dir, tail
from downpour.ps.role_env import role_env

from . import control, spec, weights
from .control import JobError

STOP_GRACE = 60.0  # seconds for a stopped job to end in order before its launcher is terminated


def launch(config: spec.Config, overrides: spec.Overrides = None, run_dir: str | os.PathLike | None = None) -> Job:
    """Start `config` (a YAML path or a dict, with `--set`-style overrides as a list or a
    dict) on a local cluster and return at once. The config is checked here (ConfigError);
    what only the roles can find out (a model that cannot be built) ends the job, and
    `Job.wait()` raises JobError with the launcher's words."""
    cfg = spec.resolve(config, overrides)
    if run_dir is None:  # runs/NAME-TIME, as `downpour launch` names it, and never one in use
        run_dir = default = pathlib.Path("runs") / f"{cfg['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
        for n in itertools.count(2):
            if not run_dir.exists():
                break
            run_dir = default.with_name(f"{default.name}-{n}")
    if (pathlib.Path(run_dir) / "config.yaml").exists():
        raise JobError(f"{run_dir}: already holds a run (config.yaml); choose another run_dir, "
                       f"or resume it with `downpour launch --resume {run_dir}`")
    path = make_run_dir(cfg, str(run_dir))
    config_path = path / "config.yaml"
    config_path.write_text(job_config.dump(cfg))
    read_end, write_end = os.pipe()
    log_path = path / "logs" / "launcher.log"
    try:
        with open(log_path, "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-P", "-m", "downpour", "launch", str(config_path), "--run-dir", str(path),
                 "--quiet", "--parent-fd", str(read_end)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=(read_end,),
                env=role_env(DOWNPOUR_RUN_DIR=str(path.resolve())), process_group=0)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    job = Job(path)
    job._process, job._pipe, job._log = process, write_end, log_path
    _LAUNCHED.add(job)
    return job


class Job:
    """A job's run directory, and the job behind it while it runs. A context manager: on exit
    it stops the job if it still runs, and leaves no process behind."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = pathlib.Path(run_dir)
        if not (self.run_dir / "config.yaml").exists():
            raise JobError(f"{run_dir}: not a run directory (no config.yaml)")
        self._process: subprocess.Popen | None = None
        self._pipe: int | None = None
        self._log: pathlib.Path | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Job({str(self.run_dir)!r}, {'running' if self.running else 'over'})"

    @property
    def pid(self) -> int | None:
        """The launcher's process id (also its process group's), for a job launched here."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the job still runs: its launcher (launched here) or its coordinator (attached)."""
        if self._process is not None:
            return self._process.poll() is None
        try:
            return not control.is_over(control.live_status(self.run_dir, timeout=2.0))
        except JobError:
            return False

    def status(self) -> dict:
        """What `downpour status --json` shows: the coordinator's view while the job runs,
        how it ended afterwards (`state` "starting" and no nodes before the coordinator is up)."""
        launched_and_running = self._process is not None and self._process.poll() is None
        try:
            return control.status(self.run_dir, ask=self._process is None or launched_and_running)
        except JobError:
            if not launched_and_running:
                raise
            return {"job_id": None, "name": job_config.load(self.run_dir / "config.yaml")["name"],
                    "state": "starting", "reason": "the launcher is starting the coordinator", "nodes": []}

    def metrics(self, poll: float = 0.2) -> Iterator[dict]:
        """The records of the run's metrics.jsonl, each as it arrives; ends when the job does."""
        path = self.run_dir / "metrics.jsonl"
        offset, partial = 0, b""
        while True:
            over = not self.running  # asked before reading, so the last read sees every record
            if path.exists():
                with open(path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                offset += len(chunk)
                *lines, partial = (partial + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
            if over:
                return
            time.sleep(poll if self._process is not None else max(poll, 1.0))

    def wait(self, timeout: float | None = None) -> dict:
        """Wait for the job to end and return its summary (TimeoutError if it runs past
        `timeout` seconds; JobError if it ended without a summary, with the launcher's words)."""
        if self._process is not None:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                raise TimeoutError(f"job in {self.run_dir} still running after {timeout:g} s") from None
            self._release()
        else:
            deadline = None if timeout is None else time.monotonic() + timeout
            while self.running:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job in {self.run_dir} still running after {timeout:g} s")
                time.sleep(0.5)
        return self.summary()

    def summary(self) -> dict:
        """The run's summary.json (JobError if there is none)."""
        path = self.run_dir / "summary.json"
        if not path.exists():
            said = tail(self._log or self.run_dir / "logs" / "launcher.log")
            said = f"; the launcher said:\n{said}" if said else ""
            raise JobError(f"{self.run_dir}: the job wrote no summary{said}")
        return json.loads(path.read_text())

    def stop(self, reason: str = "stopped by the Python API") -> None:
        """Stop the job in order (shards checkpoint, every process ends) and wait until it has;
        a launcher that does not end within STOP_GRACE seconds is terminated, then killed."""
        with self._lock:
            if self._process is None:
                if self.running:
                    control.stop(self.run_dir, reason)
                return
            if self._process.poll() is None:
                try:
                    control.stop(self.run_dir, reason)
                except JobError:  # no coordinator yet (or no more): the launcher stops what there is
                    self._signal(signal.SIGTERM)
                for sig, wait in ((None, STOP_GRACE), (signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
                    if sig is not None:
                        self._signal(sig)
                    try:
                        self._process.wait(wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            self._release()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self._process.pid, sig)  # its process group: the launcher alone (roles have their own)
        except ProcessLookupError:
            pass

    def _release(self) -> None:
        """The launcher has ended: close our end of its pipe."""
        if self._pipe is not None:
            os.close(self._pipe)
            self._pipe = None
        _LAUNCHED.discard(self)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The weights by parameter name: live from the shards while the job runs, afterwards
        the run's final weights (the evaluated ones, else every shard's last checkpoint)."""
        if self.running:
            from .client import Client

            def give_up() -> None:
                if self._process is not None and self._process.poll() is not None:
                    raise JobError("the job ended")
            try:
                with Client(self.run_dir, give_up=give_up) as client:
                    return client.pull()
            except (JobError, TimeoutError, RuntimeError):
                if self.running:
                    raise
            self.wait()
        return weights.final(self.run_dir).named

    def export(self, fmt: str = "npz", out: str | os.PathLike | None = None) -> pathlib.Path:
        """Write the run's final weights by PyTorch parameter name (npz or safetensors)."""
        return weights.export_run(self.run_dir, fmt, out)[0]

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self.stop("the Python API's with block ended")


_LAUNCHED: set[Job] = set()  # held, not weakly: a job nobody refers to still runs, and atexit stops it


def watch_parent(fd: int, run_dir: str | os.PathLike) -> None:
    """In the launcher: once the pipe from the process that launched us closes (it ended,
    however), stop the job in order, through its coordinator, or, before there is one, as
    Ctrl-C would (SIGTERM is the launcher's orderly stop)."""
    def read() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        try:
            control.stop(run_dir, "the process that launched the job ended")
        except JobError:
            os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=read, name="parent-watch", daemon=True).start()


@atexit.register
def _stop_all() -> None:
    """The interpreter is ending: stop every job it launched that still runs."""
    for job in list(_LAUNCHED):
        job.stop("the Python interpreter that launched the job is exiting")
