"""The Downpour worker loop (Dean et al., 2012).

Pull the weights every `fetch_every` steps, compute a minibatch gradient, accumulate, and push
the mean of the accumulated gradients every `push_every` steps. A push that is followed by a
pull goes out as one PUSH_PULL round trip per shard. The clock is the number of pushes made;
under SSP/BSP the shards hold a read back until the consistency model allows it.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from model import optim
from ps import protocol as P
from ps.client.faults import FaultPlan

from .job import build_job
from .objective import batch_loss
from .session import JobEnded, Session

log = logging.getLogger(__name__)


def run(coordinator: str, rank: int | None = None, startup_timeout: float = 60.0) -> int:
    """The `downpour worker` role. Returns an exit code."""
    session = Session(coordinator, P.WORKER, rank, startup_timeout)
    try:
        train(session)
        session.control.done({"clock": session.clock, "step": session.step})
        return 0
    except JobEnded as ended:
        log.warning("%s: %s", session.name, ended)
        return 0 if session.state == P.STOPPED else 1
    except Exception:
        log.exception("%s failed at step %d (clock %d)", session.name, session.step, session.clock)
        return 1
    finally:
        session.close()


def train(session: Session) -> None:
    cfg = session.config
    t = cfg["train"]
    job = build_job(cfg, session.layout, session.rank)
    net, flat, data = job.net, job.flat, job.data
    batches = data.batches(session.rank, session.world, t["batch_size"], cfg["seed"])
    client = session.shard_client()
    steps, push_every, fetch_every = t["steps"], t["push_every"], t["fetch_every"]
    grad = np.zeros_like(flat.data)
    acc = np.zeros_like(flat.data) if push_every > 1 else grad
    accumulated = 0
    faults = FaultPlan(cfg["faults"], P.WORKER, session.rank, cfg["seed"])
    log.info("%s: %d steps of batch %d on %s (%s)", session.name, steps, t["batch_size"],
             data.name, cfg["consistency"]["mode"])
    client.pull(session.clock, flat.data)
    window_start, window_samples, losses = time.perf_counter(), 0, []
    net.train()
    for step in range(steps):
        session.check()
        x, y = next(batches)
        loss = batch_loss(net, data.kind, x, y)
        net.zero_grad()
        loss.backward()
        flat.gather_grads(out=grad)
        if acc is not grad:
            acc += grad
        accumulated += 1
        losses.append(float(loss.item()))
        window_samples += len(x)
        last = step == steps - 1
        fetch_next = not last and (step + 1) % fetch_every == 0
        if (step + 1) % push_every == 0 or last:
            if accumulated > 1:
                acc /= accumulated
            if t["clip_norm"]:
                optim.clip_grad_norm_(acc, t["clip_norm"])
            faults.delay("push")
            if fetch_next:
                client.push_pull(acc, session.clock, flat.data)
            else:
                client.push(acc, session.clock)
            session.clock += 1
            if acc is not grad:
                acc[:] = 0
            accumulated = 0
        elif fetch_next:
            client.pull(session.clock, flat.data)
        session.step = step + 1
        if session.step % t["log_every"] == 0 or last:
            elapsed = time.perf_counter() - window_start
            session.control.report({
                "kind": "train", "step": session.step, "clock": session.clock,
                "loss": float(np.mean(losses)), "samples_per_s": window_samples / max(elapsed, 1e-9),
                "bytes_sent": client.bytes_sent, "bytes_received": client.bytes_received})
            window_start, window_samples, losses = time.perf_counter(), 0, []
    client.close()
