"""Models over rows of hashed features (worker/datasets/hashing.py): a table far larger than
what a batch touches, the workload a parameter server is built for (Li et al., OSDI 2014).

    sparse_logreg   multinomial logistic regression: a table of buckets x classes, summed over
                    a row's features (weighted by their values), plus a bias; starts at zero
    fasttext        a fastText-like classifier (Joulin et al. 2017): an embedding bag of the
                    row's features, then a small MLP

Both name their table (`row_tables`) and the rows a batch reads (`rows_used`), so that with
`compression.rows` a worker pulls and pushes only those rows; the table's gradient is a
`RowSparse` of them from the engine on.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from downpour.model import nn
from downpour.model.tensor import Tensor

TABLE = "bag.weight"


class _SparseModel(nn.Module):
    """What both models share: one table read by bags of a batch's feature ids."""

    def _bag(self, x: Any) -> Tensor:
        psw = x.values if self.bag.mode == "sum" else None
        return self.bag(x.ids, x.offsets, psw)

    def row_tables(self) -> tuple[str, ...]:
        return (TABLE,)

    def rows_used(self, x: Any) -> dict[str, np.ndarray]:
        return {TABLE: x.ids}


class SparseLogReg(_SparseModel):
    """logits = sum of the table rows of a row's features (times their values) + bias."""

    def __init__(self, buckets: int, classes: int):
        super().__init__()
        self.bag = nn.EmbeddingBag(buckets, classes, mode="sum", _weight=np.zeros((buckets, classes), np.float32))
        self.bias = nn.Parameter(np.zeros(classes, np.float32))

    def forward(self, x: Any) -> Tensor:
        return self._bag(x) + self.bias


class FastText(_SparseModel):
    """An embedding bag (sum weighted by the features' values, or mean), then an MLP."""

    def __init__(self, buckets: int, classes: int, dim: int, hidden: list[int], mode: str, rng):
        super().__init__()
        bound = 1.0 / dim  # fastText's own initialisation of the input vectors
        table = rng.uniform(-bound, bound, (buckets, dim)).astype(np.float32)
        self.bag = nn.EmbeddingBag(buckets, dim, mode=mode, _weight=table)
        layers: list[nn.Module] = []
        width = dim
        for h in hidden:
            layers += [nn.Linear(width, h, rng=rng), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, classes, rng=rng))
        self.head = nn.Sequential(*layers)

    def forward(self, x: Any) -> Tensor:
        return self.head(self._bag(x))


def _config_error(message: str) -> Exception:
    from .models import ModelConfigError  # noqa: PLC0415 - models.py registers these builders

    return ModelConfigError(message)


def _buckets(info: dict, kind: str) -> int:
    shape = info.get("input_shape") or ()
    if info.get("kind") != "classification" or len(shape) != 1:
        raise _config_error(f"model.type {kind}: needs a sparse classification data set (hashed features, such as "
                         f"fortunes_langid), got input of shape {shape}")
    return int(shape[0])


def sparse_logreg(info: dict, rng) -> nn.Module:
    return SparseLogReg(_buckets(info, "sparse_logreg"), info["num_classes"])


def fasttext(info: dict, rng, dim: int = 16, hidden: list[int] = (), mode: str = "sum") -> nn.Module:
    if dim < 1 or any(h < 1 for h in hidden) or mode not in ("sum", "mean"):
        raise _config_error(f"model.dim {dim}, model.hidden {list(hidden)}, model.mode {mode!r}: expected dim >= 1, "
                         "hidden widths >= 1, mode 'sum' or 'mean'")
    return FastText(_buckets(info, "fasttext"), info["num_classes"], int(dim), list(hidden), mode, rng)


__all__ = ["FastText", "SparseLogReg", "fasttext", "sparse_logreg"]
