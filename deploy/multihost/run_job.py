"""A job across network hosts on one machine, beside the same job on loopback.

Every role runs on a host of its own (a network namespace, see netns.py) with the very command
its container runs in deploy/docker-compose.yml; only the coordinator's address (its host's IP
instead of the compose service name) and the two container paths (the job file and the run
directory) are spelled for this machine. Every link is limited to 1 Gbit/s. The same job then
runs on loopback (`downpour launch`, in a namespace of its own so that its loopback counts
only this job's bytes). Reported for both: samples/s, the bytes the workers' clients moved,
and the bytes on the wire (the links' counters: headers, heartbeats and all).

    python deploy/multihost/run_job.py [--job deploy/job.yaml] [--rate 1gbit] [--set KEY=VALUE]
                                       [--json REPORT.json] [--keep RUN_DIR]

Needs root and iproute2. Leaves no namespace, link or process behind, also when it fails or
is interrupted (SIGINT, SIGTERM).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import yaml

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT)]  # a script beside its helper, run from anywhere
from netns import Network, ip  # noqa: E402

from downpour.ps import config as job_config  # noqa: E402
from downpour.ps.role_env import role_env  # noqa: E402

log = logging.getLogger("multihost")

COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
COMPOSE_COORDINATOR = "tcp://coordinator:5555"
CONTAINER_JOB = "/etc/downpour/job.yaml"
CONTAINER_RUN_DIR = "/var/lib/downpour/run"


def container_commands(compose_file: pathlib.Path = COMPOSE_FILE) -> dict[str, list[str]]:
    """Each service's command line (its arguments to `downpour`), as the compose file says."""
    services = yaml.safe_load(compose_file.read_text())["services"]
    return {name: [str(arg) for arg in service["command"]] for name, service in services.items()}


def placement(job: dict) -> list[tuple[str, str]]:
    """(host, role) for every process of the job: one host each, as in the compose file."""
    hosts = [("coordinator", "coordinator")]
    hosts += [(f"shard{r}", "shard") for r in range(job["shards"]["count"])]
    hosts += [("evaluator", "evaluator")]
    hosts += [(f"worker{r}", "worker") for r in range(job["workers"]["count"])]
    return hosts


def on_this_machine(argv: list[str], coordinator: str, job_file: pathlib.Path, run_dir: pathlib.Path) -> list[str]:
    spelled = {COMPOSE_COORDINATOR: coordinator, CONTAINER_JOB: str(job_file), CONTAINER_RUN_DIR: str(run_dir)}
    return [spelled.get(arg, arg) for arg in argv]


def start(argv: list[str], log_path: pathlib.Path) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=role_env(), start_new_session=True)


def wait(proc: subprocess.Popen, timeout: float, what: str) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what} did not finish within {timeout:g} s") from None


def watch(procs: dict[str, subprocess.Popen], timeout: float, logs: pathlib.Path) -> int:
    """Wait for the coordinator (the first process) to exit; fail at once if another role dies
    first, rather than waiting out the coordinator's start-up timeout."""
    coordinator, *others = procs
    deadline = time.monotonic() + timeout
    while (code := procs[coordinator].poll()) is None:
        for host in others:
            if procs[host].poll() not in (None, 0):
                tail = "\n".join((logs / f"{host}.log").read_text(errors="replace").splitlines()[-15:])
                raise RuntimeError(f"{host} exited with code {procs[host].returncode} before the job ended:\n{tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the job did not finish within {timeout:g} s; see the logs in {logs}")
        time.sleep(0.1)
    return code


def run_on_hosts(job_file: pathlib.Path, overrides: list[str], rate: str, run_dir: pathlib.Path,
                 timeout: float) -> dict:
    """The job with every role on its own host; returns its report."""
    job = job_config.load(str(job_file), overrides)
    commands = container_commands()
    roles = placement(job)
    with Network([host for host, _ in roles], rate=rate) as net:
        coordinator = f"tcp://{net.hosts['coordinator'].address}:5555"
        procs = []
        for host, role in roles:
            argv = on_this_machine(commands[role], coordinator, job_file, run_dir)
            if role == "coordinator":
                argv += [arg for o in overrides for arg in ("--set", o)]
            procs.append(start(net.command(host, [sys.executable, "-P", "-m", "downpour", *argv]),
                               run_dir / "logs" / f"{host}.log"))
            log.info("%s (%s): downpour %s", host, net.hosts[host].address, " ".join(argv))
        code = watch(dict(zip([h for h, _ in roles], procs)), timeout, run_dir / "logs")
        for proc in procs[1:]:  # the others leave right after the coordinator's last reply
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        wire = net.link_bytes()
        report = {"hosts": {h: net.hosts[h].address for h, _ in roles}, "qdiscs": net.qdiscs(),
                  "coordinator_exit": code, "exit_codes": {h: p.poll() for (h, _), p in zip(roles, procs)},
                  "wire_bytes": sum(c["tx_bytes"] for c in wire.values()), "link_bytes": wire}
    return dict(report, **run_figures(run_dir, job["train"]["batch_size"]))


