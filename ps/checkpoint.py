"""Checkpoints written atomically, with a checksum, so a crash never leaves a file resume would load.

A checkpoint is one `.npz` file: named arrays plus a JSON `meta` entry. It is written to a
temporary file in the same directory, flushed and fsynced, then renamed over the old one
(rename is atomic on POSIX), and the directory is fsynced so the rename itself survives.
The SHA-256 of the arrays' bytes is stored in `meta` and checked on load.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import tempfile
import zipfile
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, torn or fails its checksum."""


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(a.dtype.str.encode())
        h.update(str(a.shape).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def save(path: str | os.PathLike, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write `arrays` and `meta` to `path` atomically (temp file, fsync, rename, fsync dir)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(meta, sha256=_digest(arrays))
    payload = dict(arrays)
    payload["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer that crashed
        stale.unlink(missing_ok=True)
    atomic_write(path, lambda f: np.savez(f, **payload))


def atomic_write(path: pathlib.Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write a file so that readers see the old one or the new one, whole: `write(f)` into a
    temp file beside it, fsync, rename over `path`, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint and verify its checksum; raise CheckpointError if anything is off."""
    path = pathlib.Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, io.UnsupportedOperation) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc
    if "__meta__" not in arrays:
        raise CheckpointError(f"checkpoint {path} has no metadata")
    meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    if meta.get("sha256") != _digest(arrays):
        raise CheckpointError(f"checkpoint {path} fails its checksum")
    return arrays, meta


def assemble(run_dir: str | os.PathLike) -> np.ndarray:
    """The whole flat model from a run's shard checkpoints (each holds its own key range)."""
    paths = sorted(pathlib.Path(run_dir, "checkpoints").glob("shard-*.npz"))
    if not paths:
        raise CheckpointError(f"no shard checkpoints under {run_dir}/checkpoints")
    pieces = [load(p) for p in paths]
    total = max(meta["hi"] for _, meta in pieces)
    flat = np.empty(total, dtype=np.float32)
    covered = 0
    for arrays, meta in pieces:
        flat[meta["lo"]:meta["hi"]] = arrays["weights"]
        covered += meta["hi"] - meta["lo"]
    if covered != total:
        raise CheckpointError(f"shard checkpoints under {run_dir} cover {covered} of {total} keys")
    return flat
