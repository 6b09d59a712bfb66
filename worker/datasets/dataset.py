"""`Dataset`: a loaded data set's arrays plus the two ways a worker reads them.

Two kinds share one class so the training loop needs no branches of its own:
`classification` (x rows with integer labels) and `language_model` (a text as character ids,
read as windows of `seq_len` inputs whose targets are the next characters).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from downpour.worker.datasets.batching import (
    batch_indices,
    gather_scored_windows,
    gather_windows,
    scored_window_starts,
    shifted_window_count,
    steps_per_epoch,
    window_offset,
)
from downpour.worker.datasets.errors import DatasetError

Kind = Literal["classification", "language_model"]
Batch = tuple[np.ndarray, np.ndarray]


def _no_rows() -> np.ndarray:
    return np.empty(0, np.float32)


def _no_ids() -> np.ndarray:
    return np.empty(0, np.int64)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Arrays of one data set. Classification fills x_*/y_*; a language model fills *_ids and vocab."""

    name: str
    kind: Kind
    num_classes: int
    input_shape: tuple[int, ...]
    x_train: np.ndarray = field(default_factory=_no_rows)
    y_train: np.ndarray = field(default_factory=_no_ids)
    x_val: np.ndarray = field(default_factory=_no_rows)
    y_val: np.ndarray = field(default_factory=_no_ids)
    x_test: np.ndarray = field(default_factory=_no_rows)
    y_test: np.ndarray = field(default_factory=_no_ids)
    train_ids: np.ndarray = field(default_factory=_no_ids)
    val_ids: np.ndarray = field(default_factory=_no_ids)
    test_ids: np.ndarray = field(default_factory=_no_ids)
    vocab: str = ""
    seq_len: int = 0

    @classmethod
    def classification(
        cls, name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
        num_classes: int,
    ) -> Dataset:
        """A classification set with an empty validation split (see `with_validation`)."""
        return cls(
            name=name, kind="classification", num_classes=num_classes, input_shape=tuple(x_train.shape[1:]),
            x_train=x_train, y_train=y_train, x_val=x_train[:0], y_val=y_train[:0], x_test=x_test, y_test=y_test,
        )

    @classmethod
    def language_model(
        cls, name: str, train_ids: np.ndarray, test_ids: np.ndarray, vocab: str, seq_len: int
    ) -> Dataset:
        """A character-level text set; every split must hold at least one window (see `_require_windows`)."""
        dataset = cls(
            name=name, kind="language_model", num_classes=len(vocab), input_shape=(seq_len,),
            train_ids=train_ids, val_ids=train_ids[:0], test_ids=test_ids, vocab=vocab, seq_len=seq_len,
        )
        dataset._require_windows("train", train_ids)
        dataset._require_windows("test", test_ids, scored=True)
        return dataset

    @property
    def train_examples(self) -> int:
        """How many examples `batches` draws from: rows, or windows for a language model."""
        if self.kind == "classification":
            return len(self.y_train)
        return shifted_window_count(len(self.train_ids), self.seq_len)

    def steps_per_epoch(self, batch_size: int, world: int = 1) -> int:
        """Batches each of `world` workers gets per epoch (the incomplete last global batch is dropped)."""
        return steps_per_epoch(self.train_examples, batch_size, world)

    def with_validation(self, fraction: float, seed: int) -> Dataset:
        """Carve a validation split out of train: a seeded random subset of rows, or the last part of a text.

        Text is split by position so that validation is held-out text, as the test split is;
        `seed` does not apply there.
        """
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"validation fraction must lie in [0, 1), got {fraction}")
        if self.kind == "language_model":
            keep = len(self.train_ids) - round(fraction * len(self.train_ids))
            carved = dataclasses.replace(self, train_ids=self.train_ids[:keep], val_ids=self.train_ids[keep:])
            carved._require_windows("train", carved.train_ids)
            if fraction > 0:
                carved._require_windows("val", carved.val_ids, scored=True)
            return carved
        n = len(self.y_train)
        chosen = np.random.default_rng(seed).permutation(n)[: round(fraction * n)]
        is_val = np.zeros(n, dtype=bool)
        is_val[chosen] = True
        if is_val.all():
            raise DatasetError(f"{self.name}: validation fraction {fraction} leaves no training example")
        return dataclasses.replace(
            self, x_train=self.x_train[~is_val], y_train=self.y_train[~is_val],
            x_val=self.x_train[is_val], y_val=self.y_train[is_val],
        )

    def with_train_limit(self, limit: int) -> Dataset:
        """Keep only the first `limit` training examples (windows for text), for quick runs."""
        if limit < 1:
            raise ValueError(f"limit_train must be >= 1, got {limit}")
        if self.kind == "language_model":
            return dataclasses.replace(self, train_ids=self.train_ids[: (limit + 1) * self.seq_len])
        return dataclasses.replace(self, x_train=self.x_train[:limit], y_train=self.y_train[:limit])

    def batches(self, rank: int, world: int, batch_size: int, seed: int, epoch_start: int = 0) -> Iterator[Batch]:
        """Endless (x, y) training batches of worker `rank` out of `world`, partitioned by `batch_indices`.

        Classification yields rows; a language model yields windows x (B, L) and their
        next-character targets y (B, L), both int64. Each epoch cuts the text into windows at a
        new seeded offset, so a small text is not learnt window by window, and every character
        is seen both early and late in a window.
        """
        if self.kind == "classification":
            indices = batch_indices(len(self.y_train), batch_size, rank, world, seed, epoch_start)
            return ((self.x_train[idx], self.y_train[idx]) for idx in indices)
        return self._window_batches(rank, world, batch_size, seed, epoch_start)

    def _window_batches(self, rank: int, world: int, batch_size: int, seed: int, epoch_start: int) -> Iterator[Batch]:
        windows = self.train_examples
        indices = batch_indices(windows, batch_size, rank, world, seed, epoch_start)
        per_epoch = steps_per_epoch(windows, batch_size, world)
        for step, idx in enumerate(indices):
            if step % per_epoch == 0:  # a new epoch, a new grid
                offset = window_offset(self.seq_len, seed, epoch_start + step // per_epoch)
            yield gather_windows(self.train_ids, offset + idx * self.seq_len, self.seq_len)

    def eval_batches(self, split: Literal["val", "test"], batch_size: int) -> Iterator[Batch]:
        """The whole split once, in order, in batches of `batch_size` (the last may be smaller).

        A language model's text is scored in consecutive windows of `seq_len` characters, each
        read after the `seq_len` characters before it (x is (B, 2L), y the (B, L) next characters
        of its second half), so no character is predicted from a cold hidden state; the first
        `seq_len` characters of the split are context only.
        """
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self.kind == "classification":
            x, y = (self.x_val, self.y_val) if split == "val" else (self.x_test, self.y_test)
            return ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size))
        ids = self.val_ids if split == "val" else self.test_ids
        starts = scored_window_starts(len(ids), self.seq_len)
        return (
            gather_scored_windows(ids, starts[i : i + batch_size], self.seq_len)
            for i in range(0, len(starts), batch_size)
        )

    def has_split(self, split: str) -> bool:
        """Whether `split` ("val" or "test") holds anything to evaluate."""
        if self.kind == "classification":
            return len(self.y_val if split == "val" else self.y_test) > 0
        return len(self.val_ids if split == "val" else self.test_ids) > 0

    def describe(self) -> str:
        """One line for the logs: what was loaded and how big each split is."""
        if self.kind == "classification":
            return (
                f"{self.name}: classification, {self.num_classes} classes, input {self.input_shape} "
                f"{self.x_train.dtype}; train {len(self.y_train)}, val {len(self.y_val)}, test {len(self.y_test)}"
            )
        return (
            f"{self.name}: language model, vocab {len(self.vocab)} chars, seq_len {self.seq_len}; "
            f"train {len(self.train_ids)} chars ({self.train_examples} windows), "
            f"val {len(self.val_ids)} chars, test {len(self.test_ids)} chars"
        )

    def _require_windows(self, split: str, ids: np.ndarray, scored: bool = False) -> None:
        if scored:
            fits = len(scored_window_starts(len(ids), self.seq_len))
            need = f"{2 * self.seq_len} + 1 (a window and its context)"
        else:
            fits = shifted_window_count(len(ids), self.seq_len)
            need = f"{2 * self.seq_len} (a window at any offset)"
        if fits == 0:
            raise DatasetError(
                f"{self.name}: the {split} split has {len(ids)} characters, too few for one window of "
                f"seq_len {self.seq_len}: it needs {need}; use a smaller seq_len or more text"
            )