def run_on_loopback(job_file: pathlib.Path, overrides: list[str], run_dir: pathlib.Path, timeout: float) -> dict:
    """The same job by `downpour launch` on one host's loopback; returns its report."""
    job = job_config.load(str(job_file), overrides)
    with Network(["loopback"], rate="1gbit", prefix=f"dp{os.getpid()}lo") as net:
        argv = ["launch", str(job_file), "--run-dir", str(run_dir), "--quiet", "--set", "cluster.host=127.0.0.1"]
        argv += [arg for o in overrides for arg in ("--set", o)]
        proc = start(net.command("loopback", [sys.executable, "-P", "-m", "downpour", *argv]), run_dir / "launch.log")
        code = wait(proc, timeout, "downpour launch")
        (lo,) = json.loads(ip("-n", net.hosts["loopback"].namespace, "-s", "-j", "link", "show", "lo").stdout)
        report = {"coordinator_exit": code, "wire_bytes": lo["stats64"]["tx"]["bytes"]}
    return dict(report, **run_figures(run_dir, job["train"]["batch_size"]))


def run_figures(run_dir: pathlib.Path, batch_size: int) -> dict:
    """Outcome and throughput of a finished run, from its summary.json and metrics.jsonl."""
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(f"no summary.json in {run_dir}; see the logs in {run_dir / 'logs'}")
    summary = json.loads(summary_path.read_text())
    reports: dict[int, list[dict]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "train" and record.get("role") == "worker":
            reports.setdefault(record["rank"], []).append(record)
    samples_per_s, client_bytes = 0.0, 0
    for records in reports.values():
        first, last = records[0], records[-1]
        # A report covers the steps since the previous one: the first starts before its time.
        span = last["time"] - first["time"] + first["step"] * batch_size / first["samples_per_s"]
        samples_per_s += last["step"] * batch_size / span
        client_bytes += last["bytes_sent"] + last["bytes_received"]
    return {"status": summary["status"], "reason": summary.get("reason", ""), "metrics": summary["metrics"],
            "target": summary.get("target"), "wall_seconds": summary["wall_seconds"],
            "updates_applied": summary["updates_applied"], "workers_reporting": len(reports),
            "samples_per_s": round(samples_per_s, 1), "client_bytes": client_bytes,
            "events": summary.get("events", [])}


def compare(job_file: pathlib.Path, overrides: list[str], rate: str, work_dir: pathlib.Path,
            timeout: float = 240.0) -> dict:
    # Namespaces share one kernel and one /proc: the roles would find each other's memory
    # (ps/shm.py), which separate machines cannot. Both runs keep every array on the wire.
    overrides = ["cluster.shared_memory=false", *overrides]
    hosts = run_on_hosts(job_file, overrides, rate, work_dir / "hosts", timeout)
    loopback = run_on_loopback(job_file, overrides, work_dir / "loopback", timeout)
    return {"job": str(job_file), "overrides": overrides, "rate": rate, "hosts": hosts, "loopback": loopback}


def table(report: dict) -> str:
    rows = [("", f"{len(report['hosts']['hosts'])} hosts, {report['rate']} links", "loopback")]
    for label, key, fmt in (("status", "status", "{}"), ("wall seconds", "wall_seconds", "{:.1f}"),
                            ("samples/s (all workers)", "samples_per_s", "{:,.0f}"),
                            ("bytes moved by workers' clients", "client_bytes", "{:,}"),
                            ("bytes on the wire", "wire_bytes", "{:,}")):
        rows.append((label, fmt.format(report["hosts"][key]), fmt.format(report["loopback"][key])))
    for metric in report["hosts"]["metrics"]:
        rows.append((metric, f"{report['hosts']['metrics'][metric]:.4f}", f"{report['loopback']['metrics'].get(metric, float('nan')):.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows)


def _terminate(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", type=pathlib.Path, default=ROOT / "deploy" / "job.yaml")
    parser.add_argument("--rate", default="1gbit", help="every link's limit, in tc's units (default 1gbit)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=pathlib.Path, help="write the report here")
    parser.add_argument("--keep", type=pathlib.Path, help="keep the runs' directories here (default: a temporary one)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds each job may take")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if os.geteuid() != 0:
        parser.error("needs root (it creates network namespaces)")
    signal.signal(signal.SIGTERM, _terminate)
    with tempfile.TemporaryDirectory(prefix="downpour-multihost-") as scratch:
        work_dir = args.keep or pathlib.Path(scratch)
        started = time.monotonic()
        report = compare(args.job.resolve(), args.overrides, args.rate, work_dir, args.timeout)
        report["seconds"] = round(time.monotonic() - started, 1)
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["hosts"]["status"] == report["loopback"]["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
