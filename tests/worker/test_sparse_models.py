"""The sparse models: built by name from a job's `model:` section over a hashed data set; the
table's gradient is a RowSparse of the rows the batch read, and those are the rows the worker
reads and pushes by rows (`rows_used`)."""
import pathlib

import numpy as np
import pytest

from downpour.model import RowSparse
from downpour.worker import models
from downpour.worker.datasets.hashing import Featurizer, HashedTexts
from downpour.worker.objective import batch_loss

INFO = {"input_shape": (1 << 16,), "num_classes": 3, "kind": "classification"}
BATCH = HashedTexts(["guten tag", "buenos días", "good day"], Featurizer("char", 1, 3, 1 << 16))


@pytest.mark.parametrize("section", [{"type": "sparse_logreg"}, {"type": "fasttext", "dim": 4, "hidden": [5]}])
def test_a_sparse_model_reads_and_differentiates_only_the_rows_of_its_batch(section):
    net = models.build(section, INFO, seed=0)
    assert models.row_tables(net) == ("bag.weight",)
    loss = batch_loss(net, "classification", BATCH, np.array([0, 1, 2]))
    net.zero_grad()
    loss.backward()
    grad = net.bag.weight.grad
    assert isinstance(grad, RowSparse) and grad.shape == net.bag.weight.shape
    assert set(grad.rows.tolist()) == set(BATCH.ids.tolist()) == set(net.rows_used(BATCH)["bag.weight"].tolist())


def test_logistic_regression_starts_at_zero_and_guesses_uniformly():
    net = models.build({"type": "sparse_logreg"}, INFO, seed=0)
    assert not net.bag.weight.data.any() and not net.bias.data.any()
    loss = batch_loss(net, "classification", BATCH, np.array([0, 1, 2]))
    assert np.isclose(loss.item(), np.log(3))


def test_a_sparse_model_on_dense_data_or_with_bad_settings_is_refused_by_name():
    with pytest.raises(models.ModelConfigError, match="sparse_logreg: needs a sparse classification data set"):
        models.build({"type": "sparse_logreg"}, {"input_shape": (1, 8, 8), "num_classes": 10,
                                                 "kind": "classification"}, seed=0)
    with pytest.raises(models.ModelConfigError, match="model.dim 0"):
        models.build({"type": "fasttext", "dim": 0}, INFO, seed=0)
    with pytest.raises(models.ModelConfigError, match="model.width: not used by fasttext"):
        models.build({"type": "fasttext", "width": 3}, INFO, seed=0)


@pytest.mark.parametrize("optimizer", ["{type: ftrl, alpha: 1.0, l1: 0.001}", "{type: adagrad, lr: 0.5}",
                                       "{type: lazy_adam, lr: 0.01}"])
def test_training_in_one_process_steps_only_the_touched_rows_and_equals_the_dense_step(monkeypatch, optimizer):
    from downpour.model.optim.base import Rule
    from downpour.ps import config as job_config
    from downpour.worker.local import train_local

    cfg = job_config.load(pathlib.Path(__file__).parents[2] / "configs" / "fortunes_langid.yaml",
                          ["data.features.buckets=1048576", "train.steps=12", "train.batch_size=16",
                           "train.clip_norm=0.5", f"optimizer={optimizer}"])
    stepped_at = []
    step_at = Rule.step_at
    monkeypatch.setattr(Rule, "step_at", lambda self, p, g, at: stepped_at.append(at.size) or step_at(self, p, g, at))
    by_rows, _ = train_local(cfg)
    assert len(stepped_at) == 12 and max(stepped_at) < by_rows.flat.size // 20   # a few % of the table a step
    monkeypatch.setattr(Rule, "steps_by_rows", property(lambda self: False))      # the dense step instead
    if "lazy" in optimizer:   # a lazy rule steps only the rows pushed: that is its point, and the difference
        with pytest.raises(AssertionError):
            np.testing.assert_array_equal(by_rows.flat.data, train_local(cfg)[0].flat.data)
        return
    np.testing.assert_array_equal(by_rows.flat.data, train_local(cfg)[0].flat.data)
