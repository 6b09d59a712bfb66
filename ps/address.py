"""Which address peers should dial to reach a role that listens: the shards' advertised address.

Roles bind wildcard addresses in containers and pods, where the bound address means nothing to
anybody else; the address to advertise is the one on the interface that reaches the coordinator.
"""
from __future__ import annotations

import ipaddress
import socket


def advertised(endpoint: str, advertise: str | None, coordinator: str | None = None) -> str:
    """The address peers should dial: `advertise` (HOST or HOST:PORT) if given, else the bound
    endpoint. A wildcard bind (0.0.0.0) has no address of its own: it becomes this host's
    address on the interface that reaches the coordinator (the container's IP on a compose
    network, the pod IP in Kubernetes, the namespace's IP in the multi-host test), falling
    back to the host name only when the coordinator is on loopback or cannot be resolved."""
    port = endpoint.rsplit(":", 1)[1]
    if advertise:
        host = advertise if ":" not in advertise.removeprefix("tcp://") else None
        if host is None:
            return advertise if advertise.startswith("tcp://") else f"tcp://{advertise}"
        return f"tcp://{host}:{port}"
    host = endpoint.removeprefix("tcp://").rsplit(":", 1)[0]
    if host in ("0.0.0.0", "*", "[::]"):
        host = route_address(coordinator) or socket.gethostname()
    return f"tcp://{host}:{port}"


def route_address(coordinator: str | None) -> str | None:
    """This host's source address towards the coordinator, or None if that is loopback.

    A UDP `connect` only asks the kernel for a route; no packet is sent."""
    if not coordinator or not coordinator.startswith("tcp://"):
        return None
    host, _, port = coordinator.removeprefix("tcp://").rpartition(":")
    try:
        family, kind, proto, _, target = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.connect(target)
            address = probe.getsockname()[0]
    except (OSError, ValueError):
        return None
    if ipaddress.ip_address(address.split("%")[0]).is_loopback:
        return None
    return f"[{address}]" if ":" in address else address
