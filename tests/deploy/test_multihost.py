"""Several network hosts on one machine (deploy/multihost/): the job trains with every role on
a host of its own behind a 1 Gbit/s link, beside the same job on loopback, and nothing of the
network outlives the run. Needs root and iproute2; skipped with the reason elsewhere.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from downpour.ps.address import advertised

ROOT = pathlib.Path(__file__).resolve().parents[2]
MULTIHOST = ROOT / "deploy" / "multihost"
sys.path.insert(0, str(MULTIHOST))
import netns  # noqa: E402

_WHY_NOT = ("needs root to create network namespaces" if os.geteuid() != 0
            else "needs iproute2's `ip` and `tc`" if not (shutil.which("ip") and shutil.which("tc")) else None)
needs_netns = pytest.mark.skipif(_WHY_NOT is not None, reason=f"multi-host test: {_WHY_NOT}")


@pytest.fixture(scope="module")
def namespaces_work():
    """Root is not always enough (a container without CAP_SYS_ADMIN): try one namespace."""
    probe = f"dp{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"multi-host test: cannot create a network namespace: {made.stderr.strip()}")


def run_harness(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    """Run the harness; past `timeout`, stop it the way that lets it clean up (SIGTERM)."""
    argv = [sys.executable, str(MULTIHOST / "run_job.py"), "--timeout", str(timeout / 3), *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"the multi-host run took over {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def processes_mentioning(marker: str) -> list[int]:
    found = []
    for entry in pathlib.Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def root_links() -> list[str]:
    shown = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return sorted(line.split(":")[1].strip() for line in shown.splitlines())


# ---- the address a shard registers -------------------------------------------------------------

def test_shard_advertises_the_given_host_with_its_bound_port():
    assert advertised("tcp://0.0.0.0:5600", "10.0.0.7", "tcp://coordinator:5555") == "tcp://10.0.0.7:5600"


def test_shard_advertises_a_given_host_and_port_unchanged():
    assert advertised("tcp://0.0.0.0:5600", "shard-0.shard:7000", None) == "tcp://shard-0.shard:7000"


def test_shard_bound_to_one_address_advertises_that_address():
    assert advertised("tcp://127.0.0.1:41234", None, "tcp://127.0.0.1:5555") == "tcp://127.0.0.1:41234"


def test_wildcard_shard_of_a_loopback_or_unknown_coordinator_falls_back_to_the_host_name():
    expected = f"tcp://{socket.gethostname()}:5600"
    assert advertised("tcp://0.0.0.0:5600", None, "tcp://127.0.0.1:5555") == expected
    assert advertised("tcp://0.0.0.0:5600", None, "tcp://no-such-host.invalid:5555") == expected


# ---- hosts on network namespaces -----------------------------------------------------------------

@needs_netns
def test_every_link_is_limited_to_one_gigabit(namespaces_work):
    payload = 40 << 20
    receiver = ("import socket,time\ns=socket.create_server(('0.0.0.0',7000))\nc,_=s.accept()\nn=0\n"
                "b=c.recv(1<<20)\nt=time.perf_counter()\nwhile b:\n n+=len(b)\n b=c.recv(1<<20)\n"
                "print(n,time.perf_counter()-t)")
    sender = ("import socket,time\nfor _ in range(100):\n try:\n  c=socket.create_connection(('{0}',7000))\n"
              "  break\n except OSError: time.sleep(0.05)\nc.sendall(bytes({1}))\nc.close()")
    with netns.Network(["a", "b"], rate="1gbit") as net:
        qdiscs = net.qdiscs()
        server = subprocess.Popen(net.command("b", [sys.executable, "-c", receiver]), stdout=subprocess.PIPE, text=True)
        subprocess.run(net.command("a", [sys.executable, "-c", sender.format(net.hosts["b"].address, payload)]),
                       check=True, timeout=60)
        received, seconds = server.communicate(timeout=60)[0].split()
    assert int(received) == payload
    gbit_per_s = int(received) * 8 / float(seconds) / 1e9
    assert gbit_per_s < 1.05, f"{gbit_per_s:.2f} Gbit/s through a 1 Gbit/s link"
    assert all("tbf" in shown and "rate 1Gbit" in shown for shown in qdiscs.values()), qdiscs


@needs_netns
def test_job_trains_across_six_hosts_and_reports_beside_loopback(namespaces_work, tmp_path):
    done = run_harness("--json", str(tmp_path / "report.json"), "--keep", str(tmp_path / "runs"))
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    print(done.stdout)  # the figures: samples/s and bytes, on hosts and on loopback
    report = json.loads((tmp_path / "report.json").read_text())
    hosts, loopback = report["hosts"], report["loopback"]
    assert len(set(hosts["hosts"].values())) == len(hosts["hosts"]) >= 4
    assert set(hosts["exit_codes"].values()) == {0}
    assert hosts["target"]["met"], hosts["target"]
    assert hosts["workers_reporting"] == loopback["workers_reporting"] == 2
    assert all("rate 1Gbit" in shown for shown in hosts["qdiscs"].values())
    for run in (hosts, loopback):
        assert run["status"] == "done" and run["samples_per_s"] > 0
        # The wire carries what the clients moved, plus headers and the control plane.
        assert run["client_bytes"] <= run["wire_bytes"] <= 1.25 * run["client_bytes"] + (1 << 20)
    coordinator_log = (tmp_path / "runs" / "hosts" / "logs" / "coordinator.log").read_text()
    registered = dict(re.findall(r"(shard-\d) registered at tcp://([\d.]+):5600", coordinator_log))
    assert sorted(registered.values()) == sorted([hosts["hosts"]["shard0"], hosts["hosts"]["shard1"]])


@needs_netns
def test_an_interrupted_run_leaves_no_namespace_link_or_process(namespaces_work, tmp_path):
    keep = tmp_path / "runs"
    links_before = root_links()
    proc = subprocess.Popen([sys.executable, str(MULTIHOST / "run_job.py"), "--keep", str(keep)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prefix = f"dp{proc.pid}-"
    deadline = time.monotonic() + 30
    while not (keep / "hosts" / "logs" / "worker1.log").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(name.startswith(prefix) for name in netns.netns_names()), "the run never built its hosts"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0
    assert not [name for name in netns.netns_names() if name.startswith(prefix)]
    assert not processes_mentioning(str(keep))
    assert root_links() == links_before
