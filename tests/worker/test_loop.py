"""The Downpour loop of one worker (worker/loop.py and its parts), without sockets: a session and
a shard client that record what the loop asks of them stand in for the cluster."""
import dataclasses
import types

import numpy as np
import pytest

from downpour.ps import config as job_config
from downpour.ps import protocol as P
from downpour.ps.client.data import ShardClient
from downpour.worker import loop, overlap
from downpour.worker.accrued import Accrued
from downpour.worker.alarms import Alarms, Garbage
from downpour.worker.job import build_job
from downpour.worker.partition import Partition
from tests.conftest import CONFIGS


@dataclasses.dataclass
class Trip:
    op: str
    clock: int
    step: int          # the steps done when it was sent
    waited_at: int | None = None


class RecordingClient:
    """A shard client that answers at once and records every round trip and when it was waited for."""

    def __init__(self, session, size):
        self.session, self.size = session, size
        self.trips: list[Trip] = []
        self.pushed: list[np.ndarray] = []
        self.shard_clocks, self.retries, self.waited, self.bytes_sent, self.bytes_received = [0], 0, 0.0, 0, 0

    def resume_clock(self, bsp):
        return ShardClient.resume_clock(self, bsp)

    def gradient_buffers(self, n):
        return [np.zeros(self.size, np.float32) for _ in range(n)]

    def pull(self, clock, out):
        self.trips.append(Trip(P.PULL, clock, self.session.step, self.session.step))

    def start(self, op, clock, grad, out, **keys):
        if grad is not None:
            self.pushed.append(grad.copy())
        self.trips.append(Trip(op, clock, self.session.step))
        return self.trips[-1]

    def finish(self, trip):
        trip.waited_at = self.session.step


class RecordingSession:
    """What the loop needs of a worker's session: the resolved config, a clock, and the reports."""

    def __init__(self, *overrides):
        self.config = job_config.load(CONFIGS / "digits_logreg.yaml", ["workers=1", "train.log_every=2", *overrides])
        self.layout, self.rank, self.world, self.live, self.restarted = None, 0, 1, [0], False
        self.name, self.state, self.reason, self.clock, self.step = "worker-0", P.RUNNING, "", 0, 0
        self.heartbeat = types.SimpleNamespace(paused=None)
        self.reports: list[dict] = []
        self.control = types.SimpleNamespace(report=self.reports.append)
        self.client = RecordingClient(self, build_job(self.config).flat.size)

    def shard_client(self, faults):
        return self.client

    def check(self):
        pass


def sent(session):
    return [(t.op, t.clock, t.step, t.waited_at) for t in session.client.trips]


def test_a_worker_pushes_every_push_every_steps_and_reads_every_fetch_every_overlapping_in_async():
    session = RecordingSession("train.steps=6", "train.push_every=2", "train.fetch_every=3")
    loop.train(session)
    # (op, clock, steps done when sent, steps done when waited for): a round trip sent after a
    # step is waited for after the next step's compute; the last step's is waited for at once
    assert sent(session) == [(P.PULL, 0, 0, 0), (P.PUSH, 0, 1, 2), (P.PULL, 1, 2, 3), (P.PUSH, 1, 3, 4),
                             (P.PUSH, 2, 5, 5)]
    assert (session.clock, session.step) == (3, 6)


def test_a_push_followed_by_a_read_is_one_round_trip_and_ssp_waits_for_each_at_once():
    session = RecordingSession("consistency.mode=ssp", "train.steps=4", "train.push_every=2", "train.fetch_every=2")
    loop.train(session)
    assert sent(session) == [(P.PULL, 0, 0, 0), (P.PUSH_PULL, 0, 1, 1), (P.PUSH, 1, 3, 3)]


def test_a_push_sends_the_mean_of_the_gradients_accrued_since_the_last():
    session = RecordingSession("train.steps=3", "train.push_every=3")
    single = RecordingSession("train.steps=3", "train.push_every=1")
    loop.train(session)
    loop.train(single)   # the shards never answer with new weights: every step computes at the same point
    np.testing.assert_allclose(session.client.pushed[0], np.mean(single.client.pushed, axis=0), rtol=1e-5, atol=1e-7)


def test_every_log_every_steps_and_at_the_last_the_worker_reports_loss_clock_and_traffic():
    session = RecordingSession("train.steps=5", "train.log_every=2")
    loop.train(session)
    assert [(r["step"], r["clock"]) for r in session.reports] == [(2, 2), (4, 4), (5, 5)]
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["kind"] == "train" for r in session.reports)


def test_a_worker_that_restarts_carries_on_from_the_clock_the_shards_have_for_it():
    session = RecordingSession("train.steps=6", "train.push_every=2", "train.fetch_every=2")
    session.client.shard_clocks = [2, 3]       # the lowest: the shard at 3 ignores our clock 2 as a repeat
    loop.train(session)
    assert [(t.op, t.clock) for t in session.client.trips] == [(P.PULL, 0), (P.PUSH, 2)]   # steps 4 and 5


