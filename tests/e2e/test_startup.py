"""Start-up never hangs silently: who is missing is named, a taken port is named by number."""
import json
import socket
import subprocess
import sys

import pytest

from downpour.ps import config as job_config
from tests.conftest import CONFIGS, ROOT

pytestmark = pytest.mark.e2e


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "downpour", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_a_port_already_taken_is_reported_by_number(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli("coordinator", "--config", str(CONFIGS / "digits_logreg.yaml"), "--bind", f"tcp://127.0.0.1:{port}",
                   "--run-dir", str(tmp_path))
    assert done.returncode != 0
    assert f"port {port} is already in use" in done.stderr


def test_a_worker_without_a_coordinator_says_where_it_waited():
    done = cli("worker", "--coordinator", "tcp://127.0.0.1:9", "--startup-timeout", "2")
    assert done.returncode == 1
    assert "waiting for the coordinator at tcp://127.0.0.1:9: no reply for 2 s" in done.stderr


def test_a_coordinator_nobody_joins_names_who_is_missing(tmp_path):
    cfg = job_config.load(CONFIGS / "digits_logreg.yaml", ["cluster.startup_timeout=2"])
    (tmp_path / "job.yaml").write_text(job_config.dump(cfg))
    done = cli("coordinator", "--config", str(tmp_path / "job.yaml"), "--bind", "tcp://127.0.0.1:*",
               "--run-dir", str(tmp_path))
    assert done.returncode == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["reason"] == ("start-up timed out after 2 s: waiting for shard 0, 1; waiting for worker 0, 1; "
                                 "waiting for evaluator 0")
