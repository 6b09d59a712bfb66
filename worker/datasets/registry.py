"""One registry of data-set loaders, by name; nothing is ever downloaded.

Names: `digits`, `fashion_mnist`, `mnist1d`, `text:jargon`, `text:pydoc`, `fortunes_langid`,
`fortunes_topic` (hashed texts, `hashing.py`), and `npz:PATH` for a user's own arrays. A
missing file raises `DatasetError` naming the package to install.
"""
from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Callable

from downpour.worker.datasets.arrays import load_npz
from downpour.worker.datasets.dataset import Dataset
from downpour.worker.datasets.errors import DatasetError
from downpour.worker.datasets.fortunes import load_fortunes
from downpour.worker.datasets.generated import load_mnist1d
from downpour.worker.datasets.hashing import Featurizer
from downpour.worker.datasets.images import load_digits, load_fashion_mnist
from downpour.worker.datasets.text import read_jargon, read_pydoc_topics, text_dataset

logger = logging.getLogger(__name__)

NPZ_PREFIX = "npz:"

# Sparse data sets: texts hashed into the buckets of `data.features` (worker/datasets/hashing.py)
_SPARSE_LOADERS: dict[str, Callable[[Featurizer], Dataset]] = {
    "fortunes_langid": lambda featurizer: load_fortunes("langid", featurizer),
    "fortunes_topic": lambda featurizer: load_fortunes("topic", featurizer),
}

_LOADERS: dict[str, Callable[[int, int | None], Dataset]] = {
    "digits": lambda seq_len, max_chars: load_digits(),
    "fashion_mnist": lambda seq_len, max_chars: load_fashion_mnist(),
    "mnist1d": lambda seq_len, max_chars: load_mnist1d(),
    "text:jargon": lambda seq_len, max_chars: text_dataset("text:jargon", read_jargon(), seq_len, max_chars),
    "text:pydoc": lambda seq_len, max_chars: text_dataset("text:pydoc", read_pydoc_topics(), seq_len, max_chars),
}


def available() -> list[str]:
    """Every name `load` accepts; `npz:PATH` stands for any path to a user's .npz file."""
    return sorted([*_LOADERS, *_SPARSE_LOADERS, f"{NPZ_PREFIX}PATH"])


def load(
    name: str,
    *,
    validation: float = 0.0,
    seed: int = 0,
    limit_train: int | None = None,
    seq_len: int = 64,
    max_chars: int | None = None,
    features: dict | None = None,
) -> Dataset:
    """Load data set `name`, carve `validation` (a fraction of train, seeded), then cut train to `limit_train`.

    `seq_len` and `max_chars` apply to text data sets only, `features` (a `Featurizer`'s
    settings) to sparse ones. Every process that calls this with the same arguments gets the
    same arrays.
    """
    started = time.perf_counter()
    if name.startswith(NPZ_PREFIX) and len(name) > len(NPZ_PREFIX):
        dataset = load_npz(name[len(NPZ_PREFIX) :])
    elif name in _LOADERS:
        dataset = _LOADERS[name](seq_len, max_chars)
    elif name in _SPARSE_LOADERS:
        dataset = _SPARSE_LOADERS[name](Featurizer(**(features or {})))
    else:
        raise DatasetError(_unknown_name_message(name))
    dataset = dataset.with_validation(validation, seed)
    if limit_train is not None:
        dataset = dataset.with_train_limit(limit_train)
    logger.info("loaded %s in %.2f s", dataset.describe(), time.perf_counter() - started)
    return dataset


def _unknown_name_message(name: str) -> str:
    message = f"unknown data set {name!r}; known: {', '.join(available())}"
    close = difflib.get_close_matches(name, available(), n=1, cutoff=0.6)
    return f"{message}. Did you mean {close[0]!r}?" if close else message
