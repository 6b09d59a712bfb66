"""Deterministic per-worker partitioning of training batches.

The parameter server's exactness test relies on one property: K workers with batch b see,
between them, exactly the global batches one worker with batch K*b sees. So every worker
draws the same seeded permutation of an epoch, cuts it into global batches of
`batch_size * world` consecutive indices, and keeps only its own slice of each.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from downpour.worker.datasets.errors import DatasetError


def batch_indices(
    n: int, batch_size: int, rank: int, world: int, seed: int, epoch_start: int = 0
) -> Iterator[np.ndarray]:
    """Yield worker `rank`'s index batches (int64, length `batch_size`) over endless epochs.

    Epoch e is the permutation `np.random.default_rng([seed, e]).permutation(n)`, cut into
    global batches of `batch_size * world` indices (an incomplete last one is dropped); worker
    `rank` gets slice `[rank*batch_size : (rank+1)*batch_size]` of each. Arguments are checked
    here, not at the first `next()`.
    """
    if batch_size < 1 or world < 1:
        raise ValueError(f"batch_size and world must be >= 1, got {batch_size} and {world}")
    if not 0 <= rank < world:
        raise ValueError(f"rank must lie in [0, {world}), got {rank}")
    if seed < 0 or epoch_start < 0:
        raise ValueError(f"seed and epoch_start must be >= 0, got {seed} and {epoch_start}")
    if n < batch_size * world:
        raise DatasetError(
            f"{n} training examples cannot fill one global batch of "
            f"{batch_size} x {world} workers = {batch_size * world}"
        )
    return _epochs(n, batch_size, rank, world, seed, epoch_start)


def _epochs(n: int, batch_size: int, rank: int, world: int, seed: int, epoch: int) -> Iterator[np.ndarray]:
    global_batches = n // (batch_size * world)
    while True:
        permutation = np.random.default_rng([seed, epoch]).permutation(n)
        cut = permutation[: global_batches * batch_size * world].reshape(global_batches, world, batch_size)
        yield from cut[:, rank]
        epoch += 1


def steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    """How many batches each worker gets per epoch from `batch_indices`."""
    return n // (batch_size * world)


def shifted_window_count(num_ids: int, seq_len: int) -> int:
    """Windows of L inputs (and the next id) per epoch on a grid shifted by any offset in [0, L):
    as many as fit at every offset."""
    return max(num_ids - seq_len, 0) // seq_len


def window_offset(seq_len: int, seed: int, epoch: int) -> int:
    """Where epoch `epoch` starts its grid of windows: seeded, the same on every worker."""
    return int(np.random.default_rng([seed, epoch, 0x0FF5E7]).integers(seq_len))


def scored_window_starts(num_ids: int, seq_len: int) -> np.ndarray:
    """Starts L, 2L, ... of the windows scored in evaluation: each is read after the L ids
    before it, and needs the one after it."""
    return np.arange(seq_len, max(num_ids - seq_len, 0), seq_len, dtype=np.int64)


def gather_scored_windows(ids: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs x (B, 2L), the window with its context, and targets y (B, L) of the window alone."""
    context = ids[starts[:, None] + np.arange(-seq_len, seq_len)]
    return context, ids[starts[:, None] + np.arange(1, seq_len + 1)]


def gather_windows(ids: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs x (B, L) and next-character targets y (B, L) for the windows at `starts`, in one gather."""
    windows = ids[starts[:, None] + np.arange(seq_len + 1)]
    return windows[:, :-1], windows[:, 1:]
