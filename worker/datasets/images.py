"""Image classification sets that ship with installed packages: no download, ever.

Both give float32 NCHW images scaled to [0, 1] (raw pixel / max pixel) and int64 labels.
They are not standardised here: a model that wants zero mean and unit variance does it in
its first layer, so every loader hands out the same simple, documented range.
"""
from __future__ import annotations

import gzip
import importlib.util
import logging
import os
import zlib
from pathlib import Path

import numpy as np

from downpour.worker.datasets.dataset import Dataset
from downpour.worker.datasets.errors import DatasetError
from downpour.worker.datasets.idx import parse_idx

logger = logging.getLogger(__name__)

DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 20240801
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_DIR_ENV = "DOWNPOUR_FASHION_MNIST_DIR"
FASHION_MNIST_INSTALL = "apt-get install -y dataset-fashion-mnist"


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits (1797 images), read from the csv.gz inside the installed wheel.

    Importing sklearn would cost seconds; the file alone is all we need. The 1437/360
    train/test split is a fixed random permutation, the same in every process and run.
    """
    path = _sklearn_data_dir() / "digits.csv.gz"
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"digits: cannot read {path} ({exc}); reinstall with: pip install scikit-learn") from exc
    if table.ndim != 2 or table.shape[1] != 65:
        raise DatasetError(f"digits: {path} has shape {table.shape}, expected (N, 65)")
    images = (table[:, :64] / 16.0).reshape(-1, 1, 8, 8)
    labels = table[:, 64].astype(np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    test, train = np.sort(order[:DIGITS_TEST_SIZE]), np.sort(order[DIGITS_TEST_SIZE:])
    return Dataset.classification("digits", images[train], labels[train], images[test], labels[test], num_classes=10)


def _sklearn_data_dir() -> Path:
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("digits: scikit-learn is not installed; install it with: pip install scikit-learn")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def load_fashion_mnist() -> Dataset:
    """Fashion-MNIST (60000 train, 10000 test, 28x28) from Debian's dataset-fashion-mnist.

    The directory may be overridden with $DOWNPOUR_FASHION_MNIST_DIR, e.g. for a copy
    elsewhere; any image size in the files is accepted and becomes `input_shape`.
    """
    directory = Path(os.environ.get(FASHION_MNIST_DIR_ENV) or FASHION_MNIST_DIR)
    x_train, y_train = _read_idx_pair(directory, "train")
    x_test, y_test = _read_idx_pair(directory, "t10k")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(f"fashion_mnist: train images {x_train.shape[1:]} and test images {x_test.shape[1:]} differ")
    return Dataset.classification("fashion_mnist", x_train, y_train, x_test, y_test, num_classes=10)


def _read_idx_pair(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images = _read_gzipped_idx(directory / f"{prefix}-images-idx3-ubyte.gz", ndim=3)
    labels = _read_gzipped_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", ndim=1)
    if len(images) != len(labels):
        raise DatasetError(f"fashion_mnist: {directory}/{prefix}-*: {len(images)} images but {len(labels)} labels")
    if images.dtype != np.uint8:
        raise DatasetError(f"fashion_mnist: {directory}/{prefix}-images hold {images.dtype}, expected uint8 pixels")
    if labels.dtype.kind not in "iu" or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DatasetError(f"fashion_mnist: {directory}/{prefix}-labels must be integers in 0..9")
    x = images.astype(np.float32)[:, None]
    x /= 255.0
    return x, labels.astype(np.int64)


def _read_gzipped_idx(path: Path, ndim: int) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(
            f"fashion_mnist: {path} not found; install Debian's package dataset-fashion-mnist with: "
            f"{FASHION_MNIST_INSTALL} (or point ${FASHION_MNIST_DIR_ENV} at a directory holding the IDX files)"
        )
    try:
        with gzip.open(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"fashion_mnist: {path} is not a readable gzip file ({exc})") from exc
    logger.debug("read %s (%d bytes)", path, len(data))
    return parse_idx(data, source=str(path), ndim=ndim)
