"""With CURVE on, only holders of the job's keys can talk to it; the job itself trains as usual."""
import pathlib
import stat

import numpy as np
import pytest
import zmq

from downpour.ps import protocol as P
from downpour.ps import security
from downpour.ps.wire import decode, encode
from tests.conftest import CONFIGS, coordinator_and_shard

pytestmark = pytest.mark.e2e


@pytest.fixture
def curve_job(tmp_path):
    """A coordinator and one shard with the job's keys (no workers: the job stays in start-up)."""
    with coordinator_and_shard(tmp_path, ["cluster.curve=true"], security.generate(tmp_path / "keys")) as rig:
        yield rig


def ask(job, address, frames, configure=None, wait=1.5):
    sock = job["ctx"].socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if configure is not None:
        configure(sock)
    sock.connect(address)
    try:
        sock.send_multipart(frames)
        return decode(sock.recv_multipart()) if sock.poll(int(wait * 1000)) else None
    finally:
        sock.close()


def pull(job):
    return encode({"op": P.PULL, "seq": 1, "job": job["job"], "from": "client-0", "clock": 0, "lo": 0,
                   "hi": job["initial"].size})


def push(job):
    return encode({"op": P.PUSH, "seq": 2, "job": job["job"], "from": "worker-0", "clock": 0, "lo": 0,
                   "hi": job["initial"].size}, [np.full(job["initial"].size, 1e3, np.float32)])


def test_peers_without_the_jobs_keys_get_nothing_and_change_nothing(curve_job, tmp_path):
    intruder = security.generate(tmp_path / "other-job")
    for configure in (None, intruder.configure_client):
        for target, frames in ((curve_job["shard"], push(curve_job)), (curve_job["shard"], pull(curve_job)),
                               (curve_job["coordinator"], encode({"op": P.STATUS, "seq": 1}))):
            assert ask(curve_job, target, frames, configure) is None
    reply = ask(curve_job, curve_job["shard"], pull(curve_job), curve_job["keys"].configure_client, wait=10)
    assert reply is not None and reply.op == P.OK
    np.testing.assert_array_equal(reply.arrays[0], curve_job["initial"])   # the pushes never landed


def test_the_right_server_key_with_an_unknown_client_key_is_refused(curve_job, tmp_path):
    stranger = security.generate(tmp_path / "stranger")
    mixed = security.Keys(stranger.directory, curve_job["keys"].server_public, stranger.client_public,
                          stranger.client_secret, None)
    assert ask(curve_job, curve_job["shard"], pull(curve_job), mixed.configure_client) is None


def test_a_curve_job_trains_and_keeps_its_secrets_private(jobs):
    s = jobs.run(CONFIGS / "digits_mlp.yaml", "cluster.curve=true", "train.steps=300")
    assert s["status"] == "done", s["reason"]
    assert s["metrics"]["test_accuracy"] > 0.9
    key_dir = pathlib.Path(s["_run_dir"]) / "keys"
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    for secret in key_dir.glob("*.key_secret"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
