"""Module bookkeeping: parameter registration and names, state_dict round trips and errors,
train/eval, zero_grad, and seeded, reproducible initialisation with torch's distributions."""
import math

import numpy as np
import pytest

from downpour.model import Tensor, nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(np.ones(3, dtype=np.float32))
        self.body = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False))
        self.head = nn.Linear(2, 1)
        self.note = "plain attributes are neither parameters nor children"

    def forward(self, x):
        return self.head(self.body(x * self.scale))


def test_named_parameters_use_torch_dotted_names_in_assignment_order():
    names = [name for name, _ in Block().named_parameters()]
    assert names == ["scale", "body.0.weight", "body.0.bias", "body.2.weight", "head.weight", "head.bias"]


def test_parameters_are_tensors_that_require_grad_and_plain_attributes_stay_plain():
    block = Block()
    assert all(isinstance(p, Tensor) and p.requires_grad for p in block.parameters())
    assert block.note.startswith("plain")
    assert [name for name, _ in block.named_children()] == ["body", "head"]


def test_reassigning_an_attribute_replaces_the_parameter_in_place_of_order():
    block = Block()
    block.scale = nn.Parameter(np.zeros(3, dtype=np.float32))
    assert [n for n, _ in block.named_parameters()][0] == "scale"
    np.testing.assert_array_equal(block.scale.numpy(), 0.0)
    block.head = None
    assert "head.weight" not in dict(block.named_parameters())


def test_a_parameter_shared_by_two_layers_is_listed_once():
    first, second = nn.Linear(3, 3), nn.Linear(3, 3)
    second.weight = first.weight
    model = nn.Sequential(first, second)
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "1.bias"]


def test_assigning_a_tensor_before_module_init_is_an_error():
    class Broken(nn.Module):
        def __init__(self):
            self.weight = nn.Parameter(np.zeros(2))

    with pytest.raises(AttributeError, match="Module.__init__"):
        Broken()


def test_calling_a_module_runs_its_forward():
    block = Block()
    x = Tensor(np.ones((5, 3), dtype=np.float32))
    np.testing.assert_array_equal(block(x).numpy(), block.forward(x).numpy())


def test_sequential_is_indexable_and_slices_keep_their_names():
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    assert len(model) == 3 and isinstance(model[-1], nn.Linear)
    assert [n for n, _ in model[1:].named_parameters()] == ["2.weight", "2.bias"]
    assert isinstance(model.append(nn.Sigmoid())[3], nn.Sigmoid)


def test_state_dict_round_trip_reproduces_the_model():
    source, target = Block(), Block()
    x = Tensor(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32))
    assert not np.allclose(source(x).numpy(), target(x).numpy())
    result = target.load_state_dict(source.state_dict())
    assert result == ([], [])
    np.testing.assert_array_equal(source(x).numpy(), target(x).numpy())


def test_state_dict_is_a_snapshot_of_numpy_arrays():
    block = Block()
    state = block.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    block.head.bias.data += 1.0
    assert not np.array_equal(state["head.bias"], block.head.bias.numpy())


def test_load_state_dict_copies_into_the_existing_arrays_with_their_dtype():
    block = Block()
    weight_array = block.head.weight.data
    state = {k: v.astype(np.float64) for k, v in Block().state_dict().items()}
    block.load_state_dict(state)
    assert block.head.weight.data is weight_array and weight_array.dtype == np.float32
    np.testing.assert_array_equal(weight_array, state["head.weight"].astype(np.float32))


def test_load_state_dict_names_missing_and_unexpected_keys():
    block = Block()
    state = block.state_dict()
    del state["head.bias"]
    state["head.extra"] = np.zeros(1)
    with pytest.raises(KeyError, match=r"missing \['head.bias'\].*unexpected \['head.extra'\]"):
        block.load_state_dict(state)


def test_load_state_dict_rejects_a_wrong_shape_naming_it_and_changes_nothing():
    block = Block()
    before = block.state_dict()
    state = Block().state_dict()
    state["body.0.weight"] = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"body.0.weight: got \(3, 4\), expected \(4, 3\)"):
        block.load_state_dict(state)
    for name, value in block.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


def test_non_strict_load_reports_what_it_skipped_and_loads_the_rest():
    block = Block()
    state = Block().state_dict()
    del state["scale"]
    state["unused"] = np.zeros(2)
    result = block.load_state_dict(state, strict=False)
    assert result.missing_keys == ["scale"] and result.unexpected_keys == ["unused"]
    np.testing.assert_array_equal(block.head.weight.numpy(), state["head.weight"])


def test_train_and_eval_propagate_to_every_submodule():
    block = Block()
    assert block.eval() is block
    assert not any(m.training for m in block.modules())
    block.train()
    assert all(m.training for m in block.modules())


def test_zero_grad_clears_every_parameter_gradient():
    block = Block()
    block(Tensor(np.ones((2, 3), dtype=np.float32))).sum().backward()
    assert all(p.grad is not None for p in block.parameters())
    block.zero_grad()
    assert all(p.grad is None for p in block.parameters())


