"""Every layer of `model.nn` matches torch.nn: same parameter names and shapes, so a torch
state_dict loads as is, then the same forward values and the same gradients for the inputs
and every parameter. float64 agrees within 1e-9 and float32 within 1e-4, both relative to
the largest magnitude of torch's value."""
import numpy as np
import pytest
import torch

import downpour.model.functional as F
from downpour.model import Tensor, nn

torch.set_num_threads(1)

TOLERANCE = {np.float64: 1e-9, np.float32: 1e-4}
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}
DTYPES = [np.float64, np.float32]


def _flatten(out):
    if isinstance(out, (tuple, list)):
        return [leaf for item in out for leaf in _flatten(item)]
    return [out]


def _assert_close(actual, expected, dtype, what):
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    actual = actual.numpy() if isinstance(actual, Tensor) else np.asarray(actual)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-30)
    error = float(np.abs(actual.astype(np.float64) - expected).max(initial=0.0))
    assert error <= TOLERANCE[dtype] * scale, f"{what}: max error {error:.3g} vs scale {scale:.3g}"


def check_against_torch(ours, theirs, arrays, dtype, call=lambda m, *xs: m(*xs), seed=0):
    """Load torch's weights into ours, run both on the same inputs, compare everything."""
    theirs = theirs.to(TORCH_DTYPE[dtype])
    ours.to(dtype)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]

    def inputs(make):
        return [make(a.astype(dtype) if a.dtype.kind == "f" else a, a.dtype.kind == "f") for a in arrays]

    ours_in = inputs(lambda a, grad: Tensor(a, requires_grad=grad) if grad else a)
    theirs_in = inputs(lambda a, grad: torch.tensor(a, requires_grad=grad))
    ours_out, theirs_out = _flatten(call(ours, *ours_in)), _flatten(call(theirs, *theirs_in))
    assert len(ours_out) == len(theirs_out)

    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(t.shape).astype(dtype) for t in theirs_out]
    sum(((o * Tensor(w)).sum() for o, w in zip(ours_out, weights))).backward()
    sum((t * torch.tensor(w)).sum() for t, w in zip(theirs_out, weights)).backward()

    for index, (o, t) in enumerate(zip(ours_out, theirs_out)):
        assert o.dtype == dtype, f"output {index} has dtype {o.dtype}"
        _assert_close(o, t, dtype, f"output {index}")
    for index, (o, t) in enumerate(zip(ours_in, theirs_in)):
        if isinstance(o, Tensor):
            _assert_close(o.grad, t.grad, dtype, f"gradient of input {index}")
    for (name, o), (_, t) in zip(ours.named_parameters(), theirs.named_parameters()):
        _assert_close(o.grad, t.grad, dtype, f"gradient of {name}")


@pytest.fixture
def rng():
    return np.random.default_rng(1)


