"""The local cluster: coordinator, shards, evaluator and workers as separate OS processes.

Every role is started by the same command line a container would run (`python -P -m downpour shard
--coordinator ...`), never by importing its code, so a local run exercises the multi-node path.
Each process gets one BLAS thread, its own log file, its own process group (so Ctrl-C reaches
only the launcher, which then stops the job in order) and a parent-death signal (so even a
`kill -9` of the launcher takes every role down with it). Nothing is left behind.
"""
from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import zmq

from . import config as job_config
from . import security
from .control import ControlClient
from .role_env import role_env

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> Callable[[], None]:
    def preexec() -> None:
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass
        if os.getppid() != parent:  # the launcher died before we could ask
            os._exit(1)
    return preexec


@dataclasses.dataclass
class Role:
    name: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    log_path: pathlib.Path | None = None
    restarts: int = 0
    reported: bool = False  # its failure was logged and will not be restarted


class LocalCluster:
    """Start, watch and stop one job's processes; a context manager that always cleans up."""

    def __init__(self, cfg: dict, run_dir: pathlib.Path, config_path: pathlib.Path, resume: bool = False):
        self.cfg = cfg
        self.resume = resume
        self.keys = _job_keys(run_dir) if cfg["cluster"]["curve"] else None
        self.key_args = ["--keys", str(self.keys.directory)] if self.keys else []
        self.run_dir = run_dir
        self.config_path = config_path
        self.roles: list[Role] = []
        self.coordinator_address = ""
        self.env = role_env(DOWNPOUR_RUN_DIR=str(run_dir.resolve()))  # the marker lets tests find a run's processes

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def _start(self, role: Role) -> None:
        role.log_path = self.run_dir / "logs" / f"{role.name}.log"
        with open(role.log_path, "ab") as out:
            role.proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "downpour", *role.argv], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=self.env, process_group=0,
                preexec_fn=_die_with_parent(os.getpid()))

    def start(self) -> None:
        host = self.cfg["cluster"]["host"]
        addr_file = self.run_dir / "coordinator.addr"
        addr_file.unlink(missing_ok=True)
        coordinator = Role("coordinator-0", ["coordinator", "--config", str(self.config_path),
                                             "--bind", f"tcp://{host}:*", "--run-dir", str(self.run_dir),
                                             "--address-file", str(addr_file), *self.key_args])
        self.roles.append(coordinator)
        self._start(coordinator)
        deadline = time.monotonic() + self.cfg["cluster"]["startup_timeout"]
        while not addr_file.exists():
            if coordinator.proc.poll() is not None:
                raise RuntimeError(f"the coordinator exited with code {coordinator.proc.returncode} before "
                                   f"it was ready:\n{tail(coordinator.log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError("the coordinator did not start in time; see " + str(coordinator.log_path))
            time.sleep(0.02)
        self.coordinator_address = addr_file.read_text().strip()
        common = ["--coordinator", self.coordinator_address, *self.key_args]
        for r in range(self.cfg["shards"]["count"]):
            argv = ["shard", *common, "--bind", f"tcp://{host}:*", "--rank", str(r), "--run-dir", str(self.run_dir)]
            self.roles.append(Role(f"shard-{r}", argv + (["--resume"] if self.resume else [])))
        self.roles.append(Role("evaluator-0", ["evaluator", *common]))
        for r in range(self.cfg["workers"]["count"]):
            self.roles.append(Role(f"worker-{r}", ["worker", *common, "--rank", str(r)]))
        for role in self.roles[1:]:
            self._start(role)

    @property
    def coordinator(self) -> Role:
        return self.roles[0]

    def watch(self, progress: Callable[[dict], None] | None = None, interval: float = 1.0) -> None:
        """Watch until the coordinator exits: restart what dies where the config says so (workers
        per `workers.restart`; a shard always, from its checkpoint, unless a backup took over),
        and carry out `kill ... at_seconds` faults."""
        ctx = zmq.Context()
        status = ControlClient(ctx, self.coordinator_address, "launcher", timeout=2.0, configure=self._configure())
        started = time.monotonic()
        kills = [f for f in self.cfg["faults"] if f["kind"] == "kill" and f.get("at_seconds") is not None]
        try:
            next_report = 0.0
            while self.coordinator.proc.poll() is None:
                for f in [f for f in kills if time.monotonic() - started >= f["at_seconds"]]:
                    kills.remove(f)
                    self._kill(f"{f['role']}-{f['rank']}")
                for role in self.roles[1:]:
                    code = role.proc.poll()
                    if code is None or code == 0 or role.reported:
                        continue
                    if self._may_restart(role):
                        role.restarts += 1
                        log.warning("%s exited with code %s: restarting (%d)", role.name, code, role.restarts)
                        self._start(role)
                        continue
                    role.reported = True
                    log.warning("%s exited with code %s; its log: %s", role.name, code, role.log_path)
                if progress is not None and time.monotonic() >= next_report:
                    next_report = time.monotonic() + interval
                    try:
                        progress(status.status())
                    except (TimeoutError, RuntimeError):
                        pass
                time.sleep(0.05)
        finally:
            status.close()
            ctx.term()

    def _configure(self):
        return self.keys.configure_client if self.keys else None

    def _may_restart(self, role: Role) -> bool:
        policy = self.cfg["workers"]
        if role.name.startswith("worker"):
            return policy["restart"] == "on-failure" and role.restarts < policy["max_restarts"]
        if role.name.startswith("shard"):  # from its checkpoint, or (replicated) as the backup of a range
            return role.restarts < policy["max_restarts"]
        return False

    def _kill(self, name: str) -> None:
        """A `kill` fault: SIGKILL the named role, as a crash or a lost machine would."""
        for role in self.roles:
            if role.name == name and role.proc is not None and role.proc.poll() is None:
                log.warning("fault injection: killing %s (pid %d)", name, role.proc.pid)
                role.proc.kill()

    def stop_job(self, reason: str) -> None:
        """Ask the coordinator to stop the job (shards checkpoint and leave)."""
        if not self.coordinator_address or self.coordinator.proc.poll() is not None:
            return
        ctx = zmq.Context()
        client = ControlClient(ctx, self.coordinator_address, "launcher", timeout=2.0, configure=self._configure())
        try:
            client.stop(reason)
        except (TimeoutError, RuntimeError) as exc:
            log.warning("could not ask the coordinator to stop: %s", exc)
        finally:
            client.close()
            ctx.term()

    def shutdown(self, grace: float = 10.0) -> None:
        """Let every process end by itself within `grace` seconds, then terminate, then kill."""
        procs = [r.proc for r in self.roles if r.proc is not None]
        deadline = time.monotonic() + grace
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            alive = [p for p in procs if p.poll() is None]
            for p in alive:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + wait
            while any(p.poll() is None for p in alive) and time.monotonic() < end:
                time.sleep(0.05)


def _job_keys(run_dir: pathlib.Path) -> security.Keys:
    """The job's CURVE keys: made fresh in RUN_DIR/keys (secrets 0600), or reused on resume."""
    key_dir = run_dir / "keys"
    return security.load(key_dir) if (key_dir / security.SERVER_SECRET).exists() else security.generate(key_dir)


def tail(path: pathlib.Path | None, lines: int = 20) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def make_run_dir(cfg: dict, run_dir: str | None) -> pathlib.Path:
    default = pathlib.Path("runs") / f"{cfg['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = pathlib.Path(run_dir) if run_dir else default
    (path / "logs").mkdir(parents=True, exist_ok=True)
    (path / "checkpoints").mkdir(exist_ok=True)
    return path


def launch(cfg: dict, run_dir: str | None = None, progress: Callable[[dict], None] | None = None,
           resume: bool = False) -> tuple[int, pathlib.Path]:
    """Run a job on a local cluster (or resume one in `run_dir`); return (exit code, run directory)."""
    path = make_run_dir(cfg, run_dir)
    config_path = path / "config.yaml"
    config_path.write_text(job_config.dump(cfg))
    interrupted = False
    with LocalCluster(cfg, path, config_path, resume) as cluster:
        try:
            cluster.start()
            cluster.watch(progress)
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: stopping the job")
            cluster.stop_job("interrupted (Ctrl-C)")
        except Exception:
            cluster.stop_job("the launcher failed")
            raise
        code = cluster.coordinator.proc.poll() if cluster.coordinator.proc else None
    (path / "coordinator.addr").unlink(missing_ok=True)  # no coordinator answers there any more
    if interrupted:
        return 130, path
    return (0 if code == 0 else 1), path
