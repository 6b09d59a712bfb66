"""The environment a role's process runs in, however it is started.

A role is one process with its share of the cores, which the launcher (or the orchestrator:
compose's `cpus:`, Kubernetes' `resources.limits`) hands out, so every math library gets one
thread rather than a guess from the host's core count, and output is unbuffered so that a log
is whole up to the moment a process dies. The launcher, the multi-host harness and the tests
start roles with `role_env()`; deploy/Dockerfile sets the same variables (a test checks it).

glibc's malloc hands the top of its heap back to the kernel as soon as a free leaves more than a
threshold there, and the next allocation takes those pages back one fault at a time. A role
frees whole-range temporaries every message (a codec's passes, a decoded push), so it paid
that on every one: a shard of the digits job with fp16 both ways took 110 page faults a
message, 1.7 s of kernel time in 3 000 messages (measured on loopback, 2 cores). `HEAP` keeps
16 MiB of freed heap (MALLOC_TOP_PAD_): those faults are gone (start-up's remain) and that
shard's kernel time is 0.5 s; other C libraries ignore the variable.
"""
from __future__ import annotations

import os

ONE_THREAD: dict[str, str] = {
    "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
}

HEAP: dict[str, str] = {"MALLOC_TOP_PAD_": str(16 << 20)}


def role_env(**extra: str) -> dict[str, str]:
    """This process's environment with `ONE_THREAD` and `HEAP`, then `extra`, on top: what a role starts with."""
    return {**os.environ, **ONE_THREAD, **HEAP, **extra}
