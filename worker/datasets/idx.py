"""The IDX file format of (Fashion-)MNIST, read and written without any third-party package.

Layout: two zero bytes, a type code, the number of dimensions, each dimension as a big-endian
uint32, then the values in C order, big-endian. Every field is checked, so a corrupted or
truncated download fails with its file name instead of producing garbage images.
"""
from __future__ import annotations

import struct

import numpy as np

from downpour.worker.datasets.errors import DatasetError

_DTYPE_OF_CODE = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF_KIND_SIZE = {(dtype.kind, dtype.itemsize): code for code, dtype in _DTYPE_OF_CODE.items()}


def parse_idx(data: bytes, source: str, ndim: int) -> np.ndarray:
    """Decode IDX bytes into an array of `ndim` dimensions; `source` names the file in errors."""
    if len(data) < 4:
        raise DatasetError(f"{source}: {len(data)} bytes is too short for an IDX header")
    if data[:2] != b"\x00\x00" or data[2] not in _DTYPE_OF_CODE:
        raise DatasetError(f"{source}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000TTNN); corrupted file?")
    if data[3] != ndim:
        raise DatasetError(f"{source}: IDX file has {data[3]} dimensions, expected {ndim}")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DatasetError(f"{source}: IDX header is truncated ({len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = _DTYPE_OF_CODE[data[2]]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header_size != expected:
        raise DatasetError(
            f"{source}: IDX header promises shape {shape} ({expected} bytes of values) "
            f"but the file holds {len(data) - header_size}; truncated or corrupted file?"
        )
    return np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape).astype(dtype.newbyteorder("="))


def encode_idx(array: np.ndarray) -> bytes:
    """Encode an array as IDX bytes (uint8, int8, int16, int32, float32 or float64)."""
    code = _CODE_OF_KIND_SIZE.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise ValueError(f"IDX cannot hold dtype {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=_DTYPE_OF_CODE[code]).tobytes()
