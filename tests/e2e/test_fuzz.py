"""A live shard and a live coordinator survive 100 000 hostile messages, answer each one
well-formed, keep their memory, and afterwards still serve the job correctly.

CI sends 100 000; the long run sends a million (half to each), with the memory of both
processes measured before and after:

    DOWNPOUR_FUZZ_MESSAGES=1000000 python -m pytest -s tests/e2e/test_fuzz.py -k hostile

The job stays in start-up (one shard, no workers, no evaluator), as in test_bad_input.py. The
fuzzer may do anything a stranger on the network could do, except what a legitimate peer may
do with legitimate effect, which would end the experiment rather than test it: its valid
pushes carry zero gradients (so the weights must come back exactly as they started), it never
sends a STOP with the job's id, and it never registers the evaluator (which would let the job
start, and then fail when its fuzzed workers fall silent). Everything else is fair game,
including RESULT, DONE, REPORT and HEARTBEAT in the shard's name, and floods of registrations.
Run with `-s` (or look at the test's captured output with -rA) for the figures.
"""
import collections
import os
import pathlib
import subprocess
import time

import msgpack
import numpy as np
import pytest
import zmq

from downpour.ps import protocol as P
from downpour.ps.compression import Compressor
from downpour.ps.wire import decode, encode
from tests.conftest import coordinator_and_shard
from tests.e2e.wire_mutator import Frames, Mutator, template_frames

pytestmark = pytest.mark.e2e

