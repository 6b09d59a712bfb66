"""model.flat: a module's parameters as views into one contiguous float32 buffer."""
from __future__ import annotations

import numpy as np
import pytest

from downpour.model import RowSparse, optim
from downpour.model.flat import FlatParameters, flatten, unflatten
from downpour.model.tensor import Tensor


class TinyModule:
    """A stand-in for a model.nn module: just named_parameters(), in declaration order."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.weight = Tensor(rng.standard_normal((3, 4)), requires_grad=True)  # float64 on purpose
        self.bias = Tensor(rng.standard_normal(3).astype(np.float32), requires_grad=True)
        self.scale = Tensor(np.array(2.5, np.float32), requires_grad=True)  # a 0-d parameter
        self.embedding = Tensor(rng.standard_normal((5, 2)).astype(np.float32), requires_grad=True)

    def named_parameters(self):
        return [("weight", self.weight), ("bias", self.bias), ("scale", self.scale),
                ("embedding", self.embedding)]


def test_parameters_become_float32_views_of_one_buffer_in_named_parameters_order():
    module = TinyModule()
    originals = {name: np.array(p.data, np.float32) for name, p in module.named_parameters()}
    flat = FlatParameters(module.named_parameters())

    assert flat.specs == [("weight", (3, 4)), ("bias", (3,)), ("scale", ()), ("embedding", (5, 2))]
    assert flat.offsets == [0, 12, 15, 16, 26]
    assert flat.size == 26 and len(flat) == 4
    assert flat.data.shape == (26,) and flat.data.dtype == np.float32 and flat.data.flags.c_contiguous
    np.testing.assert_array_equal(flat.data, np.concatenate([a.ravel() for a in originals.values()]))
    for (name, p), start, end in zip(module.named_parameters(), flat.offsets, flat.offsets[1:]):
        assert p.data.dtype == np.float32 and p.shape == originals[name].shape
        np.testing.assert_array_equal(p.data, originals[name])
        assert np.shares_memory(p.data, flat.data[start:end])


def test_writing_flat_data_updates_the_model_without_a_copy():
    module = TinyModule()
    flat = FlatParameters(module.named_parameters())
    flat.data[:] = np.arange(flat.size)
    np.testing.assert_array_equal(module.bias.data, [12, 13, 14])
    assert module.scale.data == 15

    flat.data[16:26] = -1.0  # a pulled range that covers only the embedding
    np.testing.assert_array_equal(module.embedding.data, -np.ones((5, 2)))
    np.testing.assert_array_equal(module.weight.data, np.arange(12).reshape(3, 4))

    flat.set_data(np.linspace(0, 1, flat.size, dtype=np.float64))
    np.testing.assert_allclose(module.weight.data.ravel(), np.linspace(0, 1, flat.size)[:12], rtol=1e-6)


def test_writing_a_parameter_in_place_shows_in_flat_data():
    module = TinyModule()
    flat = FlatParameters(module.named_parameters())
    module.bias.data[...] = 7.0
    np.testing.assert_array_equal(flat.data[12:15], [7, 7, 7])


def test_gather_grads_copies_every_gradient_and_zero_fills_missing_ones():
    module = TinyModule()
    flat = FlatParameters(module.named_parameters())
    module.weight.grad = np.full((3, 4), 1.0)
    module.bias.grad = None  # a parameter the loss did not reach
    module.scale.grad = np.array(3.0, np.float32)
    module.embedding.grad = np.arange(10, dtype=np.float32).reshape(5, 2)

    expected = np.concatenate([np.ones(12), np.zeros(3), [3.0], np.arange(10)])

    grads = flat.gather_grads()
    stale = flat.gather_grads(np.full(26, np.nan, np.float32))  # a reused buffer holding old values

    assert grads.shape == (26,) and grads.dtype == np.float32
    np.testing.assert_array_equal(grads, expected)
    np.testing.assert_array_equal(stale, expected)
    assert not np.shares_memory(grads, flat.data)


def test_gather_grads_reuses_out_and_sees_gradients_backward_assigned_afresh():
    module = TinyModule()
    flat = FlatParameters(module.named_parameters())
    for _, p in module.named_parameters():
        p.grad = np.ones(p.shape, np.float32)
    out = flat.gather_grads()
    for _, p in module.named_parameters():
        p.grad = np.full(p.shape, 2.0, np.float32)  # backward binds new arrays, it never writes old ones

    again = flat.gather_grads(out)

    assert again is out
    np.testing.assert_array_equal(out, np.full(26, 2.0))


def test_gather_grads_refuses_a_wrong_out_buffer_or_gradient_shape():
    module = TinyModule()
    flat = FlatParameters(module.named_parameters())
    with pytest.raises(ValueError, match="out has shape"):
        flat.gather_grads(np.empty(25, np.float32))
    module.bias.grad = np.zeros(4)
    with pytest.raises(ValueError, match="'bias'"):
        flat.gather_grads()


def test_named_views_are_the_parameters_own_arrays():
    module = TinyModule()
    flat = FlatParameters(module.named_parameters())
    views = flat.named_views()
    assert list(views) == ["weight", "bias", "scale", "embedding"]
    assert all(views[name] is p.data for name, p in module.named_parameters())


def test_unflatten_gives_named_views_of_any_buffer_of_the_right_size():
    module = TinyModule()
    flat = FlatParameters(module.named_parameters())
    other = np.arange(26, dtype=np.float32)
    views = flat.unflatten(other)
    assert {name: v.shape for name, v in views.items()} == dict(flat.specs)
    assert all(np.shares_memory(v, other) for v in views.values())
    np.testing.assert_array_equal(views["embedding"], np.arange(16, 26).reshape(5, 2))
    with pytest.raises(ValueError, match="25 elements"):
        flat.unflatten(np.zeros(25, np.float32))


def test_flatten_and_unflatten_round_trip_without_a_module():
    rng = np.random.default_rng(1)
    arrays = {"a": rng.standard_normal((2, 3)), "b": rng.standard_normal(4), "c": np.float64(1.5)}
    buffer = flatten(arrays)
    assert buffer.dtype == np.float32 and buffer.shape == (11,)
    back = unflatten(buffer, [(name, np.shape(a)) for name, a in arrays.items()])
    assert list(back) == ["a", "b", "c"]
    for name, a in arrays.items():
        np.testing.assert_allclose(back[name], a, rtol=1e-6)
    assert flatten(list(arrays.items()), dtype=np.float64).dtype == np.float64


def test_set_data_refuses_a_buffer_of_another_size():
    flat = FlatParameters(TinyModule().named_parameters())
    with pytest.raises(ValueError, match="got 27 weights, the model has 26"):
        flat.set_data(np.zeros(27, np.float32))


def test_check_views_names_a_parameter_whose_data_was_replaced():
    module = TinyModule()
    flat = FlatParameters(module.named_parameters())
    flat.check_views()
    module.bias.data = module.bias.data - 0.1  # out of place: the model no longer sees flat.data
    with pytest.raises(RuntimeError, match="'bias'"):
        flat.check_views()


def test_duplicate_names_shared_tensors_and_non_numpy_data_are_refused():
    module = TinyModule()
    with pytest.raises(ValueError, match="repeated: \\['w'\\]"):
        FlatParameters([("w", module.weight), ("w", module.bias)])
    with pytest.raises(ValueError, match="same tensor"):
        FlatParameters([("w", module.weight), ("tied", module.weight)])
    module.bias.data = [1.0, 2.0, 3.0]
    with pytest.raises(TypeError, match="'bias'"):
        FlatParameters(module.named_parameters())


def test_float64_buffers_are_available_for_gradient_checks():
    module = TinyModule()
    flat = FlatParameters(module.named_parameters(), dtype=np.float64)
    assert flat.data.dtype == np.float64 and module.weight.data.dtype == np.float64


def test_an_update_rule_over_flat_data_trains_every_parameter_in_place():
    module = TinyModule()
    flat = FlatParameters(module.named_parameters())
    before = {name: p.data.copy() for name, p in module.named_parameters()}
    rule = optim.make("sgd", lr=0.5, momentum=0.9)
    grads = None
    for _ in range(2):
        for _, p in module.named_parameters():
            p.grad = np.ones(p.shape, np.float32)
        grads = flat.gather_grads(grads)
        rule.step(flat.data, grads)
    flat.check_views()
    for name, p in module.named_parameters():  # two steps: 0.5 * 1, then 0.5 * (0.9 + 1)
        np.testing.assert_allclose(p.data, before[name] - 1.45, rtol=1e-6)


def test_a_model_nn_linear_layer_trains_through_its_flat_view():
    nn = pytest.importorskip("downpour.model.nn")
    if not hasattr(nn, "Linear"):
        pytest.skip("model.nn.Linear is not there yet")
    layer = nn.Linear(4, 3)
    flat = FlatParameters(layer.named_parameters())
    assert flat.specs == [("weight", (3, 4)), ("bias", (3,))]

    flat.set_data(np.concatenate([np.zeros(12), [1.0, 2.0, 3.0]]))
    x = Tensor(np.ones((5, 4), np.float32))
    out = layer(x)
    np.testing.assert_array_equal(out.data, np.tile([1.0, 2.0, 3.0], (5, 1)))

    out.sum().backward()
    grads = flat.gather_grads()
    np.testing.assert_allclose(grads, np.concatenate([np.full(12, 5.0), np.full(3, 5.0)]))
    flat.check_views()


# ---- receiving weights off the wire without copying them --------------------------------------
def _weights(module: TinyModule) -> np.ndarray:
    return np.concatenate([np.ravel(p.data) for _, p in module.named_parameters()])


def test_received_weights_become_the_memory_of_the_parameters_wholly_inside_their_range():
    module = TinyModule()
    flat = FlatParameters(module.named_parameters())
    frame = np.arange(10, 24, dtype=np.float32)  # elements [10, 24): cuts weight (0..12) and embedding (16..26)
    flat.receive(10, 24, frame, keep=True)
    assert np.shares_memory(module.bias.data, frame) and np.shares_memory(module.scale.data, frame)
    assert not np.shares_memory(module.weight.data, frame) and not np.shares_memory(module.embedding.data, frame)
    np.testing.assert_array_equal(_weights(module)[10:24], frame)
    np.testing.assert_array_equal(flat.data[10:12], frame[:2])  # the cut ones were copied home
    flat.check_views()


def test_a_whole_model_received_in_two_ranges_is_read_where_it_arrived():
    module = TinyModule()
    flat = FlatParameters(module.named_parameters())
    first, second = np.full(15, 1.0, np.float32), np.full(11, 2.0, np.float32)
    flat.receive(0, 15, first, keep=True)
    flat.receive(15, 26, second, keep=True)
    assert np.shares_memory(module.weight.data, first) and np.shares_memory(module.embedding.data, second)
    np.testing.assert_array_equal(_weights(module), [1.0] * 15 + [2.0] * 11)
    second[:] = 3.0  # the parameters are views: the frame's memory is the model's
    assert float(module.scale.data) == 3.0


def test_weights_received_without_keep_are_copied_and_bring_their_parameters_home():
    module = TinyModule()
    flat = FlatParameters(module.named_parameters())
    flat.receive(0, 26, np.zeros(26, np.float32), keep=True)
    copied = np.arange(26, dtype=np.float32)
    flat.receive(12, 26, copied[12:])  # e.g. from a shard's shared memory, which keeps changing
    for _, p in module.named_parameters()[1:]:
        assert not np.shares_memory(p.data, copied) and np.shares_memory(p.data, flat.data)
    np.testing.assert_array_equal(_weights(module), [0.0] * 12 + list(range(12, 26)))
    flat.check_views()


def test_a_parameter_received_in_part_is_first_brought_home_whole():
    module = TinyModule()
    flat = FlatParameters(module.named_parameters())
    frame = np.arange(26, dtype=np.float32)
    flat.receive(0, 26, frame, keep=True)
    flat.receive(13, 14, np.array([-1.0], np.float32), keep=True)  # a range that cuts bias
    np.testing.assert_array_equal(module.bias.data, [12.0, -1.0, 14.0])
    assert np.shares_memory(module.bias.data, flat.data)


def test_frames_of_another_dtype_or_misaligned_are_copied_not_kept():
    module = TinyModule()
    flat = FlatParameters(module.named_parameters())
    flat.receive(0, 26, np.ones(26, np.float64), keep=True)
    assert np.shares_memory(module.weight.data, flat.data)
    raw = np.zeros(26 * 4 + 1, np.uint8)
    misaligned = np.frombuffer(raw.data[1:], np.float32)
    flat.receive(0, 26, misaligned, keep=True)
    assert np.shares_memory(module.weight.data, flat.data) and float(module.scale.data) == 0.0


def test_set_data_brings_every_parameter_home_and_bad_ranges_are_refused():
    module = TinyModule()
    flat = FlatParameters(module.named_parameters())
    flat.receive(0, 26, np.ones(26, np.float32), keep=True)
    flat.set_data(np.full(26, 4.0))
    for _, p in module.named_parameters():
        assert np.shares_memory(p.data, flat.data) and np.all(p.data == 4.0)
    with pytest.raises(ValueError, match=r"\[20, 30\)"):
        flat.receive(20, 30, np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="shape"):
        flat.receive(0, 4, np.zeros(5, np.float32))


def test_rows_received_by_position_keep_the_rest_of_their_table_and_leave_other_frames_alone():
    module = TinyModule()
    flat = FlatParameters(module.named_parameters())
    frame = np.arange(26, dtype=np.float32)
    flat.receive(0, 26, frame, keep=True)           # a whole-model read: every parameter in the frame
    rows = np.array([18, 19, 24, 25])               # rows 1 and 4 of the (5, 2) embedding at 16
    flat.receive_at(rows, np.array([-1, -2, -3, -4], np.float32))
    np.testing.assert_array_equal(module.embedding.data, [[16, 17], [-1, -2], [20, 21], [22, 23], [-3, -4]])
    assert np.shares_memory(module.embedding.data, flat.data)   # brought home, with its other rows
    assert np.shares_memory(module.weight.data, frame)           # untouched parameters stay where they were
    flat.check_views()
    flat.receive_at(np.zeros(0, np.int64), np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="positions"):
        flat.receive_at(np.array([25, 26]), np.zeros(2, np.float32))


def test_grads_at_gives_a_tables_touched_rows_and_every_other_gradient_whole_by_flat_position():
    table, bias, frozen = Tensor(np.zeros((5, 2), np.float32)), Tensor(np.zeros(3, np.float32)), \
        Tensor(np.zeros(2, np.float32))
    flat = FlatParameters([("table", table), ("bias", bias), ("frozen", frozen)])
    table.grad = RowSparse(np.array([3, 1, 3]), np.array([[1, 2], [3, 4], [5, 6]], np.float32), (5, 2))
    bias.grad, frozen.grad = np.array([7, 8, 9], np.float32), None
    positions, values = flat.grads_at()
    assert positions.tolist() == [2, 3, 6, 7, 10, 11, 12]          # rows 1 and 3 of the table, then the bias
    assert values.tolist() == [3, 4, 6, 8, 7, 8, 9]                # row 3's two entries summed
    dense = flat.gather_grads()
    assert np.array_equal(dense[positions], values) and not np.delete(dense, positions).any()
