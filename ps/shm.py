"""Shared memory between processes on one host: the data plane's arrays without socket copies.

A shard's weights and a worker's outgoing gradients each live in an anonymous memory file
(`memfd_create`). A peer on the same host maps it by `/proc/PID/fd/FD`, so on a local cluster
a pull is one memcpy by the reader and a push is no copy at all: the shard's update rule reads
the worker's gradient where the worker wrote it. The messages themselves (headers, ordering,
exactly-once ids, consistency) still travel over ZeroMQ; only the payload moves out of band.

A reference is `{"pid", "fd", "nonce", "count"}`. The segment begins with a magic word and a
16-byte random nonce, so a reference to a recycled pid or fd number, or to anything that is not
ours, fails to attach rather than being read as weights. Memory files need no cleanup: the
kernel frees one when the last process holding it (its creator, or a mapping peer) exits, so a
`kill -9` leaves nothing behind in /dev/shm. A peer on another host, in another container or
pid namespace, simply cannot open the path, and the caller falls back to the wire.

Reads through shared memory are not snapshots: a worker copying a shard's weights may see an
update that the shard applies meanwhile in some elements and not in others, as in Hogwild!
(Niu et al., 2011) and Project Adam's lock-free shards. Each element is a whole float32 of one
version or a later one, so every consistency bound (a read waits for a minimum version) holds.
"""
from __future__ import annotations

import collections
import mmap
import os
import secrets
import stat
from typing import Any

import numpy as np

MAGIC = b"downpour"
HEADER_BYTES = 64  # magic, nonce, count; keeps the float32 payload 64-byte aligned
NAME_PREFIX = "downpour-"


class SegmentError(OSError):
    """A reference that cannot be mapped here: another host, a dead process, not our segment."""


class Segment:
    """A float32 array in a memory file that other processes on this host can map."""

    def __init__(self, local_fd: int, buf: mmap.mmap, count: int, nonce: bytes, pid: int, fd: int):
        """`pid` and `fd` name the segment in its owner (the reference); `local_fd` is ours."""
        self._local_fd, self._buf, self.count, self.nonce, self.pid, self.fd = local_fd, buf, count, nonce, pid, fd
        self.array = np.frombuffer(buf, np.float32, count, offset=HEADER_BYTES)

    @classmethod
    def create(cls, count: int, name: str) -> Segment:
        """A new zeroed segment of `count` float32 values, owned by this process."""
        fd = os.memfd_create(NAME_PREFIX + name, os.MFD_CLOEXEC)
        try:
            size = HEADER_BYTES + 4 * max(count, 1)
            os.ftruncate(fd, size)
            buf = mmap.mmap(fd, size)
        except OSError:
            os.close(fd)
            raise
        nonce = secrets.token_bytes(16)
        buf[:len(MAGIC) + 16 + 8] = MAGIC + nonce + count.to_bytes(8, "little")
        return cls(fd, buf, count, nonce, os.getpid(), fd)

    @classmethod
    def attach(cls, ref: Any) -> Segment:
        """Map a peer's segment by reference; SegmentError if it is not reachable from here."""
        pid, fd, nonce, count = _checked(ref)
        path = f"/proc/{pid}/fd/{fd}"
        try:
            if not os.readlink(path).startswith("/memfd:" + NAME_PREFIX):
                raise SegmentError(f"{path} is not a downpour memory segment")
            local = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise SegmentError(f"cannot open {path}: {exc.strerror or exc}") from None
        try:
            info = os.fstat(local)
            size = HEADER_BYTES + 4 * max(count, 1)
            if not stat.S_ISREG(info.st_mode) or info.st_size != size:
                raise SegmentError(f"{path} is not a segment of {count} values")
            buf = mmap.mmap(local, size)
        except (OSError, ValueError) as exc:
            os.close(local)
            raise SegmentError(f"cannot map {path}: {exc}") from None
        if buf[:len(MAGIC) + 16] != MAGIC + nonce:
            buf.close()
            os.close(local)
            raise SegmentError(f"{path} holds another segment (the process or descriptor was recycled)")
        return cls(local, buf, count, nonce, pid, fd)

    @property
    def ref(self) -> dict:
        return {"pid": self.pid, "fd": self.fd, "nonce": self.nonce, "count": self.count}

    @property
    def key(self) -> tuple:
        return (self.pid, self.fd, self.nonce)

    def close(self) -> None:
        """Unmap and drop our descriptor; the memory goes once no process holds it."""
        self.array = None  # type: ignore[assignment]
        try:
            self._buf.close()
        except BufferError:  # a view is still exported (a reply in flight): the kernel frees it at exit
            return
        os.close(self._local_fd)


def ref_key(ref: Any) -> tuple:
    pid, fd, nonce, _ = _checked(ref)
    return (pid, fd, nonce)


def _checked(ref: Any) -> tuple[int, int, bytes, int]:
    """The fields of a reference, validated: it may come from a hostile message."""
    if not isinstance(ref, dict):
        raise SegmentError(f"a segment reference is a map, got {type(ref).__name__}")
    pid, fd, nonce, count = (ref.get(k) for k in ("pid", "fd", "nonce", "count"))
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 40 for v in (pid, fd, count)):
        raise SegmentError("a segment reference needs integer pid, fd and count")
    if not (isinstance(nonce, bytes) and len(nonce) == 16):
        raise SegmentError("a segment reference needs a 16-byte nonce")
    return pid, fd, nonce, count


class Attached:
    """Peers' segments this process has mapped, by reference; the least recently used are
    unmapped beyond `limit`, so hostile or departed peers cannot pile up mappings."""

    def __init__(self, limit: int = 64):
        self.limit = limit
        self._maps: collections.OrderedDict[tuple, Segment] = collections.OrderedDict()

    def get(self, ref: Any) -> Segment:
        key = ref_key(ref)
        seg = self._maps.get(key)
        if seg is None:
            seg = self._maps[key] = Segment.attach(ref)
            while len(self._maps) > self.limit:
                self._maps.popitem(last=False)[1].close()
        self._maps.move_to_end(key)
        return seg

    def close(self) -> None:
        for seg in self._maps.values():
            seg.close()
        self._maps.clear()


def offset_in(base: np.ndarray, arr: np.ndarray) -> int | None:
    """Where float32 `arr` starts inside float32 `base` (in elements), or None if it is not a view in it."""
    start = arr.ctypes.data - base.ctypes.data
    if arr.dtype != np.float32 or start % 4 or not 0 <= start // 4 <= base.size - arr.size:
        return None
    return start // 4
