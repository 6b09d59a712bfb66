"""The Tensor and its tape: how gradients are reduced, accumulated, owned and released."""
import numpy as np
import pytest
import torch

from downpour import model
from downpour.model import Tensor, no_grad, tensor

torch.set_num_threads(1)


def test_python_floats_and_lists_become_float32_and_numpy_arrays_keep_their_dtype():
    assert tensor([1.0, 2.0]).dtype == np.float32
    assert tensor(3.5).dtype == np.float32
    assert tensor([1, 2]).dtype.kind == "i"
    assert tensor(np.zeros(2)).dtype == np.float64


@pytest.mark.parametrize("scalar", [2, 0.5, np.float64(0.5), np.asarray(0.5), True])
def test_scalars_do_not_promote_a_float32_tensor(scalar):
    x = tensor([1.0, 2.0], requires_grad=True)
    for y in (x * scalar, scalar * x, x + scalar, x - scalar, scalar - x, x / scalar, x**scalar):
        assert y.dtype == np.float32
    (x * scalar).sum().backward()
    assert x.grad.dtype == np.float32


def test_broadcast_operands_get_gradients_summed_back_to_their_own_shapes():
    a = Tensor(np.arange(12.0).reshape(3, 4), requires_grad=True)
    row = Tensor(np.ones(4), requires_grad=True)
    column = Tensor(np.full((3, 1), 2.0), requires_grad=True)
    scalar = Tensor(np.asarray(3.0), requires_grad=True)
    ((a + row) * column * scalar).sum().backward()
    np.testing.assert_allclose(a.grad, np.full((3, 4), 6.0))
    np.testing.assert_allclose(row.grad, np.full(4, 18.0))
    np.testing.assert_allclose(column.grad, (a.data + 1).sum(axis=1, keepdims=True) * 3)
    np.testing.assert_allclose(scalar.grad, ((a.data + 1) * 2).sum())
    assert row.grad.shape == (4,) and column.grad.shape == (3, 1) and scalar.grad.shape == ()


def test_a_tensor_used_twice_accumulates_both_contributions():
    x = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    (x * x + x).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 1)


def test_gradients_accumulate_across_backward_calls_until_zeroed():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 3).sum().backward()
    (x * 4).sum().backward()
    np.testing.assert_allclose(x.grad, [7.0, 7.0])
    x.zero_grad()
    assert x.grad is None


def test_leaf_gradients_are_writable_and_never_shared_between_leaves():
    a = Tensor(np.ones(3), requires_grad=True)
    b = Tensor(np.ones(3), requires_grad=True)
    (a + b).sum().backward()  # add hands one array to both; sum's gradient is a read-only view
    assert a.grad.flags.writeable and b.grad.flags.writeable
    a.grad *= 10
    np.testing.assert_allclose(b.grad, np.ones(3))


def test_a_leaf_gradient_never_aliases_the_gradient_passed_to_backward():
    x = Tensor(np.ones(3), requires_grad=True)
    upstream = np.array([1.0, 2.0, 3.0])
    (x + 0).backward(upstream)
    x.grad *= 0
    np.testing.assert_allclose(upstream, [1.0, 2.0, 3.0])


def test_no_grad_records_nothing():
    x = Tensor(np.ones(2), requires_grad=True)
    with no_grad():
        y = x * 2
        assert not model.is_grad_enabled()
    assert model.is_grad_enabled()
    assert not y.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_detach_shares_data_but_cuts_the_graph():
    x = Tensor(np.ones(2), requires_grad=True)
    d = (x * 2).detach()
    assert not d.requires_grad
    (d * x).sum().backward()
    np.testing.assert_allclose(x.grad, [2.0, 2.0])


def test_comparisons_give_boolean_tensors_without_gradient():
    x = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    for result in (x < 2, x <= 2, x > 2, x >= 2, x.eq(2)):
        assert result.dtype == np.bool_ and not result.requires_grad
    np.testing.assert_array_equal((x > 1.5).data, [False, True, True])


