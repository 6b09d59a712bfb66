"""Every registered op passes a float64 finite-difference gradient check on its own samples,
and the checker itself catches wrong gradients and leaves its inputs as it found them."""
import numpy as np
import pytest

from downpour import model
from downpour.model import GradcheckError, Tensor, gradcheck
from downpour.model.registry import OPS, Context, Op


def _tensors(op: type[Op], arrays) -> list[Tensor]:
    return [
        Tensor(a, requires_grad=a.dtype.kind == "f" and i not in op.nondiff)
        for i, a in enumerate(np.asarray(x) for x in arrays)
    ]


@pytest.mark.parametrize("name", sorted(OPS))
def test_registered_op_has_samples_and_passes_gradcheck_in_float64(name):
    op = OPS[name]
    cases = list(op.samples(np.random.default_rng(0)))
    assert cases, f"op {name!r} registers no gradient-check samples"
    for arrays, attrs in cases:
        inputs = _tensors(op, arrays)
        assert any(t.requires_grad for t in inputs), f"{name} sample {attrs} has nothing to differentiate"
        assert all(t.dtype == np.float64 for t in inputs if t.dtype.kind == "f"), "samples must be float64"
        assert gradcheck(lambda *xs: Tensor.apply(op, *xs, **attrs), inputs)


def test_importing_model_registers_the_core_ops():
    expected = {
        "add", "sub", "mul", "div", "neg", "pow", "matmul", "exp", "log", "sqrt", "tanh",
        "sigmoid", "relu", "sum", "mean", "max", "reshape", "transpose", "getitem", "concat",
        "stack", "linear", "log_softmax", "softmax", "softmax_cross_entropy",
        "bce_with_logits", "dropout", "embedding", "layer_norm",
    }
    assert expected <= set(model.registry.OPS)


class _SquareWithWrongGradient(Op):
    """d(x^2)/dx deliberately off by one: 2x + 1."""

    name = "square_with_wrong_gradient"

    @staticmethod
    def forward(ctx: Context, x):
        ctx.x = x
        return x * x

    @staticmethod
    def backward(ctx: Context, grad):
        return (grad * (2 * ctx.x + 1),)


def test_gradcheck_rejects_a_wrong_gradient_and_names_the_input_and_element():
    constant = Tensor(np.ones(3))
    x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    with pytest.raises(GradcheckError, match=r"input 1 \(shape \(2, 3\)\).*index \(\d, \d\).*analytic.*numeric"):
        gradcheck(lambda c, v: Tensor.apply(_SquareWithWrongGradient, v) + c, [constant, x])


def test_gradcheck_accepts_a_correct_composite_with_non_scalar_output():
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    w = Tensor(rng.standard_normal((4, 2)), requires_grad=True)
    assert gradcheck(lambda a, b: (a @ b).tanh() * a.sum(axis=1, keepdims=True), [x, w])


def test_gradcheck_runs_in_float64_and_restores_float32_inputs_and_their_grads():
    data = np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)
    x = Tensor(data, requires_grad=True)
    previous_grad = np.full((2, 3), 7.0, dtype=np.float32)
    x.grad = previous_grad
    seen_dtypes = []

    def fn(t):
        seen_dtypes.append(t.dtype)
        return (t * t).sum()

    assert gradcheck(fn, [x])
    assert set(seen_dtypes) == {np.dtype(np.float64)}
    assert x.data is data and x.dtype == np.float32
    assert x.grad is previous_grad


def test_gradcheck_checks_tensors_the_function_reaches_without_using_its_arguments():
    """The module pattern: parameters are passed as inputs, the function reads them itself."""
    rng = np.random.default_rng(3)
    weight = Tensor(rng.standard_normal((2, 3)).astype(np.float32), requires_grad=True)
    x = Tensor(rng.standard_normal((4, 3)).astype(np.float32))
    assert gradcheck(lambda inp, *_params: model.functional.linear(inp, weight).sigmoid(), [x, weight])

    def wrong(inp, *_params):
        return Tensor.apply(_SquareWithWrongGradient, model.functional.linear(inp, weight))

    with pytest.raises(GradcheckError, match="input 1"):
        gradcheck(wrong, [x, weight])


def test_gradcheck_with_max_elements_samples_a_subset_but_still_catches_errors():
    x = Tensor(np.random.default_rng(4).standard_normal(50), requires_grad=True)
    calls = []

    def fn(t):
        calls.append(1)
        return Tensor.apply(_SquareWithWrongGradient, t)

    with pytest.raises(GradcheckError):
        gradcheck(fn, [x], max_elements=5)
    assert len(calls) == 1 + 2 * 5


def test_gradcheck_needs_an_input_that_requires_grad():
    with pytest.raises(ValueError, match="requires_grad"):
        gradcheck(lambda t: t * 2, [Tensor(np.ones(2))])
