"""The Downpour worker loop (Dean et al., 2012).

Downpour SGD's client, step after step: compute the gradient of a minibatch and add it to the
accrued gradients; exchange with the shards (push the mean of the accrued gradients every
`push_every` steps, read the weights every `fetch_every`: a push followed by a read goes out as
one PUSH_PULL round trip per shard); report loss and clock. The clock is the number of pushes
made; under SSP/BSP the shards hold a read back until the consistency model allows it.

Each part of a step lives in a small module of its own: the data partition (`partition.py`),
the accrued gradients (`accrued.py`), whether a round trip travels while the next step computes
(`overlap.py`), the keys a read or push names when tables travel by rows (`rows.py`), the
checks that stop garbage before it is pushed (`alarms.py`) and the training reports
(`progress.py`).

A worker that joins late, restarts or resumes learns from its first read the clock the shards
have on record for it and carries on from there. A loss or gradient that is not finite is
reported as an alarm and stops the job before it is pushed: nobody trains on garbage.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator

import numpy as np

from downpour.model import optim
from downpour.ps import protocol as P
from downpour.ps.faults import FaultPlan

from . import overlap
from .accrued import Accrued
from .alarms import Alarms, Garbage
from .job import build_job
from .objective import batch_loss
from .partition import Partition
from .progress import Progress
from .rows import AccruedByRows, AllKeys, ByRows, RowPlan
from .session import JobEnded, Session

log = logging.getLogger(__name__)


def run(coordinator: str, rank: int | None = None, startup_timeout: float = 60.0, configure=None) -> int:
    """The `downpour worker` role. Returns an exit code."""
    session = Session(coordinator, P.WORKER, rank, startup_timeout, configure)
    try:
        train(session)
        session.control.done({"clock": session.clock, "step": session.step})
        return 0
    except JobEnded as ended:
        log.log(logging.INFO if session.state == P.DONE_STATE else logging.WARNING, "%s: %s", session.name, ended)
        return 1 if session.coordinator_lost else 0  # we ended with the job, in order
    except Garbage as alarm:
        log.error("%s: %s", session.name, alarm)
        session.control.report({"kind": "alarm", "fatal": True, "clock": session.clock,
                                "step": session.step, "message": str(alarm)})
        return 1
    except Exception:
        log.exception("%s failed at step %d (clock %d)", session.name, session.step, session.clock)
        return 1
    finally:
        session.close()


def train(session: Session) -> None:
    """Train this worker's share of the job, from where the shards have it to the last step."""
    worker = Worker(session)
    for step in worker.steps():
        x, y = worker.partition.next(step)
        loss = worker.compute(step, x, y)
        worker.exchange(step)
        worker.report(step, loss, len(x))
    worker.trips.settle()


@dataclasses.dataclass(frozen=True)
class Cadence:
    """Which steps end in a push, and which in a read (DistBelief's n_push and n_fetch)."""

    steps: int
    push_every: int
    fetch_every: int

    def last(self, step: int) -> bool:
        return step == self.steps - 1

    def push_after(self, step: int) -> bool:
        """The last step pushes too, whatever it has accrued."""
        return (step + 1) % self.push_every == 0 or self.last(step)

    def fetch_after(self, step: int) -> bool:
        """No step reads after the last."""
        return not self.last(step) and (step + 1) % self.fetch_every == 0


