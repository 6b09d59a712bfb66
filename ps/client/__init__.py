"""What a worker (or any other node) uses to talk to the cluster.

`control` is the line to the coordinator (register, heartbeat, report, status, stop);
`data` moves weights and gradients to and from all shards at once; `spans` describes the
keys of a read or push by rows."""
from .. import (
    protocol,  # the client side speaks the protocol: its constants come with it
    spans,  # and describes reads and pushes by rows the way the shards read them
)
from .control import ControlClient, Heartbeat
from .data import ShardClient

__all__ = ["ControlClient", "Heartbeat", "ShardClient", "protocol", "spans"]
