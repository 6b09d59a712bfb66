"""`downpour.train`: the one-process reference run of a job config, no cluster."""
from __future__ import annotations

import numpy as np

from . import spec


def train(config: spec.Config, overrides: spec.Overrides = None) -> dict:
    """Train `config` in this process, with the same model, data order and update rule as the
    cluster (a BSP run of K workers of batch b equals this run with batch K*b).

    Returns a summary in the shape of a cluster run's where they overlap: `name`, `status`,
    `metrics` (the test metrics), `wall_seconds`, plus `state_dict`, the trained weights by
    PyTorch parameter name."""
    from downpour.model.backend import to_numpy
    from downpour.worker.local import train_local
    cfg = spec.resolve(config, overrides)
    job, metrics = train_local(cfg)
    wall = metrics.pop("wall_seconds")
    state = {name: np.array(to_numpy(p.data), dtype=np.float32) for name, p in job.net.named_parameters()}
    return {"name": cfg["name"], "status": "done", "steps": cfg["train"]["steps"], "metrics": metrics,
            "wall_seconds": wall, "state_dict": state}
