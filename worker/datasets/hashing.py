"""The hashing trick: texts and records as sparse rows of a fixed number of buckets.

Nothing is kept of the features themselves: each n-gram (of characters or of words) or each
`field=value` pair is hashed to one of `buckets` columns (Weinberger et al. 2009), so the
width of the model's table is a setting (2^18 ... 2^24 and beyond), not a vocabulary, and
every worker featurises its own batches without sharing one. The hash is our own (a
polynomial over the units, then the splitmix64 finaliser), vectorised with NumPy and the same
in every process and on every run, unlike Python's salted `hash`.

A featurised batch is CSR (`SparseBatch`): `ids` of the buckets present in each row, `offsets`
where each row starts in `ids`, and per-entry `values` (or None: every entry counts 1), which is
what `nn.EmbeddingBag` takes as ids, offsets and per-sample weights. Within a row each bucket
appears once, its value the n-grams' count (`count`), 1 (`binary`), or the count scaled so that
the row has unit L2 norm (`l2`, as scikit-learn's HashingVectorizer does).
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

KINDS = ("char", "word")
VALUES = ("l2", "count", "binary")
_P = np.uint64(0x100000001B3)                   # the 64-bit FNV prime, as the polynomial's base
_SEEDS = {"char": 0x243F6A8885A308D3, "word": 0x13198A2E03707344, "field": 0xA4093822299F31D0}
_WORD = re.compile(r"\w+")


@dataclasses.dataclass(frozen=True)
class SparseBatch:
    """Rows of hashed features in CSR form: row r holds ids[offsets[r]:offsets[r + 1]]."""

    ids: np.ndarray                  # int64 bucket numbers
    offsets: np.ndarray              # int64, one per row, starting at 0
    values: np.ndarray | None        # float32 per entry, or None (all ones)
    buckets: int

    def __len__(self) -> int:
        return int(self.offsets.size)

    def row(self, r: int) -> np.ndarray:
        end = self.offsets[r + 1] if r + 1 < self.offsets.size else self.ids.size
        return self.ids[self.offsets[r]:end]


@dataclasses.dataclass(frozen=True)
class Featurizer:
    """How texts become rows: n-grams of `kind` from `n_min` to `n_max`, hashed to `buckets`."""

    kind: str = "char"
    n_min: int = 1
    n_max: int = 4
    buckets: int = 1 << 20
    values: str = "l2"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"features.kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")
        if not 1 <= self.n_min <= self.n_max <= 16:
            raise ValueError(f"features.n_min {self.n_min}, features.n_max {self.n_max}: expected "
                             "1 <= n_min <= n_max <= 16")
        if not 1 <= self.buckets < 1 << 62:
            raise ValueError(f"features.buckets: expected a positive number below 2^62, got {self.buckets}")
        if self.values not in VALUES:
            raise ValueError(f"features.values: expected one of {', '.join(VALUES)}, got {self.values!r}")

    def __call__(self, texts: Sequence[str]) -> SparseBatch:
        """Featurise texts as they are (see `normalize` for what loaders do to them first)."""
        if self.kind == "char":
            units, lengths = _code_points([f" {t} " for t in texts])  # word edges count as characters
        else:
            units, lengths = _tokens(texts)
        hashes, rows = ngram_hashes(units, lengths, self.n_min, self.n_max, _SEEDS[self.kind])
        return to_rows(hashes % np.uint64(self.buckets), rows, len(texts), self.buckets, self.values)


class HashedTexts:
    """Texts that hash themselves when their rows are read: a sparse data set's x.

    Indexing (an index array, a boolean mask, a slice) picks texts and hashes nothing; `ids`,
    `offsets` and `values` (a `SparseBatch`'s) hash the picked texts once and keep them. So a
    worker's batch costs its own texts, and a split of 70 000 texts costs nothing until read;
    `Dataset` carves, limits and batches it as it does an array."""

    def __init__(self, texts: Sequence[str] | np.ndarray, featurizer: Featurizer):
        self.texts = texts if isinstance(texts, np.ndarray) else np.array(list(texts), dtype=object)
        self.featurizer = featurizer
        self._rows: SparseBatch | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: Any) -> HashedTexts:
        picked = self.texts[index]
        if not isinstance(picked, np.ndarray):  # one text, by an integer: a batch of one
            picked = np.array([picked], dtype=object)
        return HashedTexts(picked, self.featurizer)

    def __repr__(self) -> str:
        return f"HashedTexts({len(self)} texts, {self.featurizer})"

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.featurizer.buckets

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def rows(self) -> SparseBatch:
        if self._rows is None:
            self._rows = self.featurizer(list(self.texts))
        return self._rows

    @property
    def ids(self) -> np.ndarray:
        return self.rows.ids

    @property
    def offsets(self) -> np.ndarray:
        return self.rows.offsets

    @property
    def values(self) -> np.ndarray | None:
        return self.rows.values

    @property
    def buckets(self) -> int:
        return self.featurizer.buckets


def normalize(text: str) -> str:
    """Lower case, runs of white space as one space, no space at either end."""
    return " ".join(text.lower().split())


def hash_fields(records: Sequence[Mapping[str, Any]], buckets: int, values: str = "binary") -> SparseBatch:
    """Categorical records (mappings of field to value) as rows of hashed `field=value` pairs."""
    pairs = [[f"{field}={value}" for field, value in record.items()] for record in records]
    flat = [pair for row in pairs for pair in row]
    units = string_hashes(flat)
    lengths = np.array([len(row) for row in pairs], np.int64)
    hashes, rows = ngram_hashes(units, lengths, 1, 1, _SEEDS["field"])
    return to_rows(hashes % np.uint64(buckets), rows, len(records), buckets, values)


# ---- the hash -----------------------------------------------------------------------------------
def mix(h: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: every input bit moves every output bit (uint64, wrapping)."""
    h = h ^ (h >> np.uint64(30))
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


def ngram_hashes(units: np.ndarray, lengths: np.ndarray, n_min: int, n_max: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The hash of every run of n consecutive units (n_min <= n <= n_max) inside each text, and
    the text it lies in; `units` (uint64) are the texts' units end to end, `lengths` how many
    each text has."""
    units = units.astype(np.uint64, copy=False)
    text = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
    starts = np.cumsum(lengths) - lengths
    left = lengths[text] - (np.arange(units.size, dtype=np.int64) - starts[text])  # units from here to the end
    hashes, rows = [], []
    for n in range(n_min, n_max + 1):
        at = np.flatnonzero(left >= n)
        h = np.full(at.size, np.uint64(seed + n), np.uint64)
        for k in range(n):
            h *= _P
            h += units[at + k]
        hashes.append(mix(h))
        rows.append(text[at])
    if not hashes:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.concatenate(hashes), np.concatenate(rows)


def string_hashes(strings: Sequence[str]) -> np.ndarray:
    """A stable 64-bit hash of each string: the polynomial of its code points (base P, modulo
    2^64, all strings at once), plus its length, mixed."""
    units, lengths = _code_points(strings)
    out = np.zeros(len(strings), np.uint64)
    if units.size:
        powers = np.ones(int(lengths.max()), np.uint64)
        powers[1:] = np.cumprod(np.full(powers.size - 1, _P, np.uint64))
        ends = np.cumsum(lengths)
        text = np.repeat(np.arange(len(strings), dtype=np.int64), lengths)
        terms = units * powers[ends[text] - 1 - np.arange(units.size, dtype=np.int64)]
        filled = lengths > 0
        out[filled] = np.add.reduceat(terms, (ends - lengths)[filled])
    return mix(out + lengths.astype(np.uint64))


def _code_points(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(s) for s in strings), np.int64, len(strings))
    codes = np.frombuffer("".join(strings).encode("utf-32-le"), "<u4")
    return codes.astype(np.uint64), lengths


def _tokens(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each text's words (runs of letters, digits and '_') as stable word hashes."""
    words = [_WORD.findall(t) for t in texts]
    flat = [w for row in words for w in row]
    ids: dict[str, int] = {}
    index = np.fromiter((ids.setdefault(w, len(ids)) for w in flat), np.int64, len(flat))
    return string_hashes(list(ids))[index], np.array([len(row) for row in words], np.int64)


def to_rows(buckets_hit: np.ndarray, rows: np.ndarray, n_rows: int, buckets: int, values: str) -> SparseBatch:
    """CSR rows from (bucket, row) pairs: each bucket once per row, with its count as `values` says."""
    key = rows * np.int64(buckets) + buckets_hit.astype(np.int64)
    key, counts = np.unique(key, return_counts=True)           # sorted by row, then bucket
    row_of = key // buckets
    ids = key - row_of * buckets
    offsets = np.searchsorted(row_of, np.arange(n_rows, dtype=np.int64)).astype(np.int64)
    if values == "binary":
        return SparseBatch(ids, offsets, None, buckets)
    weights = counts.astype(np.float32)
    if values == "l2":
        norms = np.sqrt(np.bincount(row_of, weights=counts.astype(np.float64) ** 2, minlength=n_rows))
        weights /= norms[row_of].astype(np.float32)
    return SparseBatch(ids, offsets, weights, buckets)
