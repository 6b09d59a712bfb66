"""The evaluator: a worker-side role that scores the weights the shards hold.

It takes no part in training. Every `eval.every` clocks (of the slowest live worker) it pulls
the weights and scores the validation split (the test split if the job keeps none), writing
the figures to the run's metrics. With `eval.early_stopping` it keeps the best weights seen and
ends training once the watched metric has not improved for `patience` evaluations; the final
weights are the last contenders. At the end it scores the test split on the final (or best)
weights and sends them, with the figures, to the coordinator, which exports them and writes
the run's summary.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

from downpour.ps import protocol as P

from .job import Job, build_job
from .session import JobEnded, Session

log = logging.getLogger(__name__)


def run(coordinator: str, startup_timeout: float = 60.0, configure=None) -> int:
    """The `downpour evaluator` role. Returns an exit code."""
    session = Session(coordinator, P.EVALUATOR, None, startup_timeout, configure)
    try:
        job = build_job(session.config, session.layout)
        client = session.shard_client()
        best = watch(session, job, client)
        client.pull(0, job.flat.data)
        if best is not None:  # the final weights against the best seen, by the same measure
            final = job.evaluate(best.split)[best.metric]
            if not _better(session.config["eval"]["early_stopping"], final, best.value):
                job.flat.data[:] = best.weights
        metrics = job.evaluate("test")
        if _has_validation(job):
            metrics.update(job.evaluate("val"))
        log.info("final metrics: %s", ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        session.control.result(metrics, _weights_to_send(session, job))
        return 0
    except JobEnded as ended:
        log.warning("evaluator: %s", ended)
        return 1 if session.coordinator_lost else 0  # we ended with the job, in order
    except Exception:
        log.exception("the evaluator failed")
        return 1
    finally:
        session.close()


def _weights_to_send(session: Session, job: Job) -> np.ndarray | None:
    """The evaluated weights for the coordinator to export, unless they would not fit one
    message (a table of hundreds of MB): then the checkpoints hold them (`downpour export`)."""
    limit = session.config["cluster"]["max_message_mb"] * (1 << 20)
    if job.flat.data.nbytes > limit - (1 << 20):
        log.warning("the model (%.0f MB) is over cluster.max_message_mb (%g): no model/weights.npz from the "
                    "evaluator; `downpour export RUN_DIR` assembles it from the checkpoints",
                    job.flat.data.nbytes / (1 << 20), session.config["cluster"]["max_message_mb"])
        return None
    return job.flat.data


def _has_validation(job: Job) -> bool:
    return job.data.has_split("val")


class Best(NamedTuple):
    """The best weights early stopping has seen, and the measure they won by."""
    weights: np.ndarray
    split: str
    metric: str
    value: float


def _better(stopping: dict, value: float, than: float | None) -> bool:
    return than is None or (value < than if stopping["mode"] == "min" else value > than)


def watch(session: Session, job: Job, client) -> Best | None:
    """Evaluate every `eval.every` clocks until training ends. With early stopping on, return
    the best weights seen, with the split, metric and value they were judged by (None
    otherwise, or if nothing was evaluated: the final weights are the ones to score)."""
    cfg = session.config["eval"]
    every, stopping = cfg["every"], cfg["early_stopping"]
    split = "val" if _has_validation(job) else "test"
    best, best_value, patience_left = None, None, stopping["patience"] if stopping else 0
    next_clock = every
    while True:
        try:
            session.wait_for({P.FINISHING}, timeout=0.2)
            return Best(best, split, stopping["metric"], best_value) if best is not None else None
        except TimeoutError:
            pass
        if not every or session.min_clock < next_clock:
            continue
        clock = session.min_clock
        next_clock = clock + every
        client.pull(0, job.flat.data)
        metrics = job.evaluate(split)
        session.control.report({"kind": split, "clock": clock, **metrics})
        if not stopping:
            continue
        value = metrics[stopping["metric"]]
        if _better(stopping, value, best_value):
            best, best_value, patience_left = job.flat.data.copy(), value, stopping["patience"]
            continue
        patience_left -= 1
        if patience_left <= 0:
            reason = (f"early stopping: {stopping['metric']} best {best_value:.4f}, "
                      f"no better in {stopping['patience']} evaluations")
            log.info("%s", reason)
            session.control.report({"kind": "early_stop", "clock": clock, "message": reason})
            session.wait_for({P.FINISHING})
            return Best(best, split, stopping["metric"], best_value)
