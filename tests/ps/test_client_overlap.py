"""A round trip split in two: `start` sends and returns, `finish` waits and fills the weights.

The shards here are plain ROUTER sockets driven by the test, so it decides when each replies.
"""

import threading
import time

import numpy as np
import pytest
import zmq

from downpour.ps import protocol as P
from downpour.ps.client.data import ShardClient
from downpour.ps.layout import make_layout
from downpour.ps.wire import recv, reply

SIZE = 1000


@pytest.fixture
def two_shards():
    ctx = zmq.Context()
    socks = [ctx.socket(zmq.ROUTER) for _ in range(2)]
    addresses = []
    for s in socks:
        s.setsockopt(zmq.LINGER, 0)
        port = s.bind_to_random_port("tcp://127.0.0.1")
        addresses.append(f"tcp://127.0.0.1:{port}")
    layout = make_layout([("w", (SIZE,))], 2)
    client = ShardClient(ctx, layout, addresses, "job", "worker-0", timeout=10.0)
    yield ctx, socks, layout, client
    client.close()
    for s in socks:
        s.close()
    ctx.term()


def serve_one(sock, weights):
    """Receive one request and answer it with `weights` (the slice the request asked for)."""
    assert sock.poll(5000), "the request never arrived"
    msg = recv(sock, router=True)
    lo, hi = msg.header["lo"], msg.header["hi"]
    pushed = msg.arrays[0].copy() if msg.arrays else None
    reply(sock, msg, arrays=(weights[lo:hi],), version=1, clock=msg.header["clock"] + 1)
    return msg.header, pushed


def test_start_sends_to_every_shard_and_returns_before_any_reply(two_shards):
    _, socks, layout, client = two_shards
    grad = np.arange(SIZE, dtype=np.float32)
    out = np.zeros(SIZE, np.float32)
    trip = client.start(P.PUSH_PULL, 3, grad, out)
    assert set(trip.pending) == {0, 1}
    weights = np.full(SIZE, 7.0, np.float32)
    for shard, sock in enumerate(socks):
        header, pushed = serve_one(sock, weights)
        lo, hi = layout.ranges[shard]
        assert header["op"] == P.PUSH_PULL and header["clock"] == 3
        np.testing.assert_array_equal(pushed, grad[lo:hi])
    assert not out.any(), "the weights are written by finish, never behind the caller's back"
    client.finish(trip)
    np.testing.assert_array_equal(out, weights)
    assert client.resume_clock(bsp=False) == client.resume_clock(bsp=True) == 4


def test_finish_counts_the_time_it_was_blocked_and_start_does_not(two_shards):
    _, socks, _, client = two_shards
    out = np.zeros(SIZE, np.float32)
    trip = client.start(P.PULL, 0, None, out)
    assert client.waited == 0.0

    def late_shards():
        time.sleep(0.3)
        for sock in socks:
            serve_one(sock, np.ones(SIZE, np.float32))

    server = threading.Thread(target=late_shards)
    server.start()
    client.finish(trip)
    server.join()
    assert 0.25 <= client.waited < 5
    assert out.sum() == SIZE


def test_the_blocking_calls_are_start_then_finish(two_shards):
    _, socks, _, client = two_shards
    weights = np.full(SIZE, 2.0, np.float32)
    server = threading.Thread(target=lambda: [serve_one(s, weights) for s in socks])
    server.start()
    out = np.zeros(SIZE, np.float32)
    client.pull(0, out)
    server.join()
    np.testing.assert_array_equal(out, weights)


def test_a_round_trip_that_waits_in_vain_asks_give_up_and_ends_when_it_raises(two_shards):
    ctx, _, layout, silent = two_shards

    class JobOver(Exception):
        pass

    asked = []

    def give_up():
        asked.append(time.monotonic())
        if len(asked) == 2:
            raise JobOver("the coordinator says the job ended")

    client = ShardClient(ctx, layout, silent.addresses, "job", "worker-0", timeout=60.0, give_up=give_up)
    began = time.monotonic()
    with pytest.raises(JobOver):
        client.pull(0, np.zeros(SIZE, np.float32))    # the shards never answer
    client.close()
    assert len(asked) == 2 and time.monotonic() - began < 10.0    # not the 60 s timeout


def test_a_round_trip_by_spans_sends_each_shard_its_part_and_writes_only_those_keys(two_shards):
    """Model-wide spans are cut at the shard boundary (500): a push carries the values of its
    part only, a read gets them back packed, and every other key of `out` keeps its value."""
    from downpour.ps import spans
    _, socks, layout, client = two_shards
    grad = np.arange(SIZE, dtype=np.float32)
    pushed = (np.array([10, 490, 900]), np.array([20, 510, 905]))     # [490, 510) straddles shards
    read = (np.array([0, 495]), np.array([5, 600]))
    out = np.full(SIZE, -1.0, np.float32)
    trip = client.start(P.PUSH_PULL, 0, grad, out, grad_spans=pushed, read_spans=read)
    weights = np.full(SIZE, 7.0, np.float32)
    for shard, sock in enumerate(socks):
        assert sock.poll(5000)
        msg = recv(sock, router=True)
        lo, hi = layout.ranges[shard]
        mine, wanted = spans.clip(pushed, lo, hi), spans.clip(read, lo, hi)
        np.testing.assert_array_equal(np.stack(spans.unpack(msg.header["grad_spans"], lo, hi), 1), np.stack(mine, 1))
        np.testing.assert_array_equal(msg.arrays[0], grad[spans.positions(*mine)])
        assert spans.unpack(msg.header["read_spans"], lo, hi)[0].tolist() == wanted[0].tolist()
        reply(sock, msg, arrays=(spans.gather(weights, 0, wanted),), version=1, clock=1)
    client.finish(trip)
    at = spans.positions(*read)
    np.testing.assert_array_equal(out[at], 7.0)
    untouched = np.ones(SIZE, bool)
    untouched[at] = False
    assert np.all(out[untouched] == -1.0)
    named = sum(len(spans.pack(spans.clip(keys, lo, hi))) for keys in (pushed, read) for lo, hi in layout.ranges)
    assert client.bytes_sent == 4 * spans.size(pushed) + named           # the values, and the keys named
    assert client.bytes_received == 4 * spans.size(read)
