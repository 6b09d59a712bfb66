"""The client learns which shards share its host: after a reply names a segment it can map, it
reads weights from there and points pushes at its own gradient buffer; a shard that cannot map
that buffer sends it back to the wire, for good.

The shards here are plain ROUTER sockets driven by the test, with segments of their own."""

import threading

import numpy as np
import pytest
import zmq

from downpour.ps import protocol as P
from downpour.ps import shm
from downpour.ps.client.data import ShardClient
from downpour.ps.layout import make_layout
from downpour.ps.wire import recv, reply, reply_error

SIZE = 1000


@pytest.fixture
def shard():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    address = f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}"
    layout = make_layout([("w", (SIZE,))], 1)
    seg = shm.Segment.create(SIZE, "fake-shard")
    seg.array[:] = 5.0
    client = ShardClient(ctx, layout, [address], "job", "worker-0", timeout=10.0)
    yield sock, seg, client
    client.close()
    seg.close()
    sock.close()
    ctx.term()


def answer_pull(sock, msg, seg):
    """Reply as a shard with a segment does: by reference when asked to, else with the array."""
    if msg.header.get("shm"):
        reply(sock, msg, version=1, clock=0, segment=seg.ref, offset=0)
    else:
        reply(sock, msg, arrays=(seg.array.copy(),), version=1, clock=0, segment=seg.ref, offset=0)


def run(client, sock, seg, op, grad, out, serve):
    """One round trip of `op`, with `serve` answering every request the shard gets meanwhile
    (resent ones included); returns those requests."""
    msgs, done = [], threading.Event()

    def shard_loop():
        while not done.is_set():
            if sock.poll(20):
                msgs.append(recv(sock, router=True))
                serve(msgs[-1])
    thread = threading.Thread(target=shard_loop)
    thread.start()
    try:
        client.finish(client.start(op, 0, grad, out))
    finally:
        done.set()
        thread.join()
    return msgs


def test_after_one_read_over_the_wire_reads_and_pushes_go_through_shared_memory(shard):
    sock, seg, client = shard
    out = np.zeros(SIZE, np.float32)
    first = run(client, sock, seg, P.PULL, None, out, lambda m: answer_pull(sock, m, seg))
    assert "shm" not in first[0].header and client.bytes_received == 4 * SIZE
    np.testing.assert_array_equal(out, 5.0)

    grad = client.gradient_buffers(2)[1]
    grad[:] = np.arange(SIZE)
    seg.array[:] = 6.0
    seen = {}

    def serve(msg):
        seen["grad"] = shm.Segment.attach(msg.header["grad_at"])
        answer_pull(sock, msg, seg)
    second = run(client, sock, seg, P.PUSH_PULL, grad, out, serve)
    header = second[0].header
    assert header["shm"] is True and second[0].arrays == []
    at = header["grad_at"]["offset"]
    np.testing.assert_array_equal(seen["grad"].array[at:at + SIZE], np.arange(SIZE))
    seen["grad"].close()
    np.testing.assert_array_equal(out, 6.0)
    assert client.bytes_sent == 0 and client.bytes_received == 4 * SIZE


def test_a_shard_that_cannot_map_our_buffer_gets_the_gradient_over_the_wire_from_then_on(shard):
    sock, seg, client = shard
    out = np.zeros(SIZE, np.float32)
    run(client, sock, seg, P.PULL, None, out, lambda m: answer_pull(sock, m, seg))
    grad = client.gradient_buffers(1)[0]
    grad[:] = 2.0
    refused = []

    def serve(msg):
        if "grad_at" in msg.header:
            refused.append(msg)
            reply_error(sock, msg.envelope, msg.seq, "cannot map the pushed gradient", retry=True, local=False)
        else:
            assert msg.arrays and np.all(msg.arrays[0] == 2.0)
            reply(sock, msg, version=2, clock=1)
    msgs = run(client, sock, seg, P.PUSH, grad, None, serve)
    assert len(refused) == 1 and len(msgs) == 2
    # The next pull's reply names the segment again, but this shard stays on the wire.
    run(client, sock, seg, P.PULL, None, out, lambda m: answer_pull(sock, m, seg))
    msgs = run(client, sock, seg, P.PUSH, grad, None, lambda m: reply(sock, m, version=3, clock=2))
    assert "grad_at" not in msgs[0].header and msgs[0].arrays


def test_a_reply_by_reference_to_memory_we_cannot_map_is_asked_again_over_the_wire(shard):
    sock, seg, client = shard
    out = np.zeros(SIZE, np.float32)
    run(client, sock, seg, P.PULL, None, out, lambda m: answer_pull(sock, m, seg))
    elsewhere = dict(seg.ref, nonce=bytes(16))    # the shard moved where we cannot follow

    def serve(msg):
        if msg.header.get("shm"):
            reply(sock, msg, version=1, clock=0, segment=elsewhere, offset=0)
        else:
            reply(sock, msg, arrays=(np.full(SIZE, 9.0, np.float32),), version=1, clock=0, segment=elsewhere, offset=0)
    msgs = run(client, sock, seg, P.PULL, None, out, serve)
    assert [m.header.get("shm", False) for m in msgs] == [True, False]
    np.testing.assert_array_equal(out, 9.0)


class RecordingSink:
    """A WeightSink that records what it was handed and whether it may keep it."""

    def __init__(self):
        self.received = []

    def receive(self, lo, hi, weights, keep=False):
        self.received.append((lo, hi, np.array(weights), keep, weights))


def test_a_sink_may_keep_a_frame_off_the_wire_but_must_copy_out_of_shared_memory(shard):
    sock, seg, client = shard
    sink = RecordingSink()
    run(client, sock, seg, P.PULL, None, sink, lambda m: answer_pull(sock, m, seg))
    lo, hi, values, keep, weights = sink.received[-1]
    assert (lo, hi, keep) == (0, SIZE, True) and not np.shares_memory(weights, seg.array)
    np.testing.assert_array_equal(values, 5.0)

    seg.array[:] = 7.0
    run(client, sock, seg, P.PULL, None, sink, lambda m: answer_pull(sock, m, seg))
    lo, hi, values, keep, weights = sink.received[-1]
    assert (lo, hi, keep) == (0, SIZE, False)  # the shard keeps changing that memory: copy it
    np.testing.assert_array_equal(values, 7.0)
