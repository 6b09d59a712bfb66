"""Training in one process, with the same model, data order and update rule as the cluster.

This is the reference a distributed run is checked against (a BSP run with K workers of batch
b equals this run with batch K*b), and a quick way to try a config without starting a cluster.
A model with row tables (sparse models) is stepped at the rows each batch touches, as a job by
rows is on the shards, where the rule allows it (`steps_by_rows`): no pass over the table a step.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from downpour.model import optim
from downpour.model.optim import schedule

from .job import Job, build_job
from .objective import batch_loss

log = logging.getLogger(__name__)


def train_local(config: dict, steps: int | None = None, batch_size: int | None = None) -> tuple[Job, dict]:
    """Train `config`'s model for `steps` steps of `batch_size`; return the job and test metrics."""
    t = config["train"]
    steps = steps or t["steps"]
    batch_size = batch_size or t["batch_size"]
    job = build_job(config)
    opt, lr_schedule = schedule.split(config["optimizer"], steps)
    rule = optim.make(opt.pop("type"), **opt)
    tables = getattr(job.net, "row_tables", tuple)()
    by_rows = bool(tables) and rule.steps_by_rows and isinstance(job.flat.data, np.ndarray)
    grad = None if by_rows else np.zeros_like(job.flat.data)
    batches = job.data.batches(0, 1, batch_size, config["seed"])
    job.net.train()
    started = time.perf_counter()
    for step in range(steps):
        x, y = next(batches)
        loss = batch_loss(job.net, job.data.kind, x, y, job.loss)
        job.net.zero_grad()
        loss.backward()
        if lr_schedule.kind != "constant":  # as the shards do (ftrl has no rate to set)
            rule.lr = lr_schedule.lr_at(step)
        if by_rows:
            positions, values = job.flat.grads_at()
            if t["clip_norm"]:
                optim.clip_grad_norm_(values, t["clip_norm"])
            rule.step_at(job.flat.data, values, positions)
        else:
            job.flat.gather_grads(out=grad)
            if t["clip_norm"]:
                optim.clip_grad_norm_(grad, t["clip_norm"])
            rule.step(job.flat.data, grad)
        if (step + 1) % t["log_every"] == 0:
            log.info("step %d loss %.4f", step + 1, loss.item())
    metrics = job.evaluate("test")
    metrics["wall_seconds"] = time.perf_counter() - started
    return job, metrics
