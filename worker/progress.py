"""What a worker reports as it trains: loss and throughput over the steps since its last report."""
from __future__ import annotations

import time

import numpy as np

from downpour.ps.client import ShardClient


class Progress:
    """The losses and samples of the steps since the last report, and when that report went out."""

    def __init__(self, log_every: int):
        self.log_every = log_every
        self._reset()

    def _reset(self) -> None:
        self.started, self.samples, self.losses = time.perf_counter(), 0, []

    def add(self, loss: float, samples: int) -> None:
        self.losses.append(loss)
        self.samples += samples

    def due(self, steps_done: int, last: bool) -> bool:
        return steps_done % self.log_every == 0 or last

    def take(self, client: ShardClient, grad_norm: float | None) -> dict:
        """The figures of a `train` report (the caller adds step and clock); a new window starts."""
        elapsed = time.perf_counter() - self.started
        figures = {"loss": float(np.mean(self.losses)), "samples_per_s": self.samples / max(elapsed, 1e-9),
                   "grad_norm": grad_norm, "retries": client.retries, "comm_wait_s": client.waited,
                   "bytes_sent": client.bytes_sent, "bytes_received": client.bytes_received}
        self._reset()
        return figures
