"""Everything a worker-side process builds from the job config: data, model, flat parameters."""
from __future__ import annotations

import dataclasses

import numpy as np

from downpour.model import backend
from downpour.model.flat import FlatParameters
from downpour.ps.layout import Layout

from . import datasets, models


@dataclasses.dataclass
class Job:
    config: dict
    data: datasets.Dataset
    net: object
    flat: FlatParameters


def load_data(config: dict) -> datasets.Dataset:
    d = config["data"]
    return datasets.load(d["dataset"], validation=d["validation"], seed=config["seed"],
                         limit_train=d["limit_train"], seq_len=d["seq_len"], max_chars=d["max_chars"],
                         features=d["features"])


def select_device(device: str) -> None:
    """Switch the engine to the job's device before anything is built: fails at start, with
    what to install, when `device: cuda` cannot be honoured here (no CuPy, or no GPU)."""
    backend.use(device)


def build_job(config: dict, layout: Layout | None = None, rank: int = 0) -> Job:
    """Load the data and build the seeded model; check it matches the cluster's layout."""
    select_device(config["device"])
    data = load_data(config)
    net = models.build(config["model"], models.data_info(data), config["seed"])
    _seed_dropout(net, config["seed"], rank)
    flat = FlatParameters(net.named_parameters())
    if layout is not None:
        mine = [(name, tuple(shape)) for name, shape in flat.specs]
        theirs = [(p.name, p.shape) for p in layout.params]
        if mine != theirs:
            raise RuntimeError("this worker's model does not match the cluster's layout: "
                               f"{mine[:3]}... vs {theirs[:3]}...")
    return Job(config, data, net, flat)


def _seed_dropout(net, seed: int, rank: int) -> None:
    """Give each worker its own dropout masks (initial weights stay identical everywhere)."""
    for module in net.modules():
        if hasattr(module, "rng") and type(module).__name__ == "Dropout":
            module.rng = np.random.default_rng([seed, rank, 0xD0])
