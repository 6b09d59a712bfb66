"""Texts for character-level language models: the Jargon File, or Python's own pydoc topics.

A text becomes a sorted character vocabulary (built from the whole text, so train and test
share it) and int64 ids. The first 90% trains, the last 10% tests: held-out text, cut by
position, never shuffled characters.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from downpour.worker.datasets.dataset import Dataset
from downpour.worker.datasets.errors import DatasetError

JARGON_PATH = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
JARGON_INSTALL = "apt-get install -y jargon-text"
TRAIN_FRACTION = 0.9


def read_jargon(path: Path = JARGON_PATH) -> str:
    """The Jargon File (about 1.6 M characters) from Debian's jargon-text package."""
    if not path.is_file():
        raise DatasetError(
            f"text:jargon: {path} not found; install Debian's package jargon-text with: {JARGON_INSTALL}"
        )
    try:
        with gzip.open(path, "rb") as stream:
            return stream.read().decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise DatasetError(f"text:jargon: cannot read {path} ({exc}); reinstall with: {JARGON_INSTALL}") from exc


def read_pydoc_topics() -> str:
    """Python's bundled help topics (about 0.5 M characters): the zero-install fallback text."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def encode_text(text: str) -> tuple[np.ndarray, str]:
    """Character ids (int64) of `text` and its vocabulary: the distinct characters, sorted."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    vocab_codes = np.unique(codes)
    return np.searchsorted(vocab_codes, codes).astype(np.int64), _codes_to_str(vocab_codes)


def decode_ids(ids: np.ndarray, vocab: str) -> str:
    """The text that `ids` spell in `vocab`; the inverse of `encode_text`."""
    vocab_codes = np.frombuffer(vocab.encode("utf-32-le"), dtype="<u4")
    return _codes_to_str(vocab_codes[np.asarray(ids)])


def _codes_to_str(codes: np.ndarray) -> str:
    return codes.astype("<u4").tobytes().decode("utf-32-le")


def text_dataset(name: str, text: str, seq_len: int, max_chars: int | None = None) -> Dataset:
    """A language-model `Dataset` from `text`, cut to its first `max_chars` characters if given."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if max_chars is not None:
        if max_chars < 1:
            raise ValueError(f"max_chars must be >= 1, got {max_chars}")
        text = text[:max_chars]
    ids, vocab = encode_text(text)
    cut = int(len(ids) * TRAIN_FRACTION)
    return Dataset.language_model(name, ids[:cut], ids[cut:], vocab, seq_len)
