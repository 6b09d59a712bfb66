"""Replication between a primary and its backup, in one process over loopback: the backup takes
the primary's state and then every push; a reply is released only on the backup's word; a
deposed primary's held replies become refusals; a backup that cannot take a push keeps it held."""
import numpy as np
import pytest
import zmq

from downpour.ps import protocol as P
from downpour.ps.backups import state_of
from downpour.ps.holdings import Holdings
from downpour.ps.incoming import Incoming
from downpour.ps.layout import make_layout
from downpour.ps.replication import Replicator
from downpour.ps.store import ParameterStore
from downpour.ps.wire import Message, WireError, recv, reply, reply_error

LAYOUT = make_layout([("w", (40,)), ("b", (24,))], 2)
CONFIG = {"consistency": {"mode": "async", "staleness": 0}, "optimizer": {"type": "adagrad", "lr": 0.1},
          "train": {"steps": 100, "push_every": 1}, "workers": {"count": 2, "external": 0}}
GRADS = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)


class Pair:
    """A primary's replicator for range 0 and a backup shard's holdings behind a ROUTER socket."""

    def __init__(self):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.address = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"
        lo, hi = LAYOUT.ranges[0]
        self.primary = ParameterStore(lo, hi, np.ones(hi - lo, np.float32), dict(CONFIG["optimizer"]), "async", 0,
                                      [0, 1])
        self.replicator = Replicator(self.ctx, "job", "shard-0", 1 << 20)
        self.backup = Holdings(1, LAYOUT, CONFIG, "job", [0, 1], Incoming(local=False), None)
        self.released: list[tuple[int, bool]] = []

    def follow(self, gen=5, epoch=1):
        self.replicator.follow(0, {"to": self.address, "gen": gen}, epoch, lambda: state_of(self.primary))

    def push(self, clock, worker=0):
        """The primary applies a push, forwards it and holds its reply."""
        lo, hi = LAYOUT.ranges[0]
        self.primary.push(worker, clock, lo, hi, GRADS[clock])
        seq = self.replicator.forward(0, worker, clock, lo, hi, GRADS[clock], None)
        self.replicator.hold(0, seq, lambda ok, clock=clock: self.released.append((clock, ok)))

    def serve_backup(self, messages):
        """The backup shard answers `messages` requests, as a shard does."""
        for _ in range(messages):
            assert self.sock.poll(5000)
            msg = recv(self.sock, router=True)
            try:
                self.backup.from_primary(msg)
                reply(self.sock, msg)
            except WireError as err:
                reply_error(self.sock, msg.envelope, msg.seq, str(err), retry=err.retry, **err.fields)

    def hear_backup(self, until=lambda: False):
        """The primary reads the backup's answers until `until()`; False once told it was deposed."""
        link = self.replicator.links[0]
        while not until():
            assert link.channel.sock.poll(5000), "the backup said nothing more"
            if not self.replicator.on_replies(link):
                return False
        return True

    def close(self):
        self.replicator.close()
        self.sock.close()
        self.ctx.term()


@pytest.fixture
def pair():
    p = Pair()
    yield p
    p.close()


def state_parts():
    return len(state_of(ParameterStore(0, 1, np.zeros(1, np.float32), {"type": "adagrad", "lr": 0.1}, "async", 0,
                                       [0]))[0])


def test_a_new_backup_takes_the_state_then_every_push_and_each_reply_waits_for_its_acknowledgement(pair):
    for clock in range(3):                                   # applied before the backup existed
        pair.primary.push(0, clock, *LAYOUT.ranges[0], GRADS[clock])
    pair.backup.backups.follow({"0": {"gen": 5, "epoch": 1}})
    pair.follow()
    pair.push(3)
    pair.push(4)
    assert pair.released == []                               # nothing acknowledged before the backup has it
    pair.serve_backup(state_parts() + 2)
    assert pair.hear_backup(lambda: len(pair.released) == 2)
    assert pair.released == [(3, True), (4, True)]
    copy = pair.backup.backups.held[0].store
    np.testing.assert_array_equal(copy.weights, pair.primary.weights)             # bit for bit
    np.testing.assert_array_equal(copy.rule.state_dict()["sum"], pair.primary.rule.state_dict()["sum"])
    assert copy.updates_applied == pair.primary.updates_applied == 5
    assert not copy.push(0, 1, *LAYOUT.ranges[0], GRADS[1])                     # its push log came too
    assert pair.backup.backups.report() == {"0": [5, True]}


