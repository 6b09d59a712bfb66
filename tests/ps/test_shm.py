"""Shared-memory segments: what one process writes another maps and reads; anything that is not
a live downpour segment of the size named fails to attach, and nothing outlives its holders."""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from downpour.ps import shm


@pytest.fixture
def segment():
    seg = shm.Segment.create(1000, "test")
    yield seg
    seg.close()


def in_another_process(code: str, **values) -> str:
    """Run `code` in a fresh interpreter (values bound as globals); return what it prints."""
    prelude = "".join(f"{k} = {v!r}\n" for k, v in values.items())
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, cwd=pathlib.Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_segment_starts_zeroed_and_another_process_sees_what_we_write(segment):
    assert segment.array.shape == (1000,) and segment.array.dtype == np.float32
    assert not segment.array.any()
    segment.array[:] = np.arange(1000, dtype=np.float32)
    total = in_another_process("""
        from downpour.ps import shm
        seg = shm.Segment.attach(ref)
        print(float(seg.array.sum()))
        seg.array[0] = -1.0   # and writes travel back
    """, ref=segment.ref)
    assert float(total) == sum(range(1000))
    assert segment.array[0] == -1.0


def test_the_payload_is_cache_line_aligned(segment):
    assert segment.array.ctypes.data % 64 == 0


def test_attaching_in_this_process_maps_the_same_memory(segment):
    peer = shm.Segment.attach(segment.ref)
    try:
        segment.array[7] = 3.5
        assert peer.array[7] == 3.5
        assert peer.key == segment.key
    finally:
        peer.close()


@pytest.mark.parametrize("change, reason", [
    (dict(nonce=b"\x00" * 16), "another segment"),
    (dict(count=999), "not a segment of 999 values"),
    (dict(fd=0), "not a downpour memory segment"),
    (dict(pid=2 ** 31 - 5), "cannot open"),
])
def test_a_reference_to_anything_else_fails_to_attach(segment, change, reason):
    with pytest.raises(shm.SegmentError, match=reason):
        shm.Segment.attach({**segment.ref, **change})


@pytest.mark.parametrize("ref", [None, [], {"pid": "1", "fd": 3, "nonce": b"x" * 16, "count": 1},
                                 {"pid": 1, "fd": 3, "nonce": "not bytes", "count": 1},
                                 {"pid": 1, "fd": True, "nonce": b"x" * 16, "count": 1},
                                 {"pid": -1, "fd": 3, "nonce": b"x" * 16, "count": 1}])
def test_a_malformed_reference_is_refused_before_anything_is_opened(ref):
    with pytest.raises(shm.SegmentError):
        shm.Segment.attach(ref)


def test_a_regular_file_opened_by_another_process_is_not_mistaken_for_a_segment(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"downpour" + bytes(10_000))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(shm.SegmentError, match="not a downpour memory segment"):
            shm.Segment.attach({"pid": os.getpid(), "fd": fd, "nonce": bytes(16), "count": 10})
    finally:
        os.close(fd)


def test_the_attached_cache_maps_each_segment_once_and_unmaps_the_least_recent_beyond_its_limit():
    segs = [shm.Segment.create(10, f"lru{i}") for i in range(3)]
    cache = shm.Attached(limit=2)
    try:
        first = cache.get(segs[0].ref)
        assert cache.get(segs[0].ref) is first
        cache.get(segs[1].ref)
        cache.get(segs[2].ref)         # evicts segs[0]'s mapping
        assert first.array is None
        assert cache.get(segs[0].ref) is not first
    finally:
        cache.close()
        for seg in segs:
            seg.close()


def test_a_killed_owner_leaves_nothing_behind_in_dev_shm_and_its_reference_goes_dead():
    before = set(os.listdir("/dev/shm"))
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from downpour.ps import shm
        seg = shm.Segment.create(1 << 20, "doomed")
        seg.array[:] = 2.0
        print(seg.ref["pid"], seg.ref["fd"], seg.ref["nonce"].hex(), flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, cwd=pathlib.Path(__file__).parents[2])
    try:
        pid, fd, nonce = child.stdout.readline().split()
        ref = {"pid": int(pid), "fd": int(fd), "nonce": bytes.fromhex(nonce), "count": 1 << 20}
        peer = shm.Segment.attach(ref)
        assert peer.array[12345] == 2.0
        assert set(os.listdir("/dev/shm")) == before
    finally:
        child.kill()
        child.wait()
    assert peer.array[12345] == 2.0    # our mapping keeps the memory until we let go
    peer.close()
    with pytest.raises(shm.SegmentError, match="cannot open"):
        shm.Segment.attach(ref)
    assert set(os.listdir("/dev/shm")) == before
