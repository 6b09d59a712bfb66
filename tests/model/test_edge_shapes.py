"""Every registered op on the smallest inputs a user's model hands it: 0-d (scalar) tensors and
tensors of one element, forward and backward, checked against finite differences.

The cases are made from each op's own gradient-check samples (the registry keeps them beside
the op): every array cut to one element along every axis, or a sample whose input has one
element (size 1), and each subset of the
differentiable inputs replaced by a 0-d array. Where the op's forward refuses a case (as
numpy and PyTorch refuse `matmul` on 0-d operands), there is nothing to differentiate; where
it accepts one, its gradient must be right. The ops listed in `TAKE_0D` must accept 0-d inputs.
"""
import itertools

import numpy as np
import pytest

from downpour.model import Tensor, gradcheck
from downpour.model import functional as F
from downpour.model.registry import OPS, Op

# Ops that PyTorch runs on 0-d tensors, so a user's model may hand them one.
TAKE_0D = {"add", "sub", "mul", "div", "neg", "pow", "exp", "log", "sqrt", "tanh", "sigmoid", "relu",
           "where", "maximum", "sum", "mean", "max", "softmax", "log_softmax", "bce_with_logits",
           "dropout", "reshape", "transpose", "getitem", "stack"}

# Hand-written cases for ops whose samples carry shapes in their attributes.
EXTRA_CASES = {
    "reshape": [((np.asarray(1.5),), {"shape": (1, 1)}), ((np.ones((1, 1)),), {"shape": ()})],
    "layer_norm": [((np.asarray([[0.3]]), np.asarray([1.2]), np.asarray([0.1])), {"normalized_shape": (1,)})],
    "getitem": [((np.asarray([2.5]),), {"index": 0}), ((np.asarray(2.5),), {"index": ()})],
    "transpose": [((np.asarray(2.5),), {"axes": None})],
}


def _differentiable(op: type[Op], a: np.ndarray, i: int) -> bool:
    return a.dtype.kind == "f" and i not in op.nondiff


def _cases(op: type[Op]):
    """(label, arrays, attrs) of one element: size 1 along every axis, or 0-d inputs."""
    for arrays, attrs in [*op.samples(np.random.default_rng(0)), *EXTRA_CASES.get(op.name, [])]:
        arrays = [np.asarray(a) for a in arrays]
        yield "size-1", [a[(slice(0, 1),) * a.ndim] for a in arrays], attrs
        if arrays[0].size == 1:  # one element already, in weights of the op's own shapes (a GRU's 3H rows)
            yield "size-1", arrays, attrs
        chosen = [i for i, a in enumerate(arrays) if _differentiable(op, a, i)]
        for count in range(1, len(chosen) + 1):
            for subset in itertools.combinations(chosen, count):
                cut = [np.asarray(a.reshape(-1)[0]) if i in subset else a for i, a in enumerate(arrays)]
                yield "0-d", cut, attrs


def _accepts(op: type[Op], inputs: list[Tensor], attrs: dict) -> bool:
    try:
        Tensor.apply(op, *inputs, **attrs)
    except (ValueError, IndexError, TypeError):  # refused as numpy refuses it (np.AxisError is a ValueError)
        return False
    return True


@pytest.mark.parametrize("name", sorted(OPS))
def test_an_op_runs_forward_and_backward_on_one_element_and_0d_inputs(name):
    op = OPS[name]
    ran = set()
    for label, arrays, attrs in _cases(op):
        inputs = [Tensor(a, requires_grad=_differentiable(op, a, i)) for i, a in enumerate(arrays)]
        if not any(t.requires_grad for t in inputs) or not _accepts(op, inputs, attrs):
            continue
        shapes = [a.shape for a in arrays]
        try:
            gradcheck(lambda *xs, attrs=attrs: Tensor.apply(op, *xs, **attrs), inputs)
        except Exception as error:
            pytest.fail(f"{name} on {label} inputs {shapes} {attrs}: {type(error).__name__}: {error}")
        ran.add(label)
    assert "size-1" in ran, f"{name} refused every case of one element"
    if name in TAKE_0D:
        assert "0-d" in ran, f"{name} refused every case with a 0-d input"


def test_dividing_two_scalars_differentiates_both():
    a, b = Tensor(np.float32(3.0), requires_grad=True), Tensor(np.float32(2.0), requires_grad=True)
    (a / b).backward()
    assert a.grad.shape == () and b.grad.shape == ()
    assert a.grad == pytest.approx(0.5) and b.grad == pytest.approx(-0.75)


def test_a_loss_built_from_scalars_and_reductions_backpropagates_to_every_parameter():
    """The kind of code a user writes: a mean, a 0-d weight, a ratio of two reductions."""
    rng = np.random.default_rng(1)
    w = Tensor(rng.standard_normal((3, 2)), requires_grad=True)
    temperature = Tensor(np.asarray(1.5), requires_grad=True)
    x = Tensor(rng.standard_normal((4, 3)))

    def loss(w, temperature):
        logits = (x @ w) / temperature
        spread = (logits * logits).mean() / (logits.sum() * logits.sum() + 1.0)
        return F.log_softmax(logits).mean() * spread.sigmoid() + temperature.tanh() ** 2

    out = loss(w, temperature)
    assert out.shape == ()
    assert gradcheck(loss, [w, temperature])