def test_backward_on_a_non_scalar_needs_an_explicit_gradient():
    x = Tensor(np.ones((2, 2)), requires_grad=True)
    y = x * 3
    with pytest.raises(RuntimeError, match="scalar"):
        y.backward()
    y.backward(np.array([[1.0, 2.0], [3.0, 4.0]]))
    np.testing.assert_allclose(x.grad, [[3.0, 6.0], [9.0, 12.0]])


def test_a_second_backward_through_a_freed_graph_raises_unless_retained():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, 4 * x.data)
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_integer_array_indexing_accumulates_gradients_of_repeated_indices():
    x = Tensor(np.arange(8.0).reshape(4, 2), requires_grad=True)
    picked = x[np.array([0, 2, 0, 0, -1])]
    upstream = np.arange(10.0).reshape(5, 2)
    picked.backward(upstream)
    expected = np.zeros((4, 2))
    np.add.at(expected, [0, 2, 0, 0, 3], upstream)
    np.testing.assert_allclose(x.grad, expected)


def test_indexing_with_an_integer_tensor_and_pairs_of_arrays():
    x = Tensor(np.arange(12.0).reshape(3, 4), requires_grad=True)
    rows = tensor(np.array([1, 1, 2]))
    cols = np.array([3, 3, 0])
    x[rows, cols].sum().backward()
    expected = np.zeros((3, 4))
    expected[1, 3], expected[2, 0] = 2.0, 1.0
    np.testing.assert_allclose(x.grad, expected)


def test_max_splits_the_gradient_evenly_between_ties_like_torch_amax():
    values = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [0.0, 5.0, 1.0]])
    x = Tensor(values, requires_grad=True)
    x.max(axis=1).sum().backward()
    reference = torch.tensor(values, requires_grad=True)
    torch.amax(reference, dim=1).sum().backward()
    np.testing.assert_allclose(x.grad, reference.grad.numpy())
    np.testing.assert_allclose(x.grad[1], [1 / 3] * 3)


def test_pow_follows_torch_at_zero_and_for_negative_bases():
    base = Tensor(np.array([0.0, -2.0, 1.5]), requires_grad=True)
    exponent = Tensor(np.array([0.0, 3.0, 2.0]), requires_grad=True)
    (base**exponent).sum().backward()
    tb = torch.tensor([0.0, -2.0, 1.5], dtype=torch.float64, requires_grad=True)
    te = torch.tensor([0.0, 3.0, 2.0], dtype=torch.float64, requires_grad=True)
    (tb**te).sum().backward()
    np.testing.assert_allclose(base.grad, tb.grad.numpy())
    np.testing.assert_allclose(exponent.grad[[0, 2]], te.grad.numpy()[[0, 2]])
    cube = Tensor(np.array([-2.0, 0.0, 1.0]), requires_grad=True)
    (cube**3).sum().backward()
    np.testing.assert_allclose(cube.grad, 3 * cube.data**2)


def test_shape_methods_route_gradients_back_through_views():
    x = Tensor(np.arange(24.0).reshape(2, 3, 4), requires_grad=True)
    y = x.transpose(2, 0, 1).reshape(4, 6).T.flatten()[::5]
    y.backward(np.arange(y.size, dtype=np.float64))
    expected = np.zeros(24)
    flat_order = np.arange(24).reshape(2, 3, 4).transpose(2, 0, 1).reshape(4, 6).T.reshape(-1)[::5]
    expected[flat_order] = np.arange(y.size)
    np.testing.assert_allclose(x.grad.reshape(-1), expected)


def test_constants_pass_through_ops_without_gradient():
    w = Tensor(np.ones(3), requires_grad=True)
    y = np.array([1.0, 2.0, 3.0]) - w
    assert y.requires_grad and isinstance(y, Tensor)
    y.sum().backward()
    np.testing.assert_allclose(w.grad, -np.ones(3))
