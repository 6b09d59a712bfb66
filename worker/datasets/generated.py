"""MNIST-1D, generated offline with the `mnist1d` package and cached on disk.

Only `make_dataset` is used, never the package's downloader. Generation is seeded, so every
process makes the same arrays; the cache merely saves the second it takes (and the import of
matplotlib that `mnist1d` drags in). Several workers may generate at once, so the cache file
is written to a temporary name and renamed into place: readers see a whole file or none.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import random
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from downpour.worker.datasets.dataset import Dataset
from downpour.worker.datasets.errors import DatasetError

logger = logging.getLogger(__name__)

CACHE_ENV = "DOWNPOUR_CACHE"
MNIST1D_INSTALL = "pip install 'downpour[data]'"
_ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
_CACHE_FORMAT = 1


def cache_dir() -> Path:
    """Where generated data sets are kept: $DOWNPOUR_CACHE, else ~/.cache/downpour."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "downpour")


def load_mnist1d(num_samples: int = 5000, seed: int = 42) -> Dataset:
    """MNIST-1D as float32 (N, 1, 40) sequences; the package's own 80/20 train/test split.

    With the defaults this is the published data set: 4000 train and 1000 test sequences.
    """
    path = cache_dir() / f"mnist1d-{_cache_key(num_samples, seed)}.npz"
    arrays = _read_cache(path)
    if arrays is None:
        arrays = _generate(num_samples, seed)
        _write_cache(path, arrays)
    return Dataset.classification(
        "mnist1d", arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], num_classes=10
    )


def _cache_key(num_samples: int, seed: int) -> str:
    """Keyed by our arguments and the package version (which fixes all its other defaults)."""
    try:
        version = importlib.metadata.version("mnist1d")
    except importlib.metadata.PackageNotFoundError as exc:
        raise DatasetError("mnist1d: the mnist1d package is not installed; "
                           f"install it with: {MNIST1D_INSTALL}") from exc
    args = {"format": _CACHE_FORMAT, "mnist1d": version, "num_samples": num_samples, "seed": seed}
    return hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]


def _generate(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise DatasetError(f"mnist1d: cannot import the mnist1d package ({exc}); "
                           f"install it with: {MNIST1D_INSTALL}") from exc
    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    logger.info("generating mnist1d (%d samples, seed %d)", num_samples, seed)
    # make_dataset seeds the global generators; leave the caller's random streams as they were.
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        made = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return {
        "x_train": made["x"].astype(np.float32)[:, None, :],
        "y_train": made["y"].astype(np.int64),
        "x_test": made["x_test"].astype(np.float32)[:, None, :],
        "y_test": made["y_test"].astype(np.int64),
    }


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in _ARRAY_KEYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        logger.warning("ignoring unreadable cache file %s (%s); generating again", path, exc)
        return None


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically; a cache that cannot be written only costs the next run a regeneration."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        logger.warning("cannot cache mnist1d in %s (%s)", path.parent, exc)
        return
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the cache is shared like any other file
        os.replace(temporary, path)
    except OSError as exc:
        logger.warning("cannot cache mnist1d in %s (%s)", path, exc)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
