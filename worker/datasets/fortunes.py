"""The fortune-cookie databases of Debian's fortunes packages, as two text-classification tasks.

    fortunes_langid   which language a cookie is in: English (fortunes, fortunes-min), German
                      (fortunes-de), Spanish (-es), Italian (-it), Czech (-cs), Polish (-pl),
                      Russian (-ru); about 90 000 texts
    fortunes_topic    which file an English cookie comes from (art, computers, ..., zippy):
                      43 files of fortunes and fortunes-min, about 15 000 texts

Each package's own files are read, as `dpkg -L PACKAGE` lists them, never a directory listing:
fortunes-it links its files into the top directory too, where a listing would take them for
English ones, and fortunes-cs links them again under cz/. Files are read once by their real
path, and of the twins some packages ship (a file and its `.u8`, sometimes a link to it,
sometimes the one empty) the one that holds the texts is taken, as UTF-8 or else Latin-1.

A text is one cookie (between lines of a lone `%`), lower-cased, its white space runs made
one space. Exact duplicates are kept once, and a text found under two labels is dropped, so
no text is on both sides of the split. The split is fixed: a seeded fifth of the texts tests.

Reading and splitting the 90 000 texts takes a process a second or two, and every process of a
job does it, so the split is cached (`generated.cache_dir()`), keyed by the packages' files,
their sizes and times: a package upgrade makes a new one.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from downpour.worker.datasets.dataset import Dataset
from downpour.worker.datasets.errors import DatasetError
from downpour.worker.datasets.generated import cache_dir
from downpour.worker.datasets.hashing import Featurizer, HashedTexts

ROOT = Path("/usr/share/games/fortunes")
LANGUAGES = {"en": ("fortunes", "fortunes-min"), "de": ("fortunes-de",), "es": ("fortunes-es",),
             "it": ("fortunes-it",), "cs": ("fortunes-cs",), "pl": ("fortunes-pl",), "ru": ("fortunes-ru",)}
TASKS = ("langid", "topic")
TEST_FRACTION = 0.2
SPLIT_SEED = 0x5EED
_SEPARATOR = re.compile(r"^%[ \t]*$", re.MULTILINE)
_CACHE_FORMAT = 1
log = logging.getLogger(__name__)

Split = tuple[list[str], np.ndarray, list[str], np.ndarray, tuple[str, ...]]


@functools.cache
def package_files(package: str) -> tuple[Path, ...]:
    """The fortune files package `package` installed (by real path, no `.dat` index), sorted."""
    try:
        listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise DatasetError(f"cannot list package {package}'s files: dpkg is not installed") from None
    if listed.returncode != 0:
        raise DatasetError(f"Debian package {package} is not installed; install it with: "
                           f"apt-get install -y {' '.join(p for ps in LANGUAGES.values() for p in ps)}")
    found = set()
    for line in listed.stdout.splitlines():
        path = Path(line)
        if path.is_relative_to(ROOT) and path.suffix != ".dat" and path.is_file():
            found.add(path.resolve())
    return tuple(sorted(found))


def read_cookies(path: Path) -> tuple[list[str], bool]:
    """The cookies of one file, normalised (`hashing.normalize`, done a file at a time), and
    whether it was UTF-8 (else read as Latin-1)."""
    raw = path.read_bytes()
    try:
        text, utf8 = raw.decode("utf-8"), True
    except UnicodeDecodeError:
        text, utf8 = raw.decode("latin-1"), False
    return [t for t in (" ".join(part.split()) for part in _SEPARATOR.split(text.lower())) if t], utf8


def package_cookies(package: str) -> list[tuple[str, str]]:
    """(file name, cookie) for every cookie of a package, each file of a twin pair read once."""
    twins: dict[Path, list[Path]] = {}
    for path in package_files(package):
        stem = path.with_name(path.name.removesuffix(".u8"))
        twins.setdefault(stem, []).append(path)
    out = []
    for stem, paths in sorted(twins.items()):
        read = [read_cookies(p) for p in sorted(paths)]
        cookies, _ = max(read, key=lambda r: (bool(r[0]), r[1], len(r[0])))  # not empty, then UTF-8
        out += [(stem.name, c) for c in cookies]
    return out


@functools.cache
def split(task: str) -> Split:
    """(train texts, train labels, test texts, test labels, class names) of a task: the fixed
    split every process and the scikit-learn reference share."""
    if task not in TASKS:
        raise DatasetError(f"fortunes task {task!r}: expected one of {', '.join(TASKS)}")
    packages = LANGUAGES["en"] if task == "topic" else [p for ps in LANGUAGES.values() for p in ps]
    files = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for p in packages for f in package_files(p)]
    key = hashlib.sha256(json.dumps([_CACHE_FORMAT, task, TEST_FRACTION, SPLIT_SEED, files]).encode()).hexdigest()
    path = cache_dir() / f"fortunes_{task}-{key[:16]}.npz"
    cached = _read(path)
    if cached is None:
        cached = _split(task)
        _write(path, cached)
    return cached


def _split(task: str) -> Split:
    labelled: list[tuple[str, str]] = []
    if task == "langid":
        for language, packages in LANGUAGES.items():
            labelled += [(language, c) for p in packages for _, c in package_cookies(p)]
    else:
        labelled += [(name, c) for p in LANGUAGES["en"] for name, c in package_cookies(p)]
    labels_of: dict[str, set[str]] = {}
    for label, cookie in labelled:
        labels_of.setdefault(cookie, set()).add(label)
    texts = [c for c, labels in labels_of.items() if len(labels) == 1]   # each once, unambiguous
    classes = tuple(LANGUAGES) if task == "langid" else tuple(sorted({label for label, _ in labelled}))
    index = {name: i for i, name in enumerate(classes)}
    y = np.array([index[next(iter(labels_of[t]))] for t in texts], np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(texts))
    n_test = round(TEST_FRACTION * len(texts))
    test, train = order[:n_test], order[n_test:]
    return [texts[i] for i in train], y[train], [texts[i] for i in test], y[test], classes


def _read(path: Path) -> Split | None:
    """A cached split (texts as one UTF-8 blob and their offsets), or None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            out = []
            for side in ("train", "test"):
                text, ends = bytes(z[f"{side}_blob"]).decode("utf-8"), z[f"{side}_ends"].tolist()
                out += [[text[a:b] for a, b in zip([0, *ends[:-1]], ends)], z[f"{side}_y"]]
            return (*out, tuple(json.loads(bytes(z["classes"]).decode())))
    except (OSError, ValueError, KeyError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
        log.warning("ignoring unreadable cache file %s (%s)", path, exc)
        return None


def _write(path: Path, split_: Split) -> None:
    """Write atomically; a cache that cannot be written only costs the next process the reading."""
    train, y_train, test, y_test, classes = split_
    arrays = {"classes": np.frombuffer(json.dumps(classes).encode(), np.uint8)}
    for side, texts, y in (("train", train, y_train), ("test", test, y_test)):
        arrays[f"{side}_blob"] = np.frombuffer("".join(texts).encode("utf-8"), np.uint8)
        arrays[f"{side}_ends"] = np.cumsum([len(t) for t in texts], dtype=np.int64)
        arrays[f"{side}_y"] = y
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        log.warning("cannot cache the fortunes split in %s (%s)", path, exc)
    finally:
        if temporary is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)


def load_fortunes(task: str, featurizer: Featurizer) -> Dataset:
    """The task's split as a classification data set whose inputs hash themselves (`HashedTexts`)."""
    train, y_train, test, y_test, classes = split(task)
    return Dataset.classification(f"fortunes_{task}", HashedTexts(train, featurizer), y_train,
                                  HashedTexts(test, featurizer), y_test, len(classes))
