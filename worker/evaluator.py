"""The evaluator: a worker-side role that scores the weights the shards hold.

It takes no part in training. Every `eval.every` clocks (of the slowest live worker) it pulls
the weights and scores the validation split (the test split if the job keeps none), writing
the figures to the run's metrics. With `eval.early_stopping` it keeps the best weights seen and
ends training once the watched metric has not improved for `patience` evaluations. At the end
it scores the test split on the final (or best) weights and sends them, with the figures, to
the coordinator, which exports them and writes the run's summary.
"""
from __future__ import annotations

import logging

import numpy as np

from ps.client import protocol as P

from .job import Job, build_job
from .objective import evaluate
from .session import JobEnded, Session

log = logging.getLogger(__name__)


def run(coordinator: str, startup_timeout: float = 60.0, configure=None) -> int:
    """The `downpour evaluator` role. Returns an exit code."""
    session = Session(coordinator, P.EVALUATOR, None, startup_timeout, configure)
    try:
        job = build_job(session.config, session.layout)
        client = session.shard_client()
        best = watch(session, job, client)
        if best is None:
            client.pull(0, job.flat.data)
        else:
            job.flat.data[:] = best
        metrics = evaluate(job.net, job.data, "test")
        if _has_validation(job):
            metrics.update(evaluate(job.net, job.data, "val"))
        log.info("final metrics: %s", ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        client.close()
        session.control.result(metrics, job.flat.data)
        return 0
    except JobEnded as ended:
        log.warning("evaluator: %s", ended)
        return 0 if session.state == P.STOPPED else 1
    except Exception:
        log.exception("the evaluator failed")
        return 1
    finally:
        session.close()


def _has_validation(job: Job) -> bool:
    data = job.data
    return len(data.y_val if data.kind == "classification" else data.val_ids) > 0


def watch(session: Session, job: Job, client) -> np.ndarray | None:
    """Evaluate every `eval.every` clocks until training ends; return the best weights when
    early stopping is on (None otherwise: the final weights are the ones to score)."""
    cfg = session.config["eval"]
    every, stopping = cfg["every"], cfg["early_stopping"]
    split = "val" if _has_validation(job) else "test"
    best, best_value, patience_left = None, None, stopping["patience"] if stopping else 0
    next_clock = every
    while True:
        try:
            session.wait_for({P.FINISHING}, timeout=0.2)
            return best
        except TimeoutError:
            pass
        if not every or session.min_clock < next_clock:
            continue
        clock = session.min_clock
        next_clock = clock + every
        client.pull(0, job.flat.data)
        metrics = evaluate(job.net, job.data, split)
        session.control.report({"kind": split, "clock": clock, **metrics})
        if not stopping:
            continue
        value = metrics[stopping["metric"]]
        better = best_value is None or (value < best_value if stopping["mode"] == "min" else value > best_value)
        if better:
            best, best_value, patience_left = job.flat.data.copy(), value, stopping["patience"]
            continue
        patience_left -= 1
        if patience_left <= 0:
            reason = f"early stopping: {stopping['metric']} best {best_value:.4f}, no better in {stopping['patience']} evaluations"
            log.info("%s", reason)
            session.control.report({"kind": "early_stop", "clock": clock, "message": reason})
            session.wait_for({P.FINISHING})
            return best
