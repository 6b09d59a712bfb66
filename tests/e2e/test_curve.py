"""With CURVE on, only holders of the job's keys can talk to it; the job itself trains as usual."""
import os
import pathlib
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from ps import config as job_config
from ps import protocol as P
from ps import security
from ps.client import ControlClient
from ps.wire import decode, encode
from tests.conftest import CONFIGS, ONE_THREAD, ROOT
from worker import models
from worker.job import load_data

pytestmark = pytest.mark.e2e


@pytest.fixture
def curve_job(tmp_path):
    """A coordinator and one shard with the job's keys (no workers: the job stays in start-up)."""
    keys = security.generate(tmp_path / "keys")
    cfg = job_config.load(CONFIGS / "digits_logreg.yaml", ["shards=1", "cluster.curve=true"])
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text(job_config.dump(cfg))
    env = dict(os.environ, **ONE_THREAD, DOWNPOUR_RUN_DIR=str(tmp_path.resolve()), DOWNPOUR_KEYS=str(keys.directory))
    addr_file = tmp_path / "coordinator.addr"
    cli = [sys.executable, "-m", "ps.cli"]
    procs = [subprocess.Popen(cli + ["coordinator", "--config", str(cfg_path), "--bind", "tcp://127.0.0.1:*",
                                     "--run-dir", str(tmp_path), "--address-file", str(addr_file)],
                              cwd=ROOT, env=env, start_new_session=True, stderr=open(tmp_path / "coordinator.log", "w"))]
    ctx = zmq.Context()
    try:
        deadline = time.monotonic() + 60
        while not addr_file.exists():
            assert time.monotonic() < deadline, "coordinator did not start"
            time.sleep(0.05)
        coordinator = addr_file.read_text().strip()
        procs.append(subprocess.Popen(cli + ["shard", "--coordinator", coordinator, "--bind", "tcp://127.0.0.1:*"],
                                      cwd=ROOT, env=env, start_new_session=True, stderr=subprocess.DEVNULL))
        control = ControlClient(ctx, coordinator, "client", timeout=5, configure=keys.configure_client)
        while True:
            status = control.status()
            if any(n["role"] == "shard" for n in status["nodes"]):
                break
            assert time.monotonic() < deadline, "shard did not register"
            time.sleep(0.05)
        control.close()
        shard = next(n for n in status["nodes"] if n["role"] == "shard")
        data = load_data(cfg)
        initial = np.concatenate([a.ravel() for _, a in
                                  models.initial_parameters(cfg["model"], models.data_info(data), cfg["seed"])])
        yield {"keys": keys, "shard": shard["address"], "coordinator": coordinator, "job": status["job_id"],
               "initial": initial, "ctx": ctx, "tmp": tmp_path}
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        ctx.term()


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
