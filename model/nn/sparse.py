"""Layers over bags of table rows: `EmbeddingBag`, with torch's name, arguments and layout."""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from ..ops_sparse import MODES
from ..tensor import Tensor
from . import init
from .module import Module, Parameter


class EmbeddingBag(Module):
    """Sums or means of bags of rows of a (num_embeddings, embedding_dim) table drawn from
    N(0, 1), as torch.nn.EmbeddingBag: `forward(input, offsets, per_sample_weights)`.

    The table's gradient is row-sparse (`model.sparse.RowSparse`): only the rows a batch read.
    `_weight` (as in torch) gives the initial table instead of drawing one, so a table of
    millions of rows that starts at zero (logistic regression) is never drawn at random."""

    def __init__(self, num_embeddings: int, embedding_dim: int, mode: str = "mean",
                 include_last_offset: bool = False, rng: np.random.Generator | None = None,
                 _weight: Any = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"EmbeddingBag mode must be one of {MODES}, got {mode!r}")
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.mode, self.include_last_offset = mode, bool(include_last_offset)
        shape = (self.num_embeddings, self.embedding_dim)
        if _weight is None:
            weight = init.normal(shape, rng)
        else:
            weight = _weight.data if isinstance(_weight, Tensor) else _weight
            if tuple(weight.shape) != shape:
                raise ValueError(f"EmbeddingBag _weight of shape {tuple(weight.shape)}: expected {shape}")
        self.weight = Parameter(weight)

    def forward(self, input: Any, offsets: Any = None, per_sample_weights: Any = None) -> Tensor:
        return F.embedding_bag(input, self.weight, offsets, self.mode, per_sample_weights, self.include_last_offset)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}"
