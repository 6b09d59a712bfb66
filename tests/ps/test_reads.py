"""Compressed reads (ps/reads.py), without sockets: the shard keeps each reader's view, a read
carries the change since it, and the reader's copy of the view stays equal to the shard's.
`sparse` gives the exact weights; a lossy codec's residual (weights - view) is kept per reader
and per range, carried into the next read, and reset by a full read."""
import msgpack
import numpy as np
import pytest

from downpour.ps import config, spans, wire
from downpour.ps import protocol as P
from downpour.ps.compression import CodecError
from downpour.ps.reads import HeldWeights, ReaderViews, StaleView, apply_change, top_changes
from downpour.ps.schema_nodes import ConfigError
from downpour.ps.wire import WireError  # noqa: F401

N = 4000


class Link:
    """One shard range [lo, hi) of a model, its readers, and the messages between them, as the
    shard and the client exchange them (ps/shard.py's `_read`, ps/client/data.py's `_accept`)."""

    def __init__(self, codec, lo=0, hi=N, seed=0, **spec):
        self.lo, self.hi = lo, hi
        self.weights = np.random.default_rng(seed).standard_normal(hi).astype(np.float32)
        self.views = ReaderViews({"pull": codec, **spec}, seed=seed)
        self.held: dict[str, HeldWeights] = {}
        self.sent: list[dict] = []

    def read(self, reader="worker-0", wanted=None, token=None):
        """What the reader holds of [lo, hi) after one read (or of `wanted` only, packed)."""
        held = self.held.setdefault(reader, HeldWeights([(self.lo, self.hi)]))
        header = {"from": reader, "lo": self.lo, "hi": self.hi, "view": held.token(0) if token is None else token}
        answer = self.views.answer(header, self.weights, 0, wanted)
        reply = dict(answer.fields)
        if answer.arrays is not None:
            arrays = answer.arrays
        elif answer.whole or wanted is None:      # what the shard's plain read path sends
            arrays = (self.weights[self.lo:self.hi].copy(),)
        else:
            arrays = (spans.gather(self.weights, 0, wanted),)
        self.sent.append({"fields": reply, "bytes": sum(a.nbytes for a in arrays)})
        if "view" not in reply:
            held.drop(0)
            return arrays[0]
        values, keys, _ = held.take(0, reply, arrays, wanted)
        return np.array(values)

    def view(self, reader="worker-0"):
        return self.views.views[(reader, self.lo, self.hi)].weights

    def step(self, rng, touched=None, scale=1e-3):
        """An update: every weight (or only `touched` ones) moves a little."""
        delta = (rng.standard_normal(self.hi) * scale).astype(np.float32)
        if touched is not None:
            keep = np.zeros(self.hi, bool)
            keep[touched] = True
            delta[~keep] = 0
        self.weights += delta


# ---- the acceptance tests -------------------------------------------------------------------------

def test_reads_by_sparse_give_a_worker_exactly_the_weights_a_full_read_gives():
    """Embedding-like updates (a few rows move per step), tiny changes on big weights (where
    weights - view would round), -0.0 for 0.0 and a NaN: every read is the shard's weights, bit for bit."""
    link, rng = Link("sparse", lo=1000, hi=N), np.random.default_rng(1)
    first = link.read()
    np.testing.assert_array_equal(first, link.weights[1000:])
    for step in range(30):
        link.step(rng, touched=rng.integers(0, N, 40))
        if step == 5:
            link.weights[1500] = 3e7
        if step == 6:
            link.weights[1500] += 2.0          # 3e7 + 2: its change would round away in float32
            link.weights[1600] = 0.0
        if step == 7:
            link.weights[1600] = -0.0
            link.weights[1700] = np.nan
        got = link.read()
        assert got.tobytes() == link.weights[1000:].tobytes(), step
    kinds = [("base" in s["fields"], s["fields"].get("codec")) for s in link.sent]
    assert kinds[0] == (False, None) and all(k == (True, "sparse") for k in kinds[1:])
    assert max(s["bytes"] for s in link.sent[1:]) < 0.05 * link.sent[0]["bytes"]


