"""Exported models: the trained weights by PyTorch parameter name, as `.npz` or `.safetensors`.

The names are `state_dict()` names (`0.weight`, `rnn.weight_ih_l0`, ...), so a PyTorch user
loads them into the equivalent `torch.nn` module with their own tools. safetensors is written
by hand (8-byte little-endian header length, a JSON header, the raw bytes): no dependency.
"""
from __future__ import annotations

import json
import os
import pathlib
import struct

import numpy as np

from .checkpoint import atomic_write
from .layout import Layout

FORMATS = ("npz", "safetensors")
_ST_DTYPES = {"float32": "F32", "float16": "F16", "float64": "F64", "int64": "I64", "int32": "I32"}


def unflatten(flat: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    """Name every parameter's slice of the flat key space, in the layout's order."""
    return {p.name: flat[off:off + p.size].reshape(p.shape)
            for p, off in zip(layout.params, layout.offsets)}


def save(path: str | os.PathLike, named: dict[str, np.ndarray], fmt: str = "npz") -> pathlib.Path:
    """Write `named` arrays to `path` in `fmt`, atomically."""
    path = pathlib.Path(path)
    if fmt == "npz":
        atomic_write(path, lambda f: np.savez(f, **named))
    elif fmt == "safetensors":
        atomic_write(path, lambda f: f.write(safetensors_bytes(named)))
    else:
        raise ValueError(f"unknown export format {fmt!r}: expected one of {FORMATS}")
    return path


def safetensors_bytes(named: dict[str, np.ndarray]) -> bytes:
    header: dict[str, dict] = {"__metadata__": {"format": "pt", "producer": "downpour"}}
    blobs, offset = [], 0
    for name, array in named.items():
        array = np.ascontiguousarray(array)
        if array.dtype.name not in _ST_DTYPES:
            raise ValueError(f"{name}: dtype {array.dtype} cannot go into safetensors")
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _ST_DTYPES[array.dtype.name], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format aligns the data to 8 bytes
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an export back (either format)."""
    path = pathlib.Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    inverse = {v: k for k, v in _ST_DTYPES.items()}
    base = 8 + n
    return {name: np.frombuffer(raw[base + a:base + b], dtype=np.dtype(inverse[h["dtype"]]).newbyteorder("<"))
            .astype(inverse[h["dtype"]]).reshape(h["shape"])
            for name, h in header.items() for a, b in [h["data_offsets"]]}
