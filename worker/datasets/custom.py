"""A user's own data: `data: {factory: FILE.py:load, ...}`, read a batch at a time.

`load(**every other key)` returns a mapping of split name to split, with at least `train` and
`test` (a `val` split is used for validation and early stopping; `data.validation` may carve
one out of train instead). A split is either

- a pair `(inputs, targets)` of arrays of equal length: NumPy arrays, memory-mapped ones
  (`np.load(path, mmap_mode="r")`), or anything with a length that takes an index array
  (`inputs[idx]`), or
- an object with `__len__` and `__getitem__(index_array) -> (inputs, targets)`.

Nothing is read whole: training batches, the cut by worker rank, validation carving, the train
limit and evaluation all go through arrays of row indices, so a memory-mapped file or a data
set larger than memory is read a batch at a time. The indices a split is asked for come sorted
in ascending order (reads go through a file in order), so the rows of a batch arrive in that
order. Floating (and boolean) inputs become float32, integer ones int64 (ids for an
embedding); integer targets are class labels (int64; accuracy is reported), others float32.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from downpour.ps.config_schema import JOB
from downpour.worker import plugins
from downpour.worker.datasets.batching import batch_indices, steps_per_epoch
from downpour.worker.datasets.errors import DatasetError

logger = logging.getLogger(__name__)

Batch = tuple[np.ndarray, np.ndarray]
REQUIRED_SPLITS = ("train", "test")
_CHUNK = 65536  # rows read at a time where a whole split must be scanned (the number of classes)


def _as_batch(result: Any, rows: int, where: str) -> Batch:
    """A split's answer as (float32 or int64 inputs, int64 or float32 targets), checked."""
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise DatasetError(f"{where}: expected a pair (inputs, targets), got a {type(result).__name__}")
    x, y = np.asarray(result[0]), np.asarray(result[1])
    for what, array in (("inputs", x), ("targets", y)):
        if array.ndim == 0 or len(array) != rows:
            raise DatasetError(f"{where}: {what} of shape {array.shape} for {rows} rows; expected {rows} rows")
        if array.dtype.kind not in "biuf":
            raise DatasetError(f"{where}: {what} of dtype {array.dtype}; expected numbers")
    x = x.astype(np.int64 if x.dtype.kind in "iu" else np.float32, copy=False)
    y = y.astype(np.int64 if y.dtype.kind in "iu" else np.float32, copy=False)
    return x, y


@dataclass(frozen=True)
class Split:
    """One split, read through `read(sorted positions)`; `index` picks and orders its rows
    out of the source (None: all of them)."""

    name: str  # what errors call it: the factory, its line and the split's name
    read: Callable[[np.ndarray], Any] = field(repr=False)
    length: int
    index: np.ndarray | None = None
    num_classes_hint: int | None = None  # a split object's own `num_classes`, if it has one
    targets: Any = field(default=None, repr=False)  # an array pair's targets: read alone to count classes

    def __len__(self) -> int:
        return self.length if self.index is None else len(self.index)

    def take(self, rows: np.ndarray) -> Batch:
        """The (inputs, targets) of `rows` (positions in this split), read in ascending order."""
        positions = np.sort(np.asarray(rows, dtype=np.int64) if self.index is None else self.index[rows])
        return _as_batch(self.read(positions), len(positions), self.name)

    def subset(self, rows: np.ndarray) -> Split:
        positions = rows if self.index is None else self.index[rows]
        return dataclasses.replace(self, index=np.asarray(positions, dtype=np.int64))

    def largest_label(self) -> int:
        """The largest target, a chunk at a time (of the targets alone, for an array pair)."""
        top = -1
        for start in range(0, len(self), _CHUNK):
            rows = np.arange(start, min(start + _CHUNK, len(self)))
            if self.targets is not None:
                labels = np.asarray(self.targets[rows if self.index is None else np.sort(self.index[rows])])
            else:
                labels = self.take(rows)[1]
            top = max(top, int(labels.max()))
        return top

    def chunks(self, batch_size: int) -> Iterator[Batch]:
        """The whole split once, in order, in batches of `batch_size` (the last may be smaller)."""
        for start in range(0, len(self), batch_size):
            yield self.take(np.arange(start, min(start + batch_size, len(self))))


def _array_reader(x: Any, y: Any) -> Callable[[np.ndarray], Batch]:
    def read(positions: np.ndarray) -> Batch:
        if len(positions) and positions[-1] - positions[0] + 1 == len(positions):  # a run: a slice, no gather
            rows = slice(int(positions[0]), int(positions[-1]) + 1)
            return x[rows], y[rows]
        return x[positions], y[positions]
    return read


def _split(name: str, value: Any, ref: str, blame: str) -> Split:
    where = f"{blame}: split {name!r}"
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise DatasetError(f"{where}: a sequence of {len(value)} items; expected a pair (inputs, targets)")
        x, y = (part if hasattr(part, "__getitem__") and hasattr(part, "__len__") and not isinstance(part, list)
                else np.asarray(part) for part in value)
        if len(x) != len(y):
            raise DatasetError(f"{where}: {len(x)} inputs but {len(y)} targets")
        return Split(where, _array_reader(x, y), len(x), targets=y)
    if hasattr(value, "__len__") and hasattr(value, "__getitem__"):
        def read(positions: np.ndarray) -> Any:
            return plugins.call(value.__getitem__, ref, f"data.factory split {name!r}", positions)
        hint = getattr(value, "num_classes", None)
        return Split(where, read, len(value), num_classes_hint=int(hint) if hint is not None else None)
    raise DatasetError(f"{where}: a {type(value).__name__}; expected a pair (inputs, targets) of arrays, "
                       "or an object with __len__ and __getitem__(index_array) -> (inputs, targets)")