def test_to_casts_every_parameter():
    block = Block().to(np.float64)
    assert {p.dtype for p in block.parameters()} == {np.dtype(np.float64)}


# ---- seeded initialisation ----------------------------------------------------------------

def _build_all():
    return nn.Sequential(nn.Linear(6, 5), nn.Conv2d(2, 3, 3), nn.Embedding(7, 4), nn.LSTM(3, 4, num_layers=2),
                         nn.GRU(3, 2), nn.RNN(2, 3))


def test_manual_seed_makes_initialisation_reproducible():
    nn.manual_seed(123)
    first = _build_all().state_dict()
    nn.manual_seed(123)
    second = _build_all().state_dict()
    nn.manual_seed(124)
    other = _build_all().state_dict()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    assert not np.array_equal(first["0.weight"], other["0.weight"])


def test_an_explicit_generator_overrides_the_default_one():
    a = nn.Linear(4, 3, rng=np.random.default_rng(5)).state_dict()
    nn.manual_seed(999)
    b = nn.Linear(4, 3, rng=np.random.default_rng(5)).state_dict()
    np.testing.assert_array_equal(a["weight"], b["weight"])


def _assert_uniform_within(values, bound):
    assert np.abs(values).max() <= bound
    assert np.abs(values).max() > 0.9 * bound  # it fills the range, not a narrower one


def test_linear_and_conv_use_torch_default_bounds():
    nn.manual_seed(0)
    linear = nn.Linear(100, 200)
    _assert_uniform_within(linear.weight.numpy(), 1 / math.sqrt(100))
    _assert_uniform_within(linear.bias.numpy(), 1 / math.sqrt(100))
    conv = nn.Conv2d(4, 50, (3, 2))
    _assert_uniform_within(conv.weight.numpy(), 1 / math.sqrt(4 * 3 * 2))
    assert linear.weight.dtype == np.float32 and conv.weight.shape == (50, 4, 3, 2)


@pytest.mark.parametrize("layer, gates", [(nn.LSTM, 4), (nn.GRU, 3), (nn.RNN, 1)])
def test_recurrent_layers_use_torch_shapes_and_bounds(layer, gates):
    hidden = 16
    rnn = layer(8, hidden, num_layers=2)
    shapes = {name: p.shape for name, p in rnn.named_parameters()}
    assert shapes == {
        "weight_ih_l0": (gates * hidden, 8), "weight_hh_l0": (gates * hidden, hidden),
        "bias_ih_l0": (gates * hidden,), "bias_hh_l0": (gates * hidden,),
        "weight_ih_l1": (gates * hidden, hidden), "weight_hh_l1": (gates * hidden, hidden),
        "bias_ih_l1": (gates * hidden,), "bias_hh_l1": (gates * hidden,),
    }
    _assert_uniform_within(np.concatenate([p.numpy().ravel() for p in rnn.parameters()]), 1 / math.sqrt(hidden))


def test_embedding_is_standard_normal_and_layer_norm_starts_as_identity():
    nn.manual_seed(0)
    table = nn.Embedding(200, 50).weight.numpy()
    assert abs(table.mean()) < 0.05 and abs(table.std() - 1) < 0.05
    norm = nn.LayerNorm(4)
    np.testing.assert_array_equal(norm.weight.numpy(), 1.0)
    np.testing.assert_array_equal(norm.bias.numpy(), 0.0)


def test_dropout_masks_are_seeded_and_scale_the_kept_elements():
    x = Tensor(np.ones((50, 40), dtype=np.float32))
    first = nn.Dropout(0.25, rng=np.random.default_rng(3))(x).numpy()
    again = nn.Dropout(0.25, rng=np.random.default_rng(3))(x).numpy()
    np.testing.assert_array_equal(first, again)
    assert set(np.unique(first)) == {0.0, np.float32(1 / 0.75)}
    assert abs((first == 0).mean() - 0.25) < 0.05
    np.testing.assert_array_equal(nn.Dropout(0.25).eval()(x).numpy(), x.numpy())


def test_recurrent_layer_rejects_an_initial_state_of_the_wrong_shape():
    lstm = nn.LSTM(3, 4, num_layers=2)
    x = np.zeros((5, 2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match=r"initial state has shape \(1, 2, 4\), expected \(2, 2, 4\)"):
        lstm(x, (np.zeros((1, 2, 4)), np.zeros((1, 2, 4))))
    with pytest.raises(ValueError, match="nonlinearity"):
        nn.RNN(3, 4, nonlinearity="sigmoid")


def test_recurrent_dropout_between_layers_acts_only_in_training_and_is_seeded():
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)

    def run(dropout, train):
        gru = nn.GRU(3, 5, num_layers=2, dropout=dropout, rng=np.random.default_rng(7)).train(train)
        return gru(x)[0].numpy()

    np.testing.assert_array_equal(run(0.5, True), run(0.5, True))
    assert not np.array_equal(run(0.5, True), run(0.0, True))
    np.testing.assert_array_equal(run(0.5, False), run(0.0, True))
