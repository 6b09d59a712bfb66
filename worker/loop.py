"""The Downpour worker loop (Dean et al., 2012).

Pull the weights every `fetch_every` steps, compute a minibatch gradient, accumulate, and push
the mean of the accumulated gradients every `push_every` steps. A push that is followed by a
pull goes out as one PUSH_PULL round trip per shard. In async mode (`train.overlap`, on by
default) that round trip travels while the next gradient is computed, on weights one round
older: the shard's work and the TCP copies hide behind compute, at the price of one clock of
staleness. SSP and BSP wait for every read, as their guarantees require. The clock is the number of pushes made;
under SSP/BSP the shards hold a read back until the consistency model allows it.

A worker that joins late, restarts or resumes learns from its first read the clock the shards
have on record for it and carries on from there. When workers die, the survivors re-cut the
data among themselves, so no partition goes unread. A loss or gradient that is not finite is
reported as an alarm and stops the job before it is pushed: nobody trains on garbage.
"""
from __future__ import annotations

import collections
import logging
import math
import time

import numpy as np

from downpour.model import optim
from downpour.ps import protocol as P
from downpour.ps.faults import FaultPlan

from .job import build_job
from .objective import batch_loss
from .rows import RowPlan
from .session import JobEnded, Session

log = logging.getLogger(__name__)


class Garbage(RuntimeError):
    """A non-finite loss or gradient: the job must stop rather than train on it."""


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


class _Partition:
    """This worker's share of the training data, re-cut when the set of live workers changes."""

    def __init__(self, data, session: Session, batch_size: int, seed: int):
        self.data, self.session, self.batch_size, self.seed = data, session, batch_size, seed
        self.live: tuple[int, ...] = ()
        self.epoch = 0
        self.batches = None
        self.ahead: collections.deque = collections.deque()  # batches drawn early by `peek`

    def next(self, step: int):
        return self.ahead.popleft() if self.ahead else self._draw(step)

    def peek(self, step: int, first: int, count: int) -> list:
        """The `count` batches from step step + 1 + first on, drawn now (their rows are read
        before the steps that use them) and handed out by `next` in turn."""
        while len(self.ahead) < first + count:
            self.ahead.append(self._draw(step + 1 + len(self.ahead)))
        return [self.ahead[i] for i in range(first, first + count)]

    def _draw(self, step: int):
        live = tuple(sorted(self.session.live)) or (self.session.rank,)
        if self.session.rank not in live:
            live = tuple(sorted(live + (self.session.rank,)))
        if live != self.live:
            if self.live:
                log.info("%s: workers now %s: re-cutting the data", self.session.name, list(live))
            per_epoch = max(1, self.data.steps_per_epoch(self.batch_size, len(live)))
            self.epoch = step // per_epoch + (1 if self.live else 0)
            rank, world = live.index(self.session.rank), len(live)
            if not self.live and self.session.world > len(live):  # before the first heartbeat
                rank, world = self.session.rank, self.session.world
            self.batches = self.data.batches(rank, world, self.batch_size, self.seed, epoch_start=self.epoch)
            self.live = live
        return next(self.batches)


