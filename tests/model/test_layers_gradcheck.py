"""Every layer of `model.nn` passes the float64 gradient check, for its inputs and every
parameter. The cases are keyed by class, so a new layer without a case fails the suite."""
import inspect

import numpy as np
import pytest

from downpour.model import Tensor, gradcheck, nn


def _x(*shape):
    return Tensor(np.random.default_rng(sum(shape)).standard_normal(shape), requires_grad=True)


# layer name -> (module, inputs, how to call it)
CASES = {
    "Linear": lambda: (nn.Linear(5, 3), [_x(4, 5)], None),
    "Conv2d": lambda: (nn.Conv2d(2, 3, 3, stride=2, padding=1), [_x(2, 2, 5, 5)], None),
    "MaxPool2d": lambda: (nn.MaxPool2d(2, stride=1, padding=1), [_x(1, 2, 4, 4)], None),
    "AvgPool2d": lambda: (nn.AvgPool2d(3, stride=2, padding=1), [_x(1, 2, 5, 5)], None),
    "Flatten": lambda: (nn.Flatten(), [_x(2, 3, 2)], None),
    "ReLU": lambda: (nn.ReLU(), [_x(3, 4)], None),
    "Sigmoid": lambda: (nn.Sigmoid(), [_x(3, 4)], None),
    "Tanh": lambda: (nn.Tanh(), [_x(3, 4)], None),
    "Dropout": lambda: (nn.Dropout(0.3, rng=np.random.default_rng(0)).eval(), [_x(3, 4)], None),
    "LayerNorm": lambda: (nn.LayerNorm(4), [_x(3, 4)], None),
    "Embedding": lambda: (nn.Embedding(6, 3), [], lambda m: m(np.array([[0, 5, 2], [2, 2, 1]]))),
    "EmbeddingBag": lambda: (nn.EmbeddingBag(6, 3, mode="sum"), [_x(5)],
                             lambda m, w: m(np.array([0, 5, 5, 2, 1]), np.array([0, 3, 3]), w)),
    "Sequential": lambda: (nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)), [_x(2, 4)], None),
    "RNN": lambda: (nn.RNN(3, 4, num_layers=2), [_x(5, 2, 3)], lambda m, x: m(x)[0]),
    "LSTM": lambda: (nn.LSTM(3, 4, num_layers=2, batch_first=True), [_x(2, 5, 3)],
                     lambda m, x: m(x)[0] + m(x)[1][1].sum()),
    "GRU": lambda: (nn.GRU(3, 4, num_layers=2), [_x(5, 2, 3)], lambda m, x: m(x)[0] * m(x)[1].sum()),
}

LAYERS = sorted(name for name, cls in vars(nn).items()
                if inspect.isclass(cls) and issubclass(cls, nn.Module) and cls is not nn.Module)


@pytest.mark.parametrize("name", LAYERS)
def test_layer_passes_gradcheck_in_float64_for_inputs_and_parameters(name):
    assert name in CASES, f"nn.{name} has no gradient-check case"
    module, inputs, call = CASES[name]()
    module.to(np.float64)
    params = list(module.parameters())
    call = call or (lambda m, *xs: m(*xs))
    assert gradcheck(lambda *ts: call(module, *ts[:len(inputs)]), [*inputs, *params])