def test_a_deposed_primary_is_told_so_and_its_held_replies_are_refused(pair):
    pair.backup.backups.follow({"0": {"gen": 5, "epoch": 1}})
    pair.follow()
    pair.serve_backup(state_parts())
    pair.backup.serve(0, 2, pair.backup.backups.promote(0))  # promoted at epoch 2 while we stalled
    pair.push(0)
    pair.serve_backup(1)
    assert not pair.hear_backup()                             # the refusal says: deposed
    pair.replicator.stand_down(0)
    assert pair.released == [(0, False)] and 0 not in pair.replicator.links


def test_a_backup_that_cannot_take_the_state_yet_leaves_the_replies_held_until_it_goes_again(pair):
    pair.follow()                                             # the backup has not heard of its assignment
    pair.push(0)
    pair.serve_backup(state_parts() + 1)
    link = pair.replicator.links[0]
    assert pair.hear_backup(lambda: link.broken)
    assert pair.released == []
    pair.backup.backups.follow({"0": {"gen": 5, "epoch": 1}})
    pair.follow()                                             # the coordinator confirms: the state goes again
    pair.serve_backup(state_parts())
    assert pair.hear_backup(lambda: pair.released)
    assert pair.released == [(0, True)]                      # the state holds push 0
    np.testing.assert_array_equal(pair.backup.backups.held[0].store.weights, pair.primary.weights)


def test_no_backup_any_more_releases_the_held_replies_as_acknowledged(pair):
    pair.backup.backups.follow({"0": {"gen": 5, "epoch": 1}})
    pair.follow()
    pair.push(0)
    pair.replicator.follow(0, None, 1, lambda: state_of(pair.primary))
    assert pair.released == [(0, True)] and 0 not in pair.replicator.links


def test_a_resent_push_whose_first_copy_is_held_waits_for_the_same_acknowledgement(pair):
    pair.backup.backups.follow({"0": {"gen": 5, "epoch": 1}})
    pair.follow()
    pair.push(0)
    seq = pair.replicator.in_flight(0, 0, 0, *LAYOUT.ranges[0])
    assert seq is not None and pair.replicator.in_flight(0, 0, 1, *LAYOUT.ranges[0]) is None
    pair.replicator.hold(0, seq, lambda ok: pair.released.append(("again", ok)))
    pair.serve_backup(state_parts() + 1)
    assert pair.hear_backup(lambda: len(pair.released) == 2)
    assert pair.released == [(0, True), ("again", True)]
    assert pair.replicator.in_flight(0, 0, 0, *LAYOUT.ranges[0]) is None


def test_a_backup_refuses_a_sender_at_an_older_epoch_and_asks_a_newer_one_to_wait():
    holdings = Holdings(1, LAYOUT, CONFIG, "job", [0, 1], Incoming(local=False), None)
    holdings.backups.follow({"0": {"gen": 5, "epoch": 2}})
    lo, hi = LAYOUT.ranges[0]
    header = {"op": P.REPLICATE, "job": "job", "from": "shard-0", "range": 0, "gen": 5, "worker": 0, "clock": 0,
              "lo": lo, "hi": hi}
    with pytest.raises(WireError) as old:
        holdings.from_primary(Message(dict(header, epoch=1), [GRADS[0]]))
    assert old.value.fields == {"deposed": True, "epoch": 2}
    with pytest.raises(WireError) as new:
        holdings.from_primary(Message(dict(header, epoch=3), [GRADS[0]]))
    assert new.value.retry and "deposed" not in new.value.fields
    with pytest.raises(WireError, match="holds no state of range 0 yet") as early:
        holdings.from_primary(Message(dict(header, epoch=2), [GRADS[0]]))
    assert early.value.retry
    with pytest.raises(WireError, match=r"not the backup of range 0 \(#4\)"):
        holdings.from_primary(Message(dict(header, epoch=2, gen=4), [GRADS[0]]))
