"""The control plane's heartbeat, one mechanism for every role: it beats, says when the
coordinator is gone, can be silenced on purpose, and hands replies to a polling loop."""
import threading

import zmq

from downpour.ps import protocol as P
from downpour.ps.control import LOST_AFTER, Heartbeat, Mailbox
from downpour.ps.wire import recv, reply


def silent_coordinator(ctx):
    sock = ctx.socket(zmq.ROUTER)
    sock.linger = 0
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return sock, f"tcp://127.0.0.1:{port}"


def test_a_heartbeat_nobody_answers_says_unreachable_then_that_the_coordinator_is_lost():
    ctx = zmq.Context()
    sock, address = silent_coordinator(ctx)
    replies = []
    lost = threading.Event()

    def on_reply(body):
        replies.append(body)
        if body.get("lost"):
            lost.set()

    beat = Heartbeat(ctx, address, "job", "worker-0", 0.01, dict, on_reply, timeout=0.05)
    try:
        beat.start()
        assert lost.wait(30)
    finally:
        beat.stop()
        beat.join()
        sock.close()
        ctx.term()
    assert replies[0]["state"] == "unreachable"
    assert replies[-1]["state"] == P.FAILED and address in replies[-1]["reason"]
    assert beat.lost_after == LOST_AFTER * 0.05


def test_a_held_heartbeat_sends_nothing_until_the_hold_ends():
    ctx = zmq.Context()
    sock, address = silent_coordinator(ctx)
    beat = Heartbeat(ctx, address, "job", "shard-0", 0.01, dict, lambda body: None, timeout=1.0)
    try:
        beat.hold(3600)
        beat.start()
        assert not sock.poll(300)                             # stalled: not a word
        beat.silent_until = 0.0
        assert sock.poll(10_000)
        msg = recv(sock, router=True)
        assert msg.op == P.HEARTBEAT and msg.header["from"] == "shard-0"
        reply(sock, msg, body={"state": P.RUNNING})
    finally:
        beat.stop()
        beat.join()
        sock.close()
        ctx.term()


def test_a_mailbox_wakes_a_poller_and_hands_over_everything_in_order():
    box = Mailbox()
    poller = zmq.Poller()
    poller.register(box.fd, zmq.POLLIN)
    try:
        assert not poller.poll(0)
        sender = threading.Thread(target=lambda: [box.put({"n": i}) for i in range(1000)])
        sender.start()
        assert poller.poll(10_000)
        got = []
        while len(got) < 1000:
            poller.poll(10_000)
            got += box.take()
        sender.join()
        assert [b["n"] for b in got] == list(range(1000))
        assert box.take() == []
    finally:
        box.close()
