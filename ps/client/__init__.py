"""The data plane, client side: what a worker uses to pull weights from and push gradients to
every shard at once. The control plane (the line to the coordinator, heartbeats, faults) lives
beside it in `ps/control.py` and `ps/faults.py`, which the shards use too."""
from .data import ShardClient

__all__ = ["ShardClient"]
