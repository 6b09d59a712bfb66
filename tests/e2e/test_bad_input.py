"""A live shard answers every bad message with an ERROR reply and keeps serving."""

import msgpack
import numpy as np
import pytest
import zmq

from downpour.ps import protocol as P
from downpour.ps.wire import decode, encode
from tests.conftest import coordinator_and_shard

pytestmark = pytest.mark.e2e


@pytest.fixture
def live_shard(tmp_path):
    """A coordinator and one shard as real processes (no workers: the job stays in start-up)."""
    with coordinator_and_shard(tmp_path, ["cluster.max_message_mb=0.05", "cluster.startup_timeout=120"]) as rig:
        yield dict(rig, address=rig["shard"])


def ask(shard, frames, req=False):
    sock = shard["ctx"].socket(zmq.REQ if req else zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(shard["address"])
    try:
        sock.send_multipart(frames)
        assert sock.poll(5000), "no reply"
        return decode(sock.recv_multipart())
    finally:
        sock.close()


def pull(shard, **over):
    header = {"op": P.PULL, "seq": 7, "job": shard["job"], "from": "client-0", "clock": 0, "lo": 0,
              "hi": shard["initial"].size}
    header.update(over)
    return header


def assert_still_serves(shard):
    reply = ask(shard, encode(pull(shard)))
    assert reply.op == P.OK and reply.seq == 7
    np.testing.assert_array_equal(reply.arrays[0], shard["initial"])


@pytest.mark.parametrize("frames, reason", [
    ([b"\x00garbage\xff\xfe"], "malformed header"),
    ([msgpack.packb({"v": P.VERSION, "op": "explode", "seq": 1})], "unknown operation"),
    ([msgpack.packb({"v": P.VERSION, "op": P.PUSH, "seq": 1, "arrays": [["float32", [100]]]}), b"\0" * 40], "'job' missing"),
])
def test_garbage_and_unknown_ops_get_an_error_reply_then_a_valid_pull_works(live_shard, frames, reason):
    reply = ask(live_shard, frames)
    assert reply.op == P.ERROR and reason in reply.header["reason"]
    assert_still_serves(live_shard)


def test_a_req_socket_sending_garbage_gets_its_error_too(live_shard):
    reply = ask(live_shard, [b"\x93not a map"], req=True)
    assert reply.op == P.ERROR
    assert_still_serves(live_shard)


def test_a_truncated_frame_gets_an_error_reply(live_shard):
    n = live_shard["initial"].size
    header, body = encode(dict(pull(live_shard), op=P.PUSH, **{"from": "worker-0"}), [np.zeros(n, np.float32)])
    reply = ask(live_shard, [bytes(header), bytes(body)[:-3]])
    assert reply.op == P.ERROR and "frame has" in reply.header["reason"]
    assert_still_serves(live_shard)


def test_a_gradient_of_the_wrong_shape_is_refused_and_nothing_is_applied(live_shard):
    header = dict(pull(live_shard), op=P.PUSH, **{"from": "worker-0"})
    reply = ask(live_shard, encode(header, [np.ones(5, np.float32)]))
    assert reply.op == P.ERROR and "needs one float32 array of shape" in reply.header["reason"]
    assert_still_serves(live_shard)


def test_a_range_outside_the_shard_and_a_foreign_job_are_refused(live_shard):
    reply = ask(live_shard, encode(pull(live_shard, hi=10**6)))
    assert reply.op == P.ERROR and "outside this shard's range" in reply.header["reason"]
    reply = ask(live_shard, encode(pull(live_shard, job="someone-else")))
    assert reply.op == P.ERROR and "not this shard's job" in reply.header["reason"]
    assert_still_serves(live_shard)


def test_a_message_over_the_size_limit_gets_an_error_reply(live_shard):
    big = np.zeros(20_000, np.float32)   # 80 kB against a 0.05 MB limit
    reply = ask(live_shard, encode(dict(pull(live_shard), op=P.PUSH, hi=20_000), [big]))
    assert reply.op == P.ERROR and "over the size limit" in reply.header["reason"]
    assert_still_serves(live_shard)


def test_a_push_through_shared_memory_that_cannot_be_mapped_is_refused_with_a_way_back_to_the_wire(live_shard):
    ref = {"pid": 2 ** 31 - 5, "fd": 3, "nonce": bytes(16), "count": 10, "offset": 0}
    header = dict(pull(live_shard), op=P.PUSH, grad_at=ref, **{"from": "worker-0"})
    reply = ask(live_shard, encode(header))
    assert reply.op == P.ERROR and "cannot map the pushed gradient" in reply.header["reason"]
    assert reply.header["local"] is False and reply.header["retry"] is True
    for bad in ("a string", {"pid": 1}, dict(ref, offset=-1), dict(ref, offset=True)):
        reply = ask(live_shard, encode(dict(header, grad_at=bad)))
        assert reply.op == P.ERROR
    assert_still_serves(live_shard)


def test_a_shared_memory_push_that_overruns_its_segment_is_refused_and_nothing_is_applied(live_shard):
    from downpour.ps import shm
    seg = shm.Segment.create(live_shard["initial"].size, "overrun")
    try:
        seg.array[:] = 1.0
        header = dict(pull(live_shard), op=P.PUSH, grad_at={**seg.ref, "offset": 1}, **{"from": "worker-0"})
        reply = ask(live_shard, encode(header))
        assert reply.op == P.ERROR and "overruns" in reply.header["reason"]
    finally:
        seg.close()
    assert_still_serves(live_shard)


def test_a_pull_reply_names_the_shards_segment_and_a_shared_memory_pull_carries_no_array(live_shard):
    from downpour.ps import shm
    plain = ask(live_shard, encode(pull(live_shard)))
    assert plain.arrays and plain.header["offset"] == 0
    seg = shm.Segment.attach(plain.header["segment"])
    try:
        np.testing.assert_array_equal(seg.array, live_shard["initial"])
        shared = ask(live_shard, encode(pull(live_shard, shm=True)))
        assert shared.op == P.OK and shared.arrays == [] and shared.header["segment"] == plain.header["segment"]
    finally:
        seg.close()