TOTAL = int(os.environ.get("DOWNPOUR_FUZZ_MESSAGES", 100_000))
MESSAGES = {"shard": TOTAL // 2, "coordinator": TOTAL - TOTAL // 2}
SOCKETS = 4            # DEALER sockets per target, each its own peer to the ROUTER
IN_FLIGHT = 16         # unanswered messages per socket at most
STALL_SECONDS = 15     # no reply for this long from a live process counts as a hang
RSS_GROWTH_MB = 50
MAX_MESSAGE_MB = 0.05  # the job's size limit: the mutator's largest frames go over it


def rss_mb(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def tail(path: pathlib.Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@pytest.fixture
def live_job(tmp_path):
    """A coordinator and one shard as real processes, each logging to a file of its own."""
    overrides = [f"cluster.max_message_mb={MAX_MESSAGE_MB}", "cluster.startup_timeout=600"]
    with coordinator_and_shard(tmp_path, overrides) as rig:
        yield rig


# ---- what the fuzzer sends ---------------------------------------------------------------------

def shard_templates(job: str, n: int) -> list:
    zeros = np.zeros(n, np.float32)
    data = {"job": job, "from": "worker-0", "clock": 0, "lo": 0, "hi": n, "seq": 1}
    return [({**data, "op": P.PULL}, []),
            ({**data, "op": P.PULL, "from": "client-0", "lo": 10, "hi": 20}, []),
            ({**data, "op": P.PUSH, "clock": 3, "read_version": 0}, [zeros]),
            ({**data, "op": P.PUSH_PULL, "from": "worker-1", "clock": 1}, [zeros]),
            ({**data, "op": P.PUSH, "lo": 100, "hi": 110}, [zeros[:10]]),
            ({**data, "op": P.PUSH_PULL, "clock": 2, "epoch": 1}, [zeros]),      # fenced by the range's epoch
            ({**data, "op": P.REPLICATE, "from": "shard-1", "range": 0, "epoch": 1, "gen": 1, "worker": 0},
             [zeros]),                                                            # as if from a primary
            ({**data, "op": P.STATE, "from": "shard-1", "range": 0, "epoch": 1, "gen": 1, "part": 0,
              "parts": 1, "name": "weights", "body": {"lo": 0, "hi": n}}, [zeros])] + [
            ({**data, "op": P.PUSH, "clock": 4, **fields}, list(frames))   # compressed pushes
            for fields, frames in (Compressor({"codec": codec}, [(0, n)]).encode(0, zeros + 0.01)
                                   for codec in ("fp16", "topk", "onebit", "twobit", "sparse"))]


def coordinator_templates(job: str) -> list:
    node = {"job": job, "from": "shard-0", "seq": 1}
    stats = {"rank": 0, "updates": 0, "pushes": 0, "pulls": 0, "errors": 0, "clock": 0, "parked": 0,
             "read_staleness": {"0": 1}, "push_staleness": {}}
    return [({"op": P.STATUS, "seq": 1}, []),
            ({**node, "op": P.HEARTBEAT, "body": stats}, []),
            ({**node, "op": P.REPORT, "body": {"kind": "train", "loss": 0.5, "step": 10, "clock": 10}}, []),
            ({"op": P.REGISTER, "seq": 1, "job": "", "from": P.WORKER, "role": P.WORKER,
              "body": {"address": "tcp://127.0.0.1:1"}}, []),
            ({"op": P.REGISTER, "seq": 1, "job": "", "from": P.SHARD, "role": P.SHARD,
              "body": {"rank": 0, "address": "tcp://127.0.0.1:2"}}, []),
            ({"op": P.STOP, "seq": 1, "job": "another-job", "body": {"reason": "fuzz"}}, [])]


def as_routed(frames: Frames):
    """The message as the server will decode it (a ROUTER drops a leading empty delimiter), or None.
    Any failure to decode counts as None here: whether the server survives it is what is tested."""
    try:
        return decode(frames[1:] if frames and frames[0] == b"" else frames)
    except Exception:  # noqa: BLE001 - WireError, or a bug in decode that the live server will meet too
        return None


def keep_shard_weights(job: str):
    def accept(frames: Frames) -> Frames:
        msg = as_routed(frames)
        if msg is not None and msg.op in (P.PUSH, P.PUSH_PULL) and msg.header.get("job") == job:
            start = len(frames) - len(msg.arrays)
            header = frames[start - 1]
            if "scale" in msg.header:  # onebit: zero bits decode to -scale, so the scale goes too
                header = msgpack.packb(dict(msg.header, scale=0.0), use_bin_type=True)
            frames = frames[:start - 1] + [header] + [bytes(len(f)) for f in frames[start:]]  # a push of zeros
        return frames
    return accept


def keep_job_in_startup(job: str):
    def accept(frames: Frames) -> Frames:
        msg = as_routed(frames)
        legit_stop = msg is not None and msg.op == P.STOP and msg.header.get("job") == job
        joins_evaluator = msg is not None and msg.op == P.REGISTER and msg.header.get("role") == P.EVALUATOR
        legit_result = msg is not None and msg.op == P.RESULT and msg.header.get("from") == "evaluator-0"
        if legit_stop or joins_evaluator or legit_result:
            return template_frames({"op": P.STATUS, "seq": 2}, [])
        return frames
    return accept


# ---- sending --------------------------------------------------------------------------------------

class Tally(collections.Counter):
    def line(self, target: str, seconds: float) -> str:
        return (f"{target}: {self['sent']} messages sent, {self['replies']} replies "
                f"({self['ok']} ok, {self['error']} error), {self['sent'] / seconds:.0f} messages/s")


def check_reply(frames: list, request: Frames, tally: Tally) -> None:
    if request[0] == b"":  # the server took our empty frame for a REQ delimiter and put it back
        assert frames[0] == b"", f"reply to a REQ-style request lost its delimiter: {frames[:2]}"
        frames = frames[1:]
    reply = decode(frames)  # raises on a malformed reply
    assert reply.op in (P.OK, P.ERROR), f"reply op {reply.op!r}"
    if reply.op == P.ERROR:
        assert isinstance(reply.header.get("reason"), str) and reply.header["reason"], reply.header
    tally["replies"] += 1
    tally[reply.op] += 1


def fuzz(ctx, address: str, messages, count: int, proc: subprocess.Popen, log: pathlib.Path) -> Tally:
    """Send `count` messages over SOCKETS dealers, at most IN_FLIGHT unanswered on each;
    check every reply. Fails on a dead process or on a stall, naming the last messages sent."""
    socks = []
    for _ in range(SOCKETS):
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(address)
        socks.append(sock)
    pending = {s: collections.deque() for s in socks}
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    tally = Tally()
    last_reply = time.monotonic()
    try:
        while tally["sent"] < count or any(pending.values()):
            for s in socks:
                while len(pending[s]) < IN_FLIGHT and tally["sent"] < count:
                    frames = next(messages)
                    s.send_multipart(frames)
                    pending[s].append(frames)
                    tally["sent"] += 1
            for s, _ in poller.poll(200):
                while pending[s]:
                    try:
                        reply = s.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    check_reply(reply, pending[s].popleft(), tally)
                    last_reply = time.monotonic()
            if proc.poll() is not None or time.monotonic() - last_reply > STALL_SECONDS:
                unanswered = [[bytes(x[:120]) for x in f[:3]] for q in pending.values() for f in list(q)[:2]]
                what = f"exited with code {proc.returncode}" if proc.poll() is not None else "stopped answering"
                pytest.fail(f"{address} {what} after {tally['sent']} messages; unanswered, among others: "
                            f"{str(unanswered)[:3000]}\n--- its log:\n{tail(log)}")
    finally:
        for s in socks:
            s.close(0)
    return tally


# ---- the test -------------------------------------------------------------------------------------

def pull_is_initial(job_info) -> None:
    n = job_info["initial"].size
    sock = job_info["ctx"].socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(job_info["shard"])
    try:
        sock.send_multipart(encode({"op": P.PULL, "seq": 99, "job": job_info["job"], "from": "client-0",
                                    "clock": 0, "lo": 0, "hi": n}))
        assert sock.poll(5000), "the shard no longer answers a valid pull"
        reply = decode(sock.recv_multipart())
    finally:
        sock.close(0)
    assert reply.op == P.OK and reply.seq == 99, reply.header
    np.testing.assert_array_equal(reply.arrays[0], job_info["initial"])


def test_a_shard_and_a_coordinator_survive_hostile_messages(live_job):
    job, procs, logs = live_job["job"], live_job["procs"], live_job["logs"]
    streams = {
        "shard": Mutator(5, shard_templates(job, live_job["initial"].size), keep_shard_weights(job)),
        "coordinator": Mutator(7, coordinator_templates(job), keep_job_in_startup(job)),
    }
    address = {"shard": live_job["shard"], "coordinator": live_job["coordinator"]}
    for target in streams:  # warm up allocators and caches before the first RSS reading
        fuzz(live_job["ctx"], address[target], streams[target], 2000, procs[target], logs[target])
    rss_before = {t: rss_mb(procs[t].pid) for t in streams}

    tallies, seconds = {}, {}
    for target in streams:
        started = time.perf_counter()
        tallies[target] = fuzz(live_job["ctx"], address[target], streams[target], MESSAGES[target],
                               procs[target], logs[target])
        seconds[target] = time.perf_counter() - started
    rss_after = {t: rss_mb(procs[t].pid) for t in streams}

    status = live_job["control"].status()
    workers = [n for n in status["nodes"] if n["role"] == P.WORKER]
    total = sum(t["sent"] for t in tallies.values())
    print(f"\nfuzz: {total} messages in {sum(seconds.values()):.1f} s ({total / sum(seconds.values()):.0f}/s)")
    for target in streams:
        print(f"  {tallies[target].line(target, seconds[target])}; "
              f"RSS {rss_before[target]:.1f} -> {rss_after[target]:.1f} MB")
    print(f"  coordinator afterwards: state {status['state']}, {len(status['nodes'])} nodes "
          f"({len(workers)} workers registered by the fuzzer)")

    assert total >= TOTAL
    for target in streams:
        assert procs[target].poll() is None, f"{target} died:\n{tail(logs[target])}"
        assert tallies[target]["replies"] == tallies[target]["sent"]
        growth = rss_after[target] - rss_before[target]
        assert growth < RSS_GROWTH_MB, f"{target} grew by {growth:.1f} MB over {tallies[target]['sent']} messages"
    assert status["state"] == P.STARTING and status["job_id"] == job, (status["state"], status["reason"])
    assert len(workers) <= live_job["cfg"]["workers"]["count"] + P.MAX_EXTRA_WORKERS
    pull_is_initial(live_job)


def test_valid_requests_at_ever_new_clocks_do_not_cost_the_shard_its_heartbeat(live_job):
    """Each read and push at a new clock or read_version is legal; what the shard keeps about
    them (its staleness histograms, sent with every heartbeat) must stay bounded, or the
    heartbeat outgrows the message limit, the coordinator refuses it and declares the shard dead."""
    n, job = live_job["initial"].size, live_job["job"]
    sock = live_job["ctx"].socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(live_job["shard"])
    zeros = np.zeros(n, np.float32)
    try:
        for i in range(8000):
            header = {"op": P.PULL, "seq": i, "job": job, "from": "worker-0", "clock": 10**6 + 7919 * i,
                      "lo": 0, "hi": n}
            if i % 4 == 0:
                header.update(op=P.PUSH, clock=i, read_version=-7919 * i)
            sock.send_multipart(encode(header, [zeros] if header["op"] == P.PUSH else []))
            assert sock.poll(5000), "the shard stopped answering"
            assert decode(sock.recv_multipart()).op == P.OK
    finally:
        sock.close(0)
    time.sleep(live_job["cfg"]["cluster"]["heartbeat_timeout"] + 1.0)
    shard = next(n for n in live_job["control"].status()["nodes"] if n["name"] == "shard-0")
    assert shard["state"] == "alive" and shard["last_heartbeat"] < 2.0, \
        f"the coordinator lost the shard's heartbeat:\n{tail(live_job['logs']['coordinator'])}"
    pull_is_initial(live_job)
