"""A user's own classification data: an .npz archive with x_train, y_train, x_test, y_test.

Everything is checked before training starts, and every error names the file and the key,
since a mistake found on a worker an hour into a job is a mistake found too late.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from downpour.worker.datasets.dataset import Dataset
from downpour.worker.datasets.errors import DatasetError

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str | Path) -> Dataset:
    """x arrays (N, ...) of floats or integers become float32; y arrays (N,) of integer labels, int64."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"npz:{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in REQUIRED_KEYS if key not in archive.files]
            if missing:
                raise DatasetError(
                    f"npz:{path}: missing key(s) {', '.join(missing)}; an npz data set needs {', '.join(REQUIRED_KEYS)}"
                )
            arrays = {key: archive[key] for key in REQUIRED_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"npz:{path}: not a readable .npz archive of plain arrays ({exc})") from exc
    x_train, y_train = _checked_split(path, "train", arrays["x_train"], arrays["y_train"])
    x_test, y_test = _checked_split(path, "test", arrays["x_test"], arrays["y_test"])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(
            f"npz:{path}: x_train rows have shape {x_train.shape[1:]} but x_test rows {x_test.shape[1:]}"
        )
    if len(y_train) == 0:
        raise DatasetError(f"npz:{path}: x_train is empty")
    num_classes = int(max(y_train.max(), y_test.max(initial=0))) + 1
    return Dataset.classification(f"npz:{path}", x_train, y_train, x_test, y_test, num_classes=num_classes)


def _checked_split(path: Path, split: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x_key, y_key = f"x_{split}", f"y_{split}"
    if x.dtype.kind not in "fiu":
        raise DatasetError(f"npz:{path}: {x_key} has dtype {x.dtype}; it must hold floating-point or integer values")
    if x.ndim < 2:
        raise DatasetError(f"npz:{path}: {x_key} has shape {x.shape}; it must be (N, features...) with ndim >= 2")
    if y.dtype.kind not in "iu":
        raise DatasetError(f"npz:{path}: {y_key} has dtype {y.dtype}; it must hold integer class labels")
    if y.ndim != 1:
        raise DatasetError(f"npz:{path}: {y_key} has shape {y.shape}; it must be (N,) class labels")
    if len(x) != len(y):
        raise DatasetError(f"npz:{path}: {x_key} has {len(x)} rows but {y_key} has {len(y)} labels")
    if y.size and y.min() < 0:
        raise DatasetError(f"npz:{path}: {y_key} holds negative labels; classes must be 0..C-1")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DatasetError(f"npz:{path}: {x_key} holds NaN or infinite values")
    return x, y.astype(np.int64)
