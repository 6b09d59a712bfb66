"""The wire: msgpack header + raw frames, decoded and validated before anyone acts on it."""
import msgpack
import numpy as np
import pytest
import zmq

from downpour.ps import protocol as P
from downpour.ps.wire import SharedFrame, WireError, decode, encode


def pull_header(**over):
    h = {"op": P.PULL, "seq": 1, "job": "j", "from": "worker-0", "clock": 0, "lo": 0, "hi": 4}
    h.update(over)
    return h


def frames(header, arrays=()):
    return [bytes(f) for f in encode(header, arrays)]


def raw_header(header):
    return msgpack.packb(dict(header, v=P.VERSION, arrays=[]))


def test_round_trip_keeps_header_and_arrays():
    grad = np.arange(4, dtype=np.float32)
    msg = decode(frames(pull_header(op=P.PUSH), [grad]))
    assert msg.op == P.PUSH and msg.seq == 1 and msg.header["lo"] == 0
    np.testing.assert_array_equal(msg.arrays[0], grad)
    assert msg.arrays[0].dtype == np.float32


def test_arrays_are_sent_and_received_without_copies():
    grad = np.arange(1 << 16, dtype=np.float32)
    out = encode(pull_header(op=P.PUSH, hi=1 << 16), [grad])
    assert np.shares_memory(np.frombuffer(out[1], np.float32), grad)   # sender side: a view
    frame = zmq.Frame(bytes(out[1]))
    msg = decode([out[0], frame])
    assert np.shares_memory(msg.arrays[0], np.frombuffer(frame.buffer, np.uint8))  # receiver side


@pytest.mark.parametrize("bad_frames, reason", [
    ([], "empty message"),
    ([b"\xc1garbage\xff"], "not msgpack"),
    ([msgpack.packb([1, 2, 3])], "expected a map"),
    ([msgpack.packb({"v": 99, "op": P.PULL})], "protocol version"),
    ([raw_header({"op": "rm -rf", "seq": 1})], "unknown operation"),
    ([raw_header({"op": P.PULL, "seq": -1})], "'seq'"),
    ([raw_header({"op": P.PULL, "seq": 1, "job": "j", "from": "w", "clock": 0, "lo": 0})], "'hi' missing"),
    ([raw_header({"op": P.PULL, "seq": 1, "job": "j", "from": "w", "clock": "0", "lo": 0, "hi": 1})], "'clock'"),
])
def test_malformed_headers_are_refused_with_a_reason(bad_frames, reason):
    with pytest.raises(WireError, match=reason):
        decode(bad_frames)


def test_a_truncated_array_frame_is_refused():
    f = frames(pull_header(op=P.PUSH), [np.zeros(4, np.float32)])
    with pytest.raises(WireError, match="needs 16 bytes, frame has 12"):
        decode([f[0], f[1][:12]])


def test_descriptors_must_match_frames():
    f = frames(pull_header(op=P.PUSH), [np.zeros(4, np.float32)])
    with pytest.raises(WireError, match="describes 1 arrays but 0 frames"):
        decode(f[:1])


def test_disallowed_dtypes_and_shapes_are_refused():
    h = dict(pull_header(op=P.PUSH), v=P.VERSION, arrays=[["object", [4]]])
    with pytest.raises(WireError, match="dtype 'object' not allowed"):
        decode([msgpack.packb(h), b"\0" * 32])
    h["arrays"] = [["float32", [-4]]]
    with pytest.raises(WireError, match="not a list of non-negative ints"):
        decode([msgpack.packb(h), b""])


def test_a_message_over_the_size_limit_is_refused():
    f = frames(pull_header(op=P.PUSH, hi=1024), [np.zeros(1024, np.float32)])
    with pytest.raises(WireError, match="over the size limit of 1000 bytes"):
        decode(f, max_bytes=1000)
    assert decode(f, max_bytes=1 << 20).arrays[0].shape == (1024,)


def test_too_many_frames_are_refused():
    with pytest.raises(WireError, match="too many frames"):
        decode([raw_header(pull_header())] + [b""] * (P.MAX_FRAMES + 1))


def test_a_shared_frame_goes_out_as_the_same_zeromq_frame_in_every_message_and_decodes_like_its_array():
    weights = np.arange(70_000, dtype=np.float32)
    shared = SharedFrame(weights[10:])
    first, second = encode({"op": P.OK, "seq": 1}, (shared,)), encode({"op": P.OK, "seq": 2}, (shared,))
    assert first[1] is second[1] is shared.frame          # libzmq counts references, nothing is copied
    msg = decode([first[0], shared.frame.bytes])
    np.testing.assert_array_equal(msg.arrays[0], weights[10:])
    assert msg.header["arrays"] == [["float32", [69_990]]]


def test_every_operation_says_who_may_send_it():
    assert set(P.SENDERS) == P.CONTROL_OPS | P.DATA_OPS | P.REPLY_OPS


@pytest.mark.parametrize("op, sender", [
    (P.PUSH, "shard-0"), (P.PUSH_PULL, "evaluator-0"), (P.PUSH, "client-0"),
    (P.REPLICATE, "worker-1"), (P.DONE, "shard-1"), (P.RESULT, "worker-0"), (P.HEARTBEAT, "launcher"),
])
def test_an_operation_from_a_role_that_may_not_send_it_is_refused_naming_both(op, sender):
    header = pull_header(op=op, **{"from": sender, "range": 0, "worker": 0, "epoch": 1, "gen": 1, "body": {}})
    with pytest.raises(WireError, match=f"'{sender}' may not send '{op}'"):
        decode(frames(header))


def test_anybody_may_read_and_ask_for_the_status():
    assert decode(frames(pull_header(**{"from": "client-0"}))).op == P.PULL
    assert decode(frames({"op": P.STATUS, "seq": 1})).op == P.STATUS


@pytest.mark.parametrize("shape", [[2 ** 62, 0], [0, 2 ** 40], [-1]])
def test_an_array_of_no_bytes_but_an_impossible_shape_is_refused(shape):
    header = msgpack.packb(dict(pull_header(op=P.PUSH), v=P.VERSION, arrays=[["float32", shape]]))
    with pytest.raises(WireError, match="is not a list of non-negative ints"):
        decode([header, b""])