@dataclass(frozen=True, eq=False)
class CustomDataset:
    """A user's splits, with the interface the worker, the evaluator and `downpour train` read
    (the one `Dataset` has): `batches`, `eval_batches`, `steps_per_epoch`, `has_split`."""

    name: str
    kind: str                      # "classification" (integer targets) or "regression"
    input_shape: tuple[int, ...]
    splits: dict[str, Split]

    @property
    def train_examples(self) -> int:
        return len(self.splits["train"])

    @functools.cached_property
    def num_classes(self) -> int:
        """One more than the largest label (counted once; a split object may say it with a
        `num_classes` attribute): what a built-in model needs to size its output. 0 for targets
        that are not class labels."""
        if self.kind != "classification":
            return 0
        hints = [split.num_classes_hint for split in self.splits.values()]
        if all(hint is not None for hint in hints):
            return max(hints)
        return 1 + max(split.largest_label() for split in self.splits.values())

    def steps_per_epoch(self, batch_size: int, world: int = 1) -> int:
        return steps_per_epoch(self.train_examples, batch_size, world)

    def batches(self, rank: int, world: int, batch_size: int, seed: int, epoch_start: int = 0) -> Iterator[Batch]:
        """Endless training batches of worker `rank` out of `world`, cut as `batch_indices` cuts them."""
        train = self.splits["train"]
        indices = batch_indices(len(train), batch_size, rank, world, seed, epoch_start)
        return (train.take(idx) for idx in indices)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        if split not in self.splits:
            raise ValueError(f"{self.name} has no split {split!r} (it has: {', '.join(self.splits)})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return self.splits[split].chunks(batch_size)

    def has_split(self, split: str) -> bool:
        return split in self.splits and len(self.splits[split]) > 0

    def with_validation(self, fraction: float, seed: int) -> CustomDataset:
        """Carve `fraction` of train (a seeded random choice of rows, by index) into `val`."""
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"validation fraction must lie in [0, 1), got {fraction}")
        if fraction == 0:
            return self
        if "val" in self.splits:
            raise DatasetError(f"data.validation: {fraction:g}, but {self.name} returns a 'val' split of its own; "
                               "set data.validation to 0, or return no 'val' split")
        train = self.splits["train"]
        order = np.random.default_rng(seed).permutation(len(train))
        cut = round(fraction * len(train))
        if cut == len(train):
            raise DatasetError(f"{self.name}: validation fraction {fraction} leaves no training example")
        return dataclasses.replace(self, splits={**self.splits, "train": train.subset(np.sort(order[cut:])),
                                                 "val": train.subset(np.sort(order[:cut]))})

    def with_train_limit(self, limit: int) -> CustomDataset:
        if limit < 1:
            raise ValueError(f"limit_train must be >= 1, got {limit}")
        train = self.splits["train"]
        kept = train.subset(np.arange(min(limit, len(train))))
        return dataclasses.replace(self, splits={**self.splits, "train": kept})

    def describe(self) -> str:
        sizes = ", ".join(f"{name} {len(split)}" for name, split in self.splits.items())
        return f"{self.name}: {self.kind}, input {self.input_shape}; {sizes}"


def _checked_splits(result: Any, ref: str, blame: str) -> tuple[dict[str, Split], tuple[int, ...], str]:
    """The factory's splits, each read for its first rows: their row shapes and target kind
    must agree (returned with the splits)."""
    if not isinstance(result, Mapping):
        raise DatasetError(f"{blame} returned a {type(result).__name__}; expected a mapping of split name "
                           "to data, with at least 'train' and 'test'")
    missing = [name for name in REQUIRED_SPLITS if name not in result]
    if missing:
        raise DatasetError(f"{blame} returned no {' and no '.join(repr(m) for m in missing)} split "
                           f"(it returned: {', '.join(map(str, result)) or 'nothing'})")
    splits = {str(name): _split(str(name), value, ref, blame) for name, value in result.items()}
    kinds = {}
    for name, split in splits.items():
        if len(split) == 0 and name in REQUIRED_SPLITS:
            raise DatasetError(f"{blame}: split {name!r} is empty")
        if len(split):
            x, y = split.take(np.arange(min(2, len(split))))
            kinds[name] = (x.shape[1:], y.shape[1:], y.dtype.kind)
    if len(set(kinds.values())) > 1:
        shown = "; ".join(f"{name}: inputs {i}, targets {t} of kind {k!r}" for name, (i, t, k) in kinds.items())
        raise DatasetError(f"{blame}: the splits disagree on row shapes or target type ({shown})")
    input_shape, _, target_kind = kinds["train"]
    return splits, tuple(input_shape), target_kind


def load_factory(data_cfg: Mapping, seed: int) -> CustomDataset:
    """Call the job's data factory (seeded, as every role calls it), check its splits by
    reading their first rows, then carve validation and cut train as the config says."""
    started = time.perf_counter()
    ref = data_cfg["factory"]
    factory = plugins.load(ref, "data.factory")
    kwargs = {key: value for key, value in data_cfg.items() if key not in JOB.fields["data"].given.fields}
    with plugins.seeded(seed):
        result = plugins.call(factory, ref, "data.factory", **kwargs)
    blame = f"data.factory: {factory.__name__} ({plugins.where(factory)})"
    splits, input_shape, target_kind = _checked_splits(result, ref, blame)
    name = f"factory:{ref.rpartition('/')[2]}"
    data = CustomDataset(name, "classification" if target_kind == "i" else "regression", input_shape, splits)
    data = data.with_validation(data_cfg["validation"], seed)
    if data_cfg["limit_train"] is not None:
        data = data.with_train_limit(data_cfg["limit_train"])
    logger.info("loaded %s in %.2f s", data.describe(), time.perf_counter() - started)
    return data