def train(session: Session) -> None:
    cfg = session.config
    t = cfg["train"]
    job = build_job(cfg, session.layout, session.rank)
    net, flat, data = job.net, job.flat, job.data
    faults = FaultPlan(cfg["faults"], P.WORKER, session.rank, cfg["seed"], session.restarted)
    session.heartbeat.paused = faults.partitioned
    client = session.shard_client(faults)
    steps, push_every, fetch_every = t["steps"], t["push_every"], t["fetch_every"]
    # With overlap the round trip of one step travels while the next step computes, so the
    # gradient it sent must stay untouched until it is answered: two buffers, taken in turn.
    overlap = t["overlap"] and cfg["consistency"]["mode"] == "async"
    # By rows: a pull reads the keys of the batches it serves, which start one step later
    # when it overlaps the next step's compute; a push sends those of the batches it sums.
    plan = RowPlan(net, flat) if cfg["compression"]["rows"] else None
    computed: list[np.ndarray] = []  # the inputs of the batches since the last push
    outgoing = client.gradient_buffers(2 if overlap else 1)
    scratch = np.zeros_like(flat.data) if push_every > 1 else None
    in_flight = None
    accumulated = 0
    client.pull(session.clock, flat)  # the model reads its weights in the frames they came in
    if client.clock_hint > session.clock:  # a restart or resume: carry on where we left off
        session.clock = client.clock_hint
        log.info("%s: the shards have us at clock %d: resuming there", session.name, session.clock)
    first = session.clock * push_every
    partition = _Partition(data, session, t["batch_size"], cfg["seed"])
    log.info("%s: steps %d..%d of batch %d on %s (%s%s)", session.name, first, steps, t["batch_size"],
             data.name, cfg["consistency"]["mode"], ", overlapped" if overlap else "")
    window_start, window_samples, losses = time.perf_counter(), 0, []
    norms: list[float] = []
    net.train()
    for step in range(first, steps):
        session.check()
        if session.state == P.FINISHING:  # early stopping: the evaluator has seen enough
            log.info("%s: training ended early at step %d (%s)", session.name, step, session.reason)
            break
        faults.at_step(step)
        while faults.partitioned():
            time.sleep(0.05)
        x, y = partition.next(step)
        if plan is not None:
            computed.append(x)
        loss = batch_loss(net, data.kind, x, y)
        value = float(loss.item())
        if not math.isfinite(value):
            raise Garbage(f"loss is {value} at step {step}: stopping before pushing it")
        net.zero_grad()
        loss.backward()
        acc = outgoing[session.clock % len(outgoing)]
        if accumulated == 0:
            flat.gather_grads(out=acc)
        else:
            flat.gather_grads(out=scratch)
            acc += scratch
        if faults.poisons(step):
            acc[0] = np.nan
        accumulated += 1
        losses.append(value)
        window_samples += len(x)
        if in_flight is not None:  # the previous step's round trip: its weights serve the next step
            client.finish(in_flight)
            in_flight = None
        last = step == steps - 1
        fetch_next = not last and (step + 1) % fetch_every == 0
        trip = None
        rows = {}
        if plan is not None and fetch_next:
            served = partition.peek(step, 1 if overlap else 0, fetch_every)
            rows["read_spans"] = plan.keys(x_next for x_next, _ in served)
        if (step + 1) % push_every == 0 or last:
            if accumulated > 1:
                acc /= accumulated
            norm = float(np.sqrt(np.dot(acc, acc)))
            if not math.isfinite(norm):
                raise Garbage(f"gradient norm is {norm} at step {step}: stopping before pushing it")
            _watch_norm(session, norms, norm)
            if t["clip_norm"]:
                optim.clip_grad_norm_(acc, t["clip_norm"])
            if plan is not None:
                rows["grad_spans"] = plan.keys(computed)
                computed = []
            trip = client.start(P.PUSH_PULL if fetch_next else P.PUSH, session.clock, acc,
                                flat if fetch_next else None, **rows)
            session.clock += 1
            accumulated = 0
        elif fetch_next:
            trip = client.start(P.PULL, session.clock, None, flat, **rows)
        if trip is not None:
            if overlap and not last:
                in_flight = trip
            else:
                client.finish(trip)
        session.step = step + 1
        if session.step % t["log_every"] == 0 or last:
            elapsed = time.perf_counter() - window_start
            session.control.report({
                "kind": "train", "step": session.step, "clock": session.clock, "loss": float(np.mean(losses)),
                "samples_per_s": window_samples / max(elapsed, 1e-9), "grad_norm": norms[-1] if norms else None,
                "retries": client.retries, "comm_wait_s": client.waited, "bytes_sent": client.bytes_sent,
                "bytes_received": client.bytes_received})
            window_start, window_samples, losses = time.perf_counter(), 0, []
    if in_flight is not None:
        client.finish(in_flight)


def _watch_norm(session: Session, norms: list[float], norm: float) -> None:
    """An alarm line (not a stop) when the gradient norm jumps far above its recent median."""
    if len(norms) >= 20:
        typical = float(np.median(norms[-50:]))
        if typical > 0 and norm > 100 * typical:
            log.warning("%s: gradient norm %.3g is %.0fx its recent median", session.name, norm, norm / typical)
            session.control.report({"kind": "alarm", "fatal": False, "clock": session.clock,
                                    "message": f"gradient norm jumped to {norm:.3g} ({norm / typical:.0f}x median)"})
    norms.append(norm)
