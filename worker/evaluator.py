"""The evaluator: a worker-side role that scores the weights the shards hold.

It takes no part in training. When every worker has finished it pulls the final weights, scores
the test split (and the validation split, if the job keeps one) and sends the result to the
coordinator, which writes it into the run's summary.
"""
from __future__ import annotations

import logging

from ps import protocol as P

from .job import build_job
from .objective import evaluate
from .session import JobEnded, Session

log = logging.getLogger(__name__)


def run(coordinator: str, startup_timeout: float = 60.0, configure=None) -> int:
    """The `downpour evaluator` role. Returns an exit code."""
    session = Session(coordinator, P.EVALUATOR, None, startup_timeout, configure)
    try:
        job = build_job(session.config, session.layout)
        client = session.shard_client()
        session.wait_for({P.FINISHING})
        client.pull(0, job.flat.data)
        metrics = evaluate(job.net, job.data, "test")
        if len(job.data.y_val if job.data.kind == "classification" else job.data.val_ids):
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
