"""Everything a worker-side process builds from the job config: data, model, loss, flat parameters.

Every role and every verb builds a job here, so a user's plug-ins (`model.factory`,
`data.factory`, `loss`) are loaded the same way everywhere (see `plugins`).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from downpour.model import backend
from downpour.model.flat import FlatParameters
from downpour.model.tensor import Tensor
from downpour.ps.layout import Layout

from . import datasets, models, objective, plugins
from .datasets.custom import load_factory


@dataclasses.dataclass
class Job:
    config: dict
    data: datasets.Dataset
    net: object
    flat: FlatParameters
    loss: objective.Loss = objective.cross_entropy

    def evaluate(self, split: str = "test") -> dict:
        """The job's metrics on a split, scored with the job's loss."""
        return objective.evaluate(self.net, self.data, split, loss=self.loss)


def load_data(config: dict) -> datasets.Dataset:
    d = config["data"]
    if "factory" in d:
        return load_factory(d, config["seed"])
    return datasets.load(d["dataset"], validation=d["validation"], seed=config["seed"],
                         limit_train=d["limit_train"], seq_len=d["seq_len"], max_chars=d["max_chars"],
                         features=d["features"])


def select_device(device: str) -> None:
    """Switch the engine to the job's device before anything is built: fails at start, with
    what to install, when `device: cuda` cannot be honoured here (no CuPy, or no GPU)."""
    backend.use(device)


def build_model(config: dict, data) -> object:
    """The seeded model: a user's factory needs nothing of the data; a built-in model its shapes."""
    info = None if "factory" in config["model"] else models.data_info(data)
    return models.build(config["model"], info, config["seed"])


def build_job(config: dict, layout: Layout | None = None, rank: int = 0) -> Job:
    """Load the data and build the seeded model; check it matches the cluster's layout."""
    select_device(config["device"])
    data = load_data(config)
    net = build_model(config, data)
    _seed_dropout(net, config["seed"], rank)
    flat = FlatParameters(net.named_parameters())
    if layout is not None:
        mine = [(name, tuple(shape)) for name, shape in flat.specs]
        theirs = [(p.name, p.shape) for p in layout.params]
        if mine != theirs:
            raise RuntimeError("this worker's model does not match the cluster's layout: "
                               f"{mine[:3]}... vs {theirs[:3]}...")
    return Job(config, data, net, flat, objective.job_loss(config))


def initial_parameters(config: dict) -> list[tuple[str, np.ndarray]]:
    """The job's seeded initial weights by parameter name (what the coordinator hands out),
    once everything a job needs has been checked: the data, the model, and, where the job
    names a plug-in, one step of the model and loss on two training examples, so that a
    broken plug-in is found before anything starts (its file and line named)."""
    data = load_data(config)
    net = build_model(config, data)
    if config["compression"]["rows"]:
        models.row_tables(net)
    params = [(name, np.array(p.data, dtype=np.float32)) for name, p in net.named_parameters()]
    if "factory" in config["model"] or "factory" in config["data"] or config.get("loss"):
        _try_one_step(config, net, data)
    return params


def _try_one_step(config: dict, net, data) -> None:
    """Forward, loss and backward on two training examples; the loss must be a scalar tensor
    that depends on the model's parameters."""
    x, y = next(data.batches(0, 1, min(2, data.train_examples), config["seed"]))
    model_ref = config["model"].get("factory") or config["data"].get("factory") or config["loss"]
    output = plugins.call(net, model_ref, "model forward", objective.model_input(x))
    loss_ref = config.get("loss")
    loss_fn = objective.job_loss(config)
    setting = "loss" if loss_ref else "the default loss (cross-entropy)"
    if loss_ref is None and not isinstance(output, Tensor):
        raise plugins.PluginError(f"model: the forward pass returned a {type(output).__name__}; the default loss "
                                  "needs a tensor of class scores (or name your own loss with `loss:`)")
    if loss_ref is None:
        try:
            value = loss_fn(output, y)
        except (TypeError, ValueError) as exc:  # say what the data or the model gives, not where our code is
            raise plugins.PluginError(f"{setting}: {exc}") from exc
    else:
        value = plugins.call(loss_fn, loss_ref, setting, output, y)
    problem = None
    if not isinstance(value, Tensor):
        problem = f"returned a {type(value).__name__}; expected a scalar (0-d) tensor, the mean loss of the batch"
    elif value.size != 1:
        problem = f"returned a tensor of shape {value.shape}; expected a scalar (0-d) tensor, the batch's mean"
    elif not value.requires_grad:
        problem = ("returned a tensor that does not depend on the model's parameters: compute it from the "
                   "output with the engine's ops (Tensor arithmetic, downpour.model.functional), not NumPy")
    if problem:
        raise plugins.PluginError(f"{setting} ({plugins.where(loss_fn)}): {problem}")
    plugins.call(value.backward, model_ref, "backward pass")
    net.zero_grad()


def _seed_dropout(net, seed: int, rank: int) -> None:
    """Give each worker its own dropout masks (initial weights stay identical everywhere)."""
    for module in net.modules():
        if hasattr(module, "rng") and type(module).__name__ == "Dropout":
            module.rng = np.random.default_rng([seed, rank, 0xD0])