def test_a_bsp_worker_that_rejoins_carries_on_from_the_latest_clock_any_shard_applied_without_it():
    session = RecordingSession("train.steps=8", "consistency.mode=bsp")
    session.client.shard_clocks = [6, 5]       # shard 0 applied clock 5 before we joined: nobody takes it again
    loop.train(session)
    assert [(t.op, t.clock) for t in session.client.trips][:2] == [(P.PULL, 0), (P.PUSH_PULL, 6)]


def test_a_poisoned_gradient_stops_the_job_before_it_is_pushed():
    session = RecordingSession("train.steps=6", "faults=[{kind: nan, role: worker, rank: 0, at_step: 2}]")
    with pytest.raises(Garbage, match="gradient norm is nan at step 2"):
        loop.train(session)
    assert [(t.op, t.clock) for t in session.client.trips[1:]] == [(P.PUSH_PULL, 0), (P.PUSH_PULL, 1)]  # steps 0, 1


def test_the_worker_stops_at_once_when_the_evaluator_ends_training_early():
    session = RecordingSession("train.steps=6")
    session.state = P.FINISHING
    loop.train(session)
    assert sent(session) == [(P.PULL, 0, 0, 0)] and session.step == 0


def test_accrued_gradients_alternate_buffers_so_a_push_in_flight_stays_untouched():
    flat = types.SimpleNamespace(gather_grads=lambda out: out.fill(grads.pop(0)),
                                 add_grads=lambda out: out.__iadd__(grads.pop(0)))
    grads = [1.0, 3.0, 5.0]
    accrued = Accrued([np.zeros(2, np.float32), np.zeros(2, np.float32)], push_every=2)
    accrued.add(flat)
    accrued.add(flat)
    first, pushed = accrued.take()
    assert pushed is first                                    # the norm and clipping act on it
    accrued.add(flat)
    np.testing.assert_array_equal(first, [2.0, 2.0])          # the mean, and still there
    np.testing.assert_array_equal(accrued.take()[0], [5.0, 5.0])


def test_overlap_is_for_async_only():
    client = object()
    assert isinstance(overlap.for_job({"train": {"overlap": True}, "consistency": {"mode": "async"}}, client),
                      overlap.Overlapped)
    for mode, on in (("ssp", True), ("bsp", True), ("async", False)):
        chosen = overlap.for_job({"train": {"overlap": on}, "consistency": {"mode": mode}}, client)
        assert isinstance(chosen, overlap.Blocking)


def test_a_non_finite_loss_is_garbage_and_a_norm_far_above_its_median_is_an_alarm_not_a_stop():
    session = types.SimpleNamespace(name="worker-0", clock=7, reports=[])
    session.control = types.SimpleNamespace(report=session.reports.append)
    alarms = Alarms(session)
    with pytest.raises(Garbage, match="loss is inf at step 3"):
        alarms.check_loss(float("inf"), 3)
    for _ in range(20):
        alarms.check_norm(np.ones(4, np.float32), 0)                  # norm 2
    assert alarms.check_norm(np.full(4, 150, np.float32), 21) == 300
    assert session.reports == [{"kind": "alarm", "fatal": False, "clock": 7,
                                "message": "gradient norm jumped to 300 (150x median)"}]


class CountingData:
    """Batches that say who drew them: (rank, world, epoch, n-th batch)."""

    def steps_per_epoch(self, batch_size, world):
        return 4

    def batches(self, rank, world, batch_size, seed, epoch_start=0):
        n = 0
        while True:
            yield (rank, world, epoch_start + n // 4, n), None
            n += 1


def test_the_survivors_re_cut_the_data_among_themselves_from_the_next_epoch():
    session = types.SimpleNamespace(live=[0, 1, 2], rank=1, world=3, name="worker-1")
    partition = Partition(CountingData(), session, batch_size=8, seed=0, sharing=3)
    assert [partition.next(s)[0] for s in range(2)] == [(1, 3, 0, 0), (1, 3, 0, 1)]
    session.live = [1, 2]                                             # worker 0 died
    assert partition.next(2)[0] == (0, 2, 1, 0)                       # rank 0 of 2, epoch 1


def test_external_workers_bring_their_own_data_so_the_jobs_own_workers_cut_it_among_themselves():
    session = types.SimpleNamespace(live=[], rank=1, world=4, name="worker-1")   # workers: {count: 2, external: 2}
    partition = Partition(CountingData(), session, batch_size=8, seed=0, sharing=2)
    assert partition.next(0)[0] == (1, 2, 0, 0)                       # before the first heartbeat: half
    session.live = [0, 1, 2, 3]
    assert partition.next(1)[0] == (1, 2, 0, 1)                       # the external 2 and 3 change nothing
    session.live = [1, 2, 3]                                          # worker 0 died
    assert partition.next(2)[0] == (0, 1, 1, 0)                       # all of it, from the next epoch


def test_batches_peeked_at_for_a_read_by_rows_are_the_ones_the_next_steps_train_on():
    session = types.SimpleNamespace(live=[0], rank=0, world=1, name="worker-0")
    partition = Partition(CountingData(), session, batch_size=8, seed=0, sharing=1)
    assert partition.next(0)[0][3] == 0
    served = [x[3] for x, _ in partition.peek(0, first=1, count=2)]   # overlapped: from step 2 on
    assert served == [2, 3]
    assert [partition.next(s)[0][3] for s in (1, 2, 3, 4)] == [1, 2, 3, 4]