class Worker:
    """One worker's model, data and client, and the parts of a step they share."""

    def __init__(self, session: Session):
        cfg, t = session.config, session.config["train"]
        self.session = session
        job = build_job(cfg, session.layout, session.rank)
        self.net, self.flat, self.kind, self.loss = job.net, job.flat, job.data.kind, job.loss
        self.faults = FaultPlan(cfg["faults"], P.WORKER, session.rank, cfg["seed"], session.restarted)
        session.heartbeat.paused = self.faults.partitioned
        self.client = session.shard_client(self.faults)
        self.cadence = Cadence(t["steps"], t["push_every"], t["fetch_every"])
        self.clip_norm = t["clip_norm"]
        self.trips = overlap.for_job(cfg, self.client)
        self.partition = Partition(job.data, session, t["batch_size"], cfg["seed"], cfg["workers"]["count"])
        buffers = self.client.gradient_buffers(self.trips.buffers)
        if cfg["compression"]["rows"]:
            plan = RowPlan(self.net, self.flat)
            self.keys = ByRows(plan, self.partition, self.trips.ahead, t["fetch_every"])
            self.accrued = AccruedByRows(buffers, self.flat, plan)
        else:
            self.keys, self.accrued = AllKeys(), Accrued(buffers, t["push_every"])
        self.alarms = Alarms(session)
        self.first = self._first_read()
        log.info("%s: steps %d..%d of batch %d on %s (%s%s)", session.name, self.first, t["steps"], t["batch_size"],
                 job.data.name, cfg["consistency"]["mode"], self.trips.label)
        self.progress = Progress(t["log_every"])
        self.net.train()

    def _first_read(self) -> int:
        """Read every weight (the model keeps the frames they came in as its memory); a restart or
        resume carries on from the clock the shards have on record for us. Returns the first step."""
        session = self.session
        self.client.pull(session.clock, self.flat)
        on_record = self.client.resume_clock(session.config["consistency"]["mode"] == "bsp")
        if on_record > session.clock:
            session.clock = on_record
            log.info("%s: the shards have us at clock %d: resuming there", session.name, session.clock)
        return session.clock * self.cadence.push_every

    def steps(self) -> Iterator[int]:
        """The steps left, each once the job is still on and the faults due by it have struck;
        none after the evaluator has stopped training early."""
        session = self.session
        for step in range(self.first, self.cadence.steps):
            session.check()
            if session.state == P.FINISHING:
                log.info("%s: training ended early at step %d (%s)", session.name, step, session.reason)
                return
            self.faults.at_step(step)
            while self.faults.partitioned():
                time.sleep(0.05)
            yield step

    def compute(self, step: int, x: np.ndarray, y: np.ndarray) -> float:
        """The loss of batch (x, y); its gradient joins the accrued ones."""
        self.keys.computed(x)
        loss = batch_loss(self.net, self.kind, x, y, self.loss)
        value = self.alarms.check_loss(float(loss.item()), step)
        self.net.zero_grad()
        loss.backward()
        self.accrued.add(self.flat)
        if self.faults.poisons(step):
            self.accrued.poison()
        return value

    def exchange(self, step: int) -> None:
        """Push and read as the cadence says, in one round trip: waited for now, or (overlapped)
        at the next step's exchange, after that step's compute."""
        self.trips.settle()  # the previous step's round trip: its weights serve the next step
        fetch, push = self.cadence.fetch_after(step), self.cadence.push_after(step)
        if not (fetch or push):
            return
        keys = self.keys.read(step) if fetch else {}
        op, grad = P.PULL, None
        if push:
            keys.update(self.keys.pushed())
            op = P.PUSH_PULL if fetch else P.PUSH
            grad, values = self._outgoing(step, keys.get("grad_spans"))
            if "grad_spans" in keys:  # by rows: the values pushed, packed, as they are already
                keys["grad_values"] = values
        trip = self.client.start(op, self.session.clock, grad, self.flat if fetch else None, **keys)
        if push:
            self.session.clock += 1
        self.trips.send(trip, last=self.cadence.last(step))

    def _outgoing(self, step: int, keys) -> tuple[np.ndarray, np.ndarray]:
        """The mean of the accrued gradients, checked and clipped: what the push sends, and the
        values of the keys it carries, packed (by rows, only those are read and written)."""
        grad, pushed = self.accrued.take(keys)
        self.alarms.check_norm(pushed, step)
        if self.clip_norm:
            optim.clip_grad_norm_(pushed, self.clip_norm)
            self.accrued.clipped(pushed)
        return grad, pushed

    def report(self, step: int, loss: float, samples: int) -> None:
        """Count the step done; every `log_every` steps (and at the last) report to the coordinator."""
        session = self.session
        session.step = step + 1
        self.progress.add(loss, samples)
        if self.progress.due(session.step, self.cadence.last(step)):
            session.control.report({"kind": "train", "step": session.step, "clock": session.clock,
                                    **self.progress.take(self.client, self.alarms.last_norm)})