def test_a_lossy_read_keeps_a_residual_per_worker_and_a_full_read_resets_it():
    """topk 1%: what a read leaves out stays in weights - view, one per worker, each the
    changes since that worker's own reads; the next read sends what grew largest in it; a
    full read (here: a worker that restarted, holding no view) sends it all and resets it."""
    link, rng = Link("topk", ratio=0.01), np.random.default_rng(2)
    for reader in ("worker-0", "worker-1"):
        np.testing.assert_array_equal(link.read(reader), link.weights)   # a first read is a full one
    link.step(rng)
    got0 = link.read("worker-0")
    link.step(rng)
    residual0, residual1 = link.weights - link.view("worker-0"), link.weights - link.view("worker-1")
    assert np.count_nonzero(residual0) > 0.9 * N and np.count_nonzero(residual1) > 0.9 * N
    assert not np.array_equal(residual0, residual1)      # worker-1 has not read since the start
    np.testing.assert_array_equal(link.view("worker-0"), got0)   # what the shard keeps is what the worker holds
    # the residual is what the read left out: the 40 keys it sent hold the weights exactly
    sent = np.flatnonzero(link.view("worker-0") != link.view("worker-1"))
    assert sent.size == 40
    # the next read of worker-1 sends the 40 largest of its residual (two steps' worth)
    expected = np.sort(np.argsort(-np.abs(residual1), kind="stable")[:40])
    got1 = link.read("worker-1")
    np.testing.assert_array_equal(np.flatnonzero(residual1 - (link.weights - link.view("worker-1"))), expected)
    np.testing.assert_array_equal(got1, link.view("worker-1"))
    # worker-0 restarts: it holds no view, reads in full, and its residual is zero
    link.held.pop("worker-0")
    np.testing.assert_array_equal(link.read("worker-0"), link.weights)
    assert not np.any(link.weights - link.view("worker-0"))
    assert np.count_nonzero(link.weights - link.view("worker-1")) > 0.9 * N   # worker-1's is untouched
    assert link.views.stats()["full"] == 3 and link.views.stats()["change"] == 2


# ---- the codecs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("codec,bytes_per_value", [("fp16", 2), ("onebit", 1 / 8), ("twobit", 1 / 4),
                                                   ("topk", 0.08), ("sparse", None)])
def test_every_codec_keeps_the_workers_copy_equal_to_the_shards_view_and_close_to_the_weights(codec, bytes_per_value):
    link, rng = Link(codec, threshold=2e-3), np.random.default_rng(3)
    link.read()
    for _ in range(40):
        link.step(rng)
        got = link.read()
        assert got.tobytes() == link.view().tobytes()
    drift = np.abs(link.weights - got).max()
    moved = 40 * 1e-3 * 4      # how far a weight may have gone in 40 steps (4 sigma)
    assert drift < {"fp16": 1e-6, "sparse": 1e-12}.get(codec, moved)
    if bytes_per_value is not None:
        assert link.sent[-1]["bytes"] <= bytes_per_value * N + 16
    else:   # every weight moved: sparse would be bigger than the values, so they go as they are
        assert link.sent[-1]["fields"]["codec"] == "none" and link.sent[-1]["bytes"] == 4 * N


def test_topk_reads_send_the_largest_changes_and_no_more_keys_than_moved():
    change = np.zeros(1000, np.float32)
    change[[5, 70, 300]] = [0.5, -2.0, 1.0]
    np.testing.assert_array_equal(top_changes(change, 0.01), [5, 70, 300])     # k = 10, 3 moved
    np.testing.assert_array_equal(top_changes(change, 0.002), [70, 300])       # k = 2
    assert top_changes(np.zeros(10, np.float32), 0.5).dtype == np.uint32 and top_changes(change[:0], 0.5).size == 0
    big = np.random.default_rng(9).standard_normal(50_000).astype(np.float32)
    big[::3] = 0                                                               # weights that did not move
    np.testing.assert_array_equal(top_changes(big, 0.01), np.sort(np.argsort(-np.abs(big))[:500]))


def test_errors_feed_back_so_a_lossy_view_catches_up_once_the_weights_stop_moving():
    link, rng = Link("topk", ratio=0.05), np.random.default_rng(4)
    link.read()
    for _ in range(10):
        link.step(rng)
        link.read()
    for _ in range(40):           # 5% a read: 20 reads deliver every key
        got = link.read()
    np.testing.assert_array_equal(got, link.weights)


# ---- when a full read is sent --------------------------------------------------------------------

def test_a_full_read_comes_every_pull_full_every_reads():
    link, rng = Link("fp16", pull_full_every=3), np.random.default_rng(5)
    for _ in range(7):
        link.step(rng)
        link.read()
    assert ["base" not in s["fields"] for s in link.sent] == [True, False, False, True, False, False, True]


def test_a_view_the_shard_does_not_hold_gets_a_full_read_with_a_new_token():
    """A shard that restarted or was promoted holds no view; a reply that was lost left the
    worker with an older token than the shard's; a forged token matches nothing."""
    link, rng = Link("fp16"), np.random.default_rng(6)
    link.read()
    old = link.held["worker-0"].token(0)
    link.step(rng)
    link.read()                                   # the shard moves to a new token
    for token in (old, 12345):                    # the reply never arrived / made up
        got = link.read(token=token)
        assert "base" not in link.sent[-1]["fields"]
        np.testing.assert_array_equal(got, link.weights)
    link.views = ReaderViews({"pull": "fp16"})   # a restarted shard
    link.read()
    assert "base" not in link.sent[-1]["fields"] and link.held["worker-0"].token(0) not in (0, old)


