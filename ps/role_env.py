"""The environment a role's process runs in, however it is started.

A role is one process with its share of the cores, which the launcher (or the orchestrator:
compose's `cpus:`, Kubernetes' `resources.limits`) hands out, so every math library gets one
thread rather than a guess from the host's core count, and output is unbuffered so that a log
is whole up to the moment a process dies. The launcher, the multi-host harness and the tests
start roles with `role_env()`; deploy/Dockerfile sets the same variables (a test checks it).
"""
from __future__ import annotations

import os

ONE_THREAD: dict[str, str] = {
    "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
}


def role_env(**extra: str) -> dict[str, str]:
    """This process's environment with `ONE_THREAD`, then `extra`, on top: what a role starts with."""
    return {**os.environ, **ONE_THREAD, **extra}
