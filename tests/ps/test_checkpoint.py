"""Checkpoints: atomic (a crash mid-write never leaves a file resume would load), checksummed,
and a shard's state comes back bit for bit."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from downpour.ps import checkpoint
from downpour.ps.store import ParameterStore

WRITER = textwrap.dedent("""
    import sys, numpy as np
    from downpour.ps import checkpoint
    path, n = sys.argv[1], 0
    while True:
        n += 1
        w = np.full(2_000_000, n, np.float32)          # 8 MB: each write takes a while
        checkpoint.save(path, {"weights": w}, {"n": n})
        print(n, flush=True)
""")


def test_a_process_killed_while_writing_never_leaves_a_torn_checkpoint(tmp_path):
    path = tmp_path / "shard-0.npz"
    rng = np.random.default_rng(0)
    seen = []
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                                cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        proc.stdout.readline()                          # at least one checkpoint exists
        time.sleep(rng.uniform(0.0, 0.3))               # then kill it at a random moment, likely mid-write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        arrays, meta = checkpoint.load(path)            # never torn: the old one or the new one, whole
        assert (arrays["weights"] == meta["n"]).all()
        seen.append(meta["n"])
        assert len(list(tmp_path.glob(".shard-0.npz.*"))) <= 1    # a crashed write's leftovers are swept


def test_a_corrupted_or_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"weights": np.arange(1000, dtype=np.float32)}, {"n": 1})
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(path)
    path.write_bytes(bytes(raw[:100]))
    with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
        checkpoint.load(path)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path / "missing.npz")


@pytest.mark.parametrize("mode", ["async", "bsp"])
def test_a_shards_state_comes_back_bit_for_bit(tmp_path, mode):
    rng = np.random.default_rng(1)
    opt = {"type": "adam", "lr": 0.01}
    store = ParameterStore(100, 164, rng.standard_normal(64), opt, mode, 0, [0, 1])
    for clock in range(5):
        store.push(0, clock, 100, 164, rng.standard_normal(64).astype(np.float32), 0)
        if clock < 4:
            store.push(1, clock, 100, 132, rng.standard_normal(32).astype(np.float32), 0)
    arrays, meta = store.state_dict()
    checkpoint.save(tmp_path / "s.npz", arrays, meta)
    back = ParameterStore(100, 164, np.zeros(64), opt, mode, 0, [0, 1])
    back.load_state_dict(*checkpoint.load(tmp_path / "s.npz"))
    np.testing.assert_array_equal(back.weights, store.weights)
    for key, value in store.rule.state_dict().items():
        np.testing.assert_array_equal(back.rule.state_dict()[key], value)
    assert back.consistency.clocks == store.consistency.clocks
    assert back.updates_applied == store.updates_applied
    assert not back.push(0, 3, 100, 164, np.ones(64, np.float32))   # already applied before the checkpoint
    g = rng.standard_normal(64).astype(np.float32)
    store.push(1, 4, 100, 164, g)
    back.push(1, 4, 100, 164, g)
    np.testing.assert_array_equal(back.weights, store.weights)       # and they go on identically