def test_a_reply_changing_a_view_the_reader_no_longer_holds_is_refused_and_the_view_dropped():
    held = HeldWeights([(0, 4)])
    held.take(0, {"view": 7}, [np.zeros(4, np.float32)], None)
    change = {"view": 9, "base": 8, "codec": "fp16", "exponent": 0}
    with pytest.raises(StaleView):
        held.take(0, change, [np.zeros(4, np.float16)], None)
    assert held.token(0) == 0 and held.views[0] is None


def test_beyond_the_memory_budget_readers_get_plain_reads_and_it_is_counted():
    link = Link("topk", pull_memory_mb=2.5 * 4 * N / 2**20)   # room for two views of this range
    for reader in ("worker-0", "worker-1", "worker-2"):
        np.testing.assert_array_equal(link.read(reader), link.weights)
    assert [("view" in s["fields"]) for s in link.sent] == [True, True, False]
    assert link.views.stats() == {"full": 2, "change": 0, "over_budget": 1, "view_bytes": 2 * 4 * N}
    link.views.retain([1, 2])                     # worker-0 is gone: its view goes, and worker-2 gets one
    link.read("worker-2")
    assert link.sent[-1]["fields"].get("view") and link.views.stats()["view_bytes"] == 2 * 4 * N


def test_reads_of_some_keys_carry_the_change_of_those_keys_and_a_full_read_the_whole_range():
    """`compression.rows`: the view of the keys not read stays as it was on both sides."""
    link, rng = Link("sparse", lo=0, hi=N), np.random.default_rng(7)
    wanted = (np.array([10, 500]), np.array([20, 600]))
    keys = spans.positions(*wanted)
    whole = link.read(wanted=wanted)                 # no view yet: the whole range, view or not
    assert link.sent[-1]["fields"].get("whole") is True and whole.shape == (N,)
    link.step(rng)
    before = link.view().copy()
    got = link.read(wanted=wanted)
    np.testing.assert_array_equal(got, link.weights[keys])
    others = np.setdiff1d(np.arange(N), keys)
    np.testing.assert_array_equal(link.view()[others], before[others])
    np.testing.assert_array_equal(link.held["worker-0"].views[0], link.view())


# ---- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("token", [-1, 1 << 62, "7", 1.5, True, None])
def test_a_read_naming_a_view_that_is_not_a_token_is_refused_by_name(token):
    header = {"v": P.VERSION, "op": P.PULL, "seq": 1, "job": "j", "from": "worker-0", "clock": 0, "lo": 0, "hi": 4,
              "view": token}
    with pytest.raises(WireError, match="header field 'view': expected an integer in"):  # checked by the wire
        wire.decode([msgpack.packb(header)])


def test_a_malformed_change_is_refused_before_the_view_is_touched():
    view = np.ones(8, np.float32)
    with pytest.raises(CodecError, match="indices not strictly increasing"):
        apply_change(view, {"codec": "topk", "count": 2}, [np.array([3, 1], np.uint32), np.zeros(2, np.float32)])
    with pytest.raises(CodecError, match="expected float16 of shape"):
        apply_change(view, {"codec": "fp16", "exponent": 0}, [np.zeros(7, np.float16)])
    np.testing.assert_array_equal(view, 1)


def test_a_plain_read_and_reads_without_a_codec_name_no_view():
    assert ReaderViews({"pull": "none"}).answer({"view": 0}, np.zeros(1, np.float32), 0, None).fields == {}
    assert ReaderViews({"pull": "fp16"}).answer({"from": "w"}, np.zeros(1, np.float32), 0, None).fields == {}


def test_config_takes_a_read_codec_and_refuses_an_interval_without_one():
    job = {"name": "j", "data": {"dataset": "digits"}, "model": {"type": "mlp"}}
    cfg = config.resolve({**job, "compression": {"codec": "topk", "pull": "topk", "pull_full_every": 50}})
    assert cfg["compression"]["pull"] == "topk" and cfg["compression"]["pull_memory_mb"] == 1024.0
    with pytest.raises(ConfigError, match="compression.pull: expected one of none, fp16, topk"):
        config.resolve({**job, "compression": {"pull": "gzip"}})
    with pytest.raises(ConfigError, match="compression.pull_full_every: expected null unless compression.pull"):
        config.resolve({**job, "compression": {"pull_full_every": 10}})