# ---- feed-forward layers ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch_with_leading_batch_axes(dtype, bias, rng):
    check_against_torch(nn.Linear(5, 3, bias=bias), torch.nn.Linear(5, 3, bias=bias),
                        [rng.standard_normal((2, 4, 5))], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride, padding, bias", [(1, 0, True), (2, 1, True), ((2, 1), (0, 2), False), (3, 2, True)])
def test_conv2d_matches_torch_with_stride_and_padding(dtype, stride, padding, bias, rng):
    ours = nn.Conv2d(3, 4, (3, 2), stride=stride, padding=padding, bias=bias)
    theirs = torch.nn.Conv2d(3, 4, (3, 2), stride=stride, padding=padding, bias=bias)
    check_against_torch(ours, theirs, [rng.standard_normal((2, 3, 9, 8))], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, padding", [(2, None, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 0))])
def test_max_pool2d_matches_torch_with_stride_and_padding(dtype, kernel, stride, padding, rng):
    x = rng.permutation(2 * 3 * 7 * 6).reshape(2, 3, 7, 6) * 0.01  # no ties: one arg-max per window
    check_against_torch(nn.MaxPool2d(kernel, stride, padding), torch.nn.MaxPool2d(kernel, stride, padding),
                        [x], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_after_relu_breaks_ties_like_torch(dtype, rng):
    layers = lambda lib: lib.Sequential(lib.ReLU(), lib.MaxPool2d(3, 2, 1))  # noqa: E731
    x = np.round(rng.standard_normal((2, 2, 8, 8)))  # many zeros and equal values
    check_against_torch(layers(nn), layers(torch.nn), [x], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, padding, include_pad",
                         [(2, None, 0, True), (3, 2, 1, True), ((3, 2), (1, 2), (1, 1), False)])
def test_avg_pool2d_matches_torch_with_stride_and_padding(dtype, kernel, stride, padding, include_pad, rng):
    check_against_torch(nn.AvgPool2d(kernel, stride, padding, count_include_pad=include_pad),
                        torch.nn.AvgPool2d(kernel, stride, padding, count_include_pad=include_pad),
                        [rng.standard_normal((2, 3, 7, 6))], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["ReLU", "Sigmoid", "Tanh", "Flatten"])
def test_parameterless_layers_match_torch(dtype, name, rng):
    check_against_torch(getattr(nn, name)(), getattr(torch.nn, name)(),
                        [rng.standard_normal((3, 2, 4))], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_flatten_of_a_middle_range_matches_torch(dtype, rng):
    check_against_torch(nn.Flatten(1, 2), torch.nn.Flatten(1, 2), [rng.standard_normal((2, 3, 4, 5))], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_in_eval_mode_is_the_identity_like_torch(dtype, rng):
    check_against_torch(nn.Dropout(0.5).eval(), torch.nn.Dropout(0.5).eval(),
                        [rng.standard_normal((4, 6))], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_matches_torch_with_repeated_indices(dtype, rng):
    indices = np.array([[0, 3, 3], [5, 0, 1]])
    check_against_torch(nn.Embedding(6, 4), torch.nn.Embedding(6, 4), [indices], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_matches_torch(dtype, rng):
    ours, theirs = nn.LayerNorm((3, 4)), torch.nn.LayerNorm((3, 4))
    with torch.no_grad():  # move off the trivial ones/zeros so the affine part is exercised
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.uniform_(-0.5, 0.5)
    check_against_torch(ours, theirs, [rng.standard_normal((2, 3, 4))], dtype)


# ---- recurrent layers -------------------------------------------------------------------

RECURRENT = {
    "rnn_tanh": (lambda **kw: nn.RNN(**kw, nonlinearity="tanh"), lambda **kw: torch.nn.RNN(**kw, nonlinearity="tanh")),
    "rnn_relu": (lambda **kw: nn.RNN(**kw, nonlinearity="relu"), lambda **kw: torch.nn.RNN(**kw, nonlinearity="relu")),
    "gru": (nn.GRU, torch.nn.GRU),
    "lstm": (nn.LSTM, torch.nn.LSTM),
}


def _recurrent_case(kind, rng, num_layers, batch_first, given_state, batched=True, bias=True):
    steps, batch, n_in, hidden = 5, 3, 4, 6
    kwargs = dict(input_size=n_in, hidden_size=hidden, num_layers=num_layers, bias=bias, batch_first=batch_first)
    make_ours, make_theirs = RECURRENT[kind]
    x_shape = (batch, steps, n_in) if batch_first else (steps, batch, n_in)
    state_shape = (num_layers, batch, hidden)
    if not batched:
        x_shape, state_shape = (steps, n_in), (num_layers, hidden)
    arrays = [rng.standard_normal(x_shape)]
    n_states = 2 if kind == "lstm" else 1
    if given_state:
        arrays += [rng.standard_normal(state_shape) * 0.5 for _ in range(n_states)]
        call = (lambda m, x, h, c: m(x, (h, c))) if kind == "lstm" else (lambda m, x, h: m(x, h))
    else:
        call = lambda m, x: m(x)  # noqa: E731
    return make_ours(**kwargs), make_theirs(**kwargs), arrays, call


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("given_state", [False, True], ids=["zero_state", "given_state"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("kind", sorted(RECURRENT))
def test_recurrent_layer_matches_torch(kind, num_layers, batch_first, given_state, dtype, rng):
    ours, theirs, arrays, call = _recurrent_case(kind, rng, num_layers, batch_first, given_state)
    check_against_torch(ours, theirs, arrays, dtype, call)


@pytest.mark.parametrize("given_state", [False, True], ids=["zero_state", "given_state"])
@pytest.mark.parametrize("kind", sorted(RECURRENT))
def test_recurrent_layer_on_unbatched_input_matches_torch(kind, given_state, rng):
    ours, theirs, arrays, call = _recurrent_case(kind, rng, 2, False, given_state, batched=False)
    check_against_torch(ours, theirs, arrays, np.float64, call)


@pytest.mark.parametrize("kind", sorted(RECURRENT))
def test_recurrent_layer_without_bias_matches_torch(kind, rng):
    ours, theirs, arrays, call = _recurrent_case(kind, rng, 2, True, True, bias=False)
    check_against_torch(ours, theirs, arrays, np.float64, call)


# ---- whole models -----------------------------------------------------------------------

def lenet5(lib):
    return lib.Sequential(
        lib.Conv2d(1, 6, 5, padding=2), lib.ReLU(), lib.MaxPool2d(2),
        lib.Conv2d(6, 16, 5), lib.ReLU(), lib.MaxPool2d(2),
        lib.Flatten(),
        lib.Linear(16 * 5 * 5, 120), lib.ReLU(),
        lib.Linear(120, 84), lib.ReLU(),
        lib.Linear(84, 10),
    )


def mlp(lib):
    return lib.Sequential(lib.Linear(20, 32), lib.Tanh(), lib.Dropout(0.3), lib.Linear(32, 16),
                          lib.ReLU(), lib.Linear(16, 5))


def _cross_entropy_call(targets):
    def call(m, x):
        if isinstance(m, torch.nn.Module):
            return torch.nn.functional.cross_entropy(m(x), torch.from_numpy(targets))
        return F.cross_entropy(m(x), targets)
    return call


@pytest.mark.parametrize("dtype", DTYPES)
def test_lenet5_loss_and_every_gradient_match_torch(dtype, rng):
    x = rng.standard_normal((8, 1, 28, 28))
    targets = rng.integers(0, 10, 8)
    check_against_torch(lenet5(nn), lenet5(torch.nn), [x], dtype, _cross_entropy_call(targets))


@pytest.mark.parametrize("dtype", DTYPES)
def test_mlp_in_eval_mode_loss_and_every_gradient_match_torch(dtype, rng):
    x = rng.standard_normal((16, 20))
    targets = rng.integers(0, 5, 16)
    check_against_torch(mlp(nn).eval(), mlp(torch.nn).eval(), [x], dtype, _cross_entropy_call(targets))
