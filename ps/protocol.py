"""Protocol constants: the operations, the version and the limits, in one place.

Control plane (nodes <-> coordinator) and data plane (workers <-> shards) share the framing
in `wire.py` but use disjoint operations, so a shard rejects a control message and vice versa.

Every data-plane request may carry the `epoch` of its range as its sender believes it (see
`ps/ranges.py`); replication always does. A shard refuses one at another epoch than its own,
with `retry` (ask the coordinator again, then resend) or, to a primary it has replaced,
`deposed`.
"""
from __future__ import annotations

VERSION = 1

# Control plane: every node talks to the coordinator.
REGISTER = "register"      # node joins; the reply carries its rank, the job and the layout
HEARTBEAT = "heartbeat"    # periodic liveness + clock; the reply carries the job state and live workers
REPORT = "report"          # a worker's metrics record
DONE = "done"              # a worker has finished its steps
RESULT = "result"          # the evaluator's final metrics
LEAVE = "leave"            # a shard is shutting down cleanly
STATUS = "status"          # anyone: the state of the job and of every node
STOP = "stop"              # anyone who knows the job id: ask the job to stop
CHECKPOINT = "checkpoint"  # anyone who knows the job id: ask every shard to checkpoint now
CONTROL_OPS = frozenset({REGISTER, HEARTBEAT, REPORT, DONE, RESULT, LEAVE, STATUS, STOP, CHECKPOINT})

# Data plane: workers talk to shards.
PULL = "pull"              # read a key range
PUSH = "push"              # send a gradient for a key range
PUSH_PULL = "push_pull"    # both in one round trip: apply the gradient, then read
REPLICATE = "replicate"    # shard to shard: a push the primary applied, for the backup to apply
STATE = "state"            # shard to shard: part of a range's whole state, for a new backup to start from
DATA_OPS = frozenset({PULL, PUSH, PUSH_PULL, REPLICATE, STATE})

# Replies.
OK = "ok"
ERROR = "error"
REPLY_OPS = frozenset({OK, ERROR})

# Roles.
COORDINATOR, SHARD, WORKER, EVALUATOR = "coordinator", "shard", "worker", "evaluator"
ROLES = frozenset({SHARD, WORKER, EVALUATOR})  # the roles that register with the coordinator

# Who may send which operation: the role in the sender's name ("worker-3" is a worker), or
# None where anybody may (a registration names its role in its own field, checked by the wire;
# reads come from workers, the evaluator and tools alike). `wire.decode` checks it once.
SENDERS: dict[str, frozenset[str] | None] = {
    REGISTER: None, STATUS: None, STOP: None, CHECKPOINT: None,
    HEARTBEAT: ROLES, LEAVE: ROLES,
    REPORT: frozenset({WORKER, EVALUATOR}),
    DONE: frozenset({WORKER}),
    RESULT: frozenset({EVALUATOR}),
    PULL: None,
    PUSH: frozenset({WORKER}), PUSH_PULL: frozenset({WORKER}),
    REPLICATE: frozenset({SHARD}), STATE: frozenset({SHARD}),
    OK: None, ERROR: None,
}


def role_of(name: str) -> tuple[str, int]:
    """A sender's role and rank from its name ("worker-3" -> ("worker", 3)); rank -1 if none."""
    role, _, rank = name.rpartition("-")
    return (role, int(rank)) if rank.isascii() and rank.isdigit() and len(rank) < 19 else (name, -1)


# Job states as the coordinator reports them.
STARTING, RUNNING, FINISHING, DONE_STATE, FAILED, STOPPED = (
    "starting", "running", "finishing", "done", "failed", "stopped")
FINAL_STATES = frozenset({DONE_STATE, FAILED, STOPPED})

# Limits. The message limit is per job (`cluster.max_message_mb`); these bound the header.
MAX_HEADER_BYTES = 1 << 20
MAX_FRAMES = 64
MAX_NAME_CHARS = 256
DEFAULT_MAX_MESSAGE_BYTES = 512 << 20
MAX_EXTRA_WORKERS = 64     # workers beyond `workers.count` that may join a job (elastic)
MAX_SPANS = 1 << 15        # key spans per header field (ps/spans.py), at most 12 bytes each: a
                           # read's and a push's fit one header together
MAX_VIEW_TOKEN = (1 << 62) - 1  # a compressed read's view token (ps/reads.py); 0 means "I hold no view"

# Array dtypes that may travel on the wire (compressed gradients: float16, uint8 bit-packed codes,
# uint32 top-k indices; see ps/compression.py).
WIRE_DTYPES = frozenset({"float32", "float16", "int8", "uint8", "int32", "uint32", "int64", "float64"})
