"""A job of a user's own model, data and loss: built the same way by every role, checked with
one step before anything starts, and trained by `downpour train`'s loop in one process."""

import numpy as np
import pytest

from downpour.ps.config import resolve
from downpour.worker import plugins
from downpour.worker.job import build_job, initial_parameters
from downpour.worker.local import train_local

SOURCE = """\
import numpy as np
from downpour.model import functional as F
from downpour.model import nn


class Net(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.first = nn.Linear(4, hidden)
        self.second = nn.Parameter(np.random.standard_normal((3, hidden)).astype(np.float32))  # NumPy's global RNG

    def forward(self, x):
        return self.first(x).tanh() @ self.second.T


def build(hidden=8):
    return Net(hidden)


def load(n=96, regression=False):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    y = (x[:, :3] * 2).astype(np.float32) if regression else np.argmax(x[:, :3], axis=1)
    return {"train": (x[:64], y[:64]), "test": (x[64:], y[64:])}


def smoothed(output, target):
    n = output.shape[0]
    soft = np.full(output.shape, 0.05, np.float32)
    soft[np.arange(n), target] += 0.85
    return -(F.log_softmax(output) * soft).sum() / n


def mse(output, target):
    return ((output - target) * (output - target)).mean()
"""


@pytest.fixture
def user(tmp_path):
    (tmp_path / "mynet.py").write_text(SOURCE)
    return tmp_path


def job(user, **sections):
    raw = {"name": "mine", "model": {"factory": "mynet.py:build"}, "data": {"factory": "mynet.py:load"},
           "loss": "mynet.py:smoothed", "optimizer": {"type": "adam", "lr": 0.05},
           "train": {"steps": 60, "batch_size": 16, "log_every": 30}, **sections}
    return resolve(raw, base=user)


def replace_line(user, old, new, name="mynet.py"):
    source = (user / "mynet.py").read_text()
    assert old in source
    (user / name).write_text(source.replace(old, new))
    return user / name


def test_every_build_of_a_factory_model_has_the_same_initial_weights_though_it_draws_from_numpy(user):
    cfg = job(user)
    first = dict(initial_parameters(cfg))
    np.random.seed(123)  # whatever state a role's generator is in
    second = dict(build_job(cfg).net.named_parameters())
    assert sorted(first) == ["first.bias", "first.weight", "second"]
    assert all(np.array_equal(first[name], second[name].numpy()) for name in first)


def test_downpour_train_learns_a_users_model_data_and_loss_and_reports_loss_and_accuracy(user):
    _, metrics = train_local(job(user))
    assert set(metrics) == {"test_loss", "test_accuracy", "wall_seconds"}
    assert metrics["test_accuracy"] >= 0.8  # 3 classes: chance is 0.33


def test_float_targets_with_a_users_loss_report_the_test_loss_only(user):
    cfg = job(user, data={"factory": "mynet.py:load", "regression": True}, loss="mynet.py:mse")
    _, metrics = train_local(cfg)
    assert set(metrics) == {"test_loss", "wall_seconds"} and metrics["test_loss"] < 2.0


def test_a_built_in_model_trains_on_a_factorys_data_sized_by_its_shapes(user):
    cfg = job(user, model={"type": "mlp", "hidden": [8]}, loss=None)
    params = dict(initial_parameters(cfg))
    assert params["1.weight"].shape == (8, 4) and params["3.weight"].shape == (3, 8)


@pytest.mark.parametrize("old, new, message", [
    ("    return -(F.log_softmax(output) * soft).sum() / n",
     "    return float((F.log_softmax(output).numpy() * soft).sum())", "returned a float; expected a scalar (0-d)"),
    ("    return -(F.log_softmax(output) * soft).sum() / n",
     "    return -(F.log_softmax(output) * soft).sum(axis=1)", "returned a tensor of shape (2,)"),
    ("    return -(F.log_softmax(output) * soft).sum() / n",
     "    return F.log_softmax(output).detach().sum()", "does not depend on the model's parameters"),
    ("    return Net(hidden)", "    return [Net(hidden)]", "returned a list; expected a downpour.model.nn.Module"),
    ("    return Net(hidden)", "    return nn.ReLU()", "returned a ReLU without parameters"),
])
def test_a_plugin_that_returns_the_wrong_thing_is_refused_before_anything_starts(user, old, new, message):
    replace_line(user, old, new)
    with pytest.raises(plugins.PluginError) as caught:
        initial_parameters(job(user))
    assert message in str(caught.value) and f"{user}/mynet.py, line " in str(caught.value)


def test_a_forward_pass_that_fails_names_the_users_line(user):
    replace_line(user, "        return self.first(x).tanh() @ self.second.T", "        return self.first(x) @ self.second")
    with pytest.raises(plugins.PluginError, match=rf"{user}/mynet.py, line 13, in forward: ValueError"):
        initial_parameters(job(user))


def test_a_factory_model_without_embedding_tables_cannot_travel_by_rows(user):
    from downpour.worker.models import ModelConfigError
    with pytest.raises(ModelConfigError, match="compression.rows: the model \\(Net\\) has no embedding table"):
        initial_parameters(job(user, compression={"rows": True}))


def test_the_config_keys_reach_the_factories_as_keyword_arguments(user):
    cfg = job(user, model={"factory": "mynet.py:build", "hidden": 5}, data={"factory": "mynet.py:load", "n": 80})
    built = build_job(cfg)
    assert built.net.first.weight.shape == (5, 4)
    assert (built.data.train_examples, len(built.data.splits["test"])) == (64, 16)
