"""Several network hosts on one machine: Linux network namespaces on one switch.

Each host is a namespace with its own loopback, one link (a veth pair) to a switch and its
own IP address; the switch is a bridge inside a namespace of its own, so nothing is added to
the machine's own network: deleting the namespaces deletes every link and address with them.
Every link is shaped in both directions with `tc`'s token bucket (tbf) to the rate of a
commodity cluster's NIC, 1 Gbit/s as in DistBelief's and Project Adam's clusters (this kernel
has no netem: latency, where wanted, comes from the job's own fault injection).

Needs root and iproute2. Use as a context manager; it cleans up on any exit, and `sweep()`
removes what a killed run of the same process id left behind.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import signal
import subprocess
import time

log = logging.getLogger(__name__)

SUBNET = ipaddress.ip_network("10.231.0.0/24")  # private, and used by nothing else here
HOST_LINK = "eth0"  # every host's name for its link, as in a container
SWITCH = "br0"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def netns_names() -> list[str]:
    out = ip("-j", "netns", "list", check=False).stdout.strip()
    return [entry["name"] for entry in json.loads(out)] if out else []


@dataclasses.dataclass
class Host:
    name: str
    namespace: str
    address: str
    port: str  # the switch's end of this host's link


class Network:
    """Hosts named by the caller, each with an address in SUBNET, all on one shaped switch."""

    def __init__(self, hosts: list[str], rate: str = "1gbit", prefix: str | None = None):
        self.prefix = prefix or f"dp{os.getpid()}"
        self.rate = rate
        self.switch = f"{self.prefix}-switch"
        addresses = list(SUBNET.hosts())
        self.hosts = {name: Host(name, f"{self.prefix}-{name}", str(addresses[i]), f"p{i}")
                      for i, name in enumerate(hosts)}
        self.created: list[str] = []

    def __enter__(self) -> Network:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self.created.append(name)
        ip("-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        self._add_namespace(self.switch)
        ip("-n", self.switch, "link", "add", SWITCH, "type", "bridge")
        ip("-n", self.switch, "link", "set", SWITCH, "up")
        for host in self.hosts.values():
            self._add_namespace(host.namespace)
            ip("link", "add", HOST_LINK, "netns", host.namespace, "type", "veth",
               "peer", "name", host.port, "netns", self.switch)
            ip("-n", self.switch, "link", "set", host.port, "master", SWITCH, "up")
            ip("-n", host.namespace, "addr", "add", f"{host.address}/{SUBNET.prefixlen}", "dev", HOST_LINK)
            ip("-n", host.namespace, "link", "set", HOST_LINK, "up")
            # Egress of each end: the host's uplink, and the switch port towards the host.
            shape(host.namespace, HOST_LINK, self.rate)
            shape(self.switch, host.port, self.rate)
        log.info("%d hosts on %s, every link limited to %s", len(self.hosts), SUBNET, self.rate)

    def command(self, host: str, argv: list[str]) -> list[str]:
        """`argv` run on `host`."""
        return ["ip", "netns", "exec", self.hosts[host].namespace, *argv]

    def link_bytes(self) -> dict[str, dict[str, int]]:
        """Bytes each host has sent and received on its link (IP headers and all)."""
        counts = {}
        for name, host in self.hosts.items():
            (link,) = json.loads(ip("-n", host.namespace, "-s", "-j", "link", "show", HOST_LINK).stdout)
            stats = link["stats64"]
            counts[name] = {"tx_bytes": stats["tx"]["bytes"], "rx_bytes": stats["rx"]["bytes"]}
        return counts

    def qdiscs(self) -> dict[str, str]:
        """Each link's root qdisc as `tc` shows it, both ends: what the test checks the limit by."""
        shown = {}
        for name, host in self.hosts.items():
            shown[name] = tc_root(host.namespace, HOST_LINK)
            shown[f"switch port of {name}"] = tc_root(self.switch, host.port)
        return shown

    def close(self) -> None:
        """Stop every process left in our namespaces, then delete the namespaces (and so every
        veth, the bridge and every address with them)."""
        for name in reversed(self.created):
            kill_namespace_processes(name)
            ip("netns", "delete", name, check=False)
        self.created = [name for name in self.created if name in netns_names()]
        if self.created:
            log.error("could not delete namespaces %s", self.created)


def shape(namespace: str, device: str, rate: str) -> None:
    # burst: at least rate / HZ, or tbf cannot reach the rate; latency bounds the queue.
    subprocess.run(["ip", "netns", "exec", namespace, "tc", "qdisc", "replace", "dev", device, "root",
                    "tbf", "rate", rate, "burst", "512kb", "latency", "20ms"],
                   check=True, capture_output=True, text=True, timeout=30)


def tc_root(namespace: str, device: str) -> str:
    return subprocess.run(["ip", "netns", "exec", namespace, "tc", "qdisc", "show", "dev", device, "root"],
                          check=True, capture_output=True, text=True, timeout=30).stdout.strip()


def kill_namespace_processes(namespace: str, grace: float = 3.0) -> None:
    pids = [int(p) for p in ip("netns", "pids", namespace, check=False).stdout.split()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _running(p)]
            time.sleep(0.05)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed child stays a zombie until its parent reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def sweep(prefix: str) -> list[str]:
    """Delete every namespace named `prefix-*` (what a killed run left); return their names."""
    stale = [name for name in netns_names() if name.startswith(f"{prefix}-")]
    for name in stale:
        kill_namespace_processes(name)
        ip("netns", "delete", name, check=False)
    return stale
