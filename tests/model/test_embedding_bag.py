"""EmbeddingBag matches torch.nn.EmbeddingBag (values, the table's gradient and the per-sample
weights' gradient) in sum and mean mode, with empty bags and repeated ids; the table's
gradient is a RowSparse of the rows read, never a table-sized array, and the engine adds
RowSparse gradients the way it adds dense ones."""
import numpy as np
import pytest
import torch

import downpour.model.functional as F
from downpour.model import RowSparse, Tensor, gradcheck, nn
from downpour.model.flat import FlatParameters

torch.set_num_threads(1)

# Bag 1 and the last bag are empty; id 4 repeats within bag 0 and id 2 across bags 2 and 3.
IDS = np.array([4, 0, 4, 2, 2, 7, 2, 1, 9])
OFFSETS = np.array([0, 3, 3, 5, 9])


def _pair(mode, rng, rows=10, dim=4, dtype=np.float32):
    theirs = torch.nn.EmbeddingBag(rows, dim, mode=mode).to(torch.float64 if dtype == np.float64 else torch.float32)
    ours = nn.EmbeddingBag(rows, dim, mode=mode, _weight=theirs.weight.detach().numpy().copy())
    return ours, theirs


def _backward_both(ours_out, theirs_out, rng):
    projection = rng.standard_normal(theirs_out.shape)
    ours_out.backward(projection.astype(ours_out.dtype))
    theirs_out.backward(torch.tensor(projection, dtype=theirs_out.dtype))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_values_and_table_gradient_match_torch_with_empty_bags_and_repeated_ids(mode, dtype):
    rng = np.random.default_rng(0)
    ours, theirs = _pair(mode, rng, dtype=dtype)
    out = ours(IDS, OFFSETS)
    expected = theirs(torch.tensor(IDS), torch.tensor(OFFSETS))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), atol=tol)
    assert not out.numpy()[[1, 4]].any()                       # empty bags give zero rows
    _backward_both(out, expected, rng)
    grad = ours.weight.grad
    assert isinstance(grad, RowSparse) and grad.shape == (10, 4)
    assert sorted(set(grad.rows.tolist())) == sorted(set(IDS.tolist()))
    np.testing.assert_allclose(grad.to_dense(), theirs.weight.grad.numpy(), atol=tol)


def test_per_sample_weights_scale_each_row_and_get_their_own_gradient_as_in_torch():
    rng = np.random.default_rng(1)
    ours, theirs = _pair("sum", rng, dtype=np.float64)
    psw = rng.standard_normal(IDS.size)
    ours_psw, theirs_psw = Tensor(psw, requires_grad=True), torch.tensor(psw, requires_grad=True)
    out = ours(IDS, OFFSETS, per_sample_weights=ours_psw)
    expected = theirs(torch.tensor(IDS), torch.tensor(OFFSETS), per_sample_weights=theirs_psw)
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), atol=1e-12)
    _backward_both(out, expected, rng)
    np.testing.assert_allclose(ours.weight.grad.to_dense(), theirs.weight.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(ours_psw.grad, theirs_psw.grad.numpy(), atol=1e-12)


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_two_dimensional_input_and_include_last_offset_follow_torch(mode):
    rng = np.random.default_rng(2)
    ours, theirs = _pair(mode, rng, dtype=np.float64)
    ids2d = rng.integers(0, 10, (3, 4))
    np.testing.assert_allclose(ours(ids2d).numpy(), theirs(torch.tensor(ids2d)).detach().numpy(), atol=1e-12)
    last = np.concatenate([OFFSETS, [IDS.size]])
    ours_last = nn.EmbeddingBag(10, 4, mode=mode, include_last_offset=True, _weight=ours.weight.data)
    theirs_last = torch.nn.EmbeddingBag(10, 4, mode=mode, include_last_offset=True, _weight=theirs.weight)
    np.testing.assert_allclose(ours_last(IDS, last).numpy(),
                               theirs_last(torch.tensor(IDS), torch.tensor(last)).detach().numpy(), atol=1e-12)


def test_functional_embedding_bag_passes_a_float64_gradient_check_through_a_small_network():
    rng = np.random.default_rng(3)
    table = Tensor(rng.standard_normal((6, 3)), requires_grad=True)
    head = Tensor(rng.standard_normal((3, 2)), requires_grad=True)
    ids, offsets = np.array([5, 1, 1, 0, 3]), np.array([0, 2, 2])
    assert gradcheck(lambda t, h: (F.embedding_bag(ids, t, offsets, mode="mean").tanh() @ h), [table, head])


def test_bad_offsets_ids_and_modes_are_refused_by_name():
    table = Tensor(np.zeros((5, 2), np.float32), requires_grad=True)
    with pytest.raises(ValueError, match="offsets must start at 0"):
        F.embedding_bag(np.array([1, 2]), table, np.array([1]))
    with pytest.raises(ValueError, match="non-decreasing"):
        F.embedding_bag(np.array([1, 2]), table, np.array([0, 2, 1]))
    with pytest.raises(IndexError, match=r"ids must lie in \[0, 5\)"):
        F.embedding_bag(np.array([5]), table, np.array([0]))
    with pytest.raises(ValueError, match="per_sample_weights need mode 'sum'"):
        F.embedding_bag(np.array([1]), table, np.array([0]), mode="mean", per_sample_weights=np.ones(1, np.float32))
    with pytest.raises(ValueError, match="mode must be one of"):
        nn.EmbeddingBag(5, 2, mode="max")


def test_the_engine_concatenates_two_row_sparse_gradients_and_densifies_only_against_a_dense_one():
    rng = np.random.default_rng(4)
    table = Tensor(rng.standard_normal((8, 2)), requires_grad=True)
    twice = F.embedding_bag(np.array([1, 2]), table, np.array([0]), "sum") + \
        F.embedding_bag(np.array([2, 7]), table, np.array([0]), "sum")
    twice.sum().backward()
    assert isinstance(table.grad, RowSparse)
    assert sorted(table.grad.rows.tolist()) == [1, 2, 2, 7]
    np.testing.assert_array_equal(table.grad.to_dense()[:, 0], [0, 1, 2, 0, 0, 0, 0, 1])

    table.grad = None
    mixed = F.embedding_bag(np.array([3]), table, np.array([0]), "sum").sum() + (table * 2.0).sum()
    mixed.backward()
    assert isinstance(table.grad, np.ndarray)
    expected = np.full((8, 2), 2.0)
    expected[3] += 1
    np.testing.assert_array_equal(table.grad, expected)


def test_row_sparse_coalesces_repeated_rows_and_refuses_a_wrong_shape():
    g = RowSparse(np.array([3, 1, 3]), np.array([[1.0], [2.0], [4.0]]), (5, 1))
    c = g.coalesce()
    assert c.rows.tolist() == [1, 3] and c.values[:, 0].tolist() == [2.0, 5.0]
    np.testing.assert_array_equal(c.to_dense(), g.to_dense())
    np.testing.assert_array_equal((g * 2.0).to_dense(), 2 * g.to_dense())
    with pytest.raises(ValueError, match="values of shape"):
        RowSparse(np.array([0, 1]), np.zeros((3, 1)), (5, 1))


def test_flat_parameters_gather_a_row_sparse_gradient_into_its_rows_and_zeros_elsewhere():
    bag = nn.EmbeddingBag(6, 2, mode="sum", _weight=np.ones((6, 2), np.float32))
    head = nn.Linear(2, 1)
    flat = FlatParameters([("bag.weight", bag.weight), *head.named_parameters()])
    head(bag(np.array([4, 4, 0]), np.array([0, 2]))).sum().backward()
    out = flat.gather_grads(np.full(flat.size, 9.0, np.float32))
    table = out[:12].reshape(6, 2)
    np.testing.assert_array_equal(table, bag.weight.grad.to_dense())
    assert not table[[1, 2, 3, 5]].any()


def test_adding_rows_with_numba_gives_the_bits_of_numpy_add_at_repeats_included():
    from downpour.model import jit
    from downpour.model.sparse import add_rows

    if not jit.AVAILABLE:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(5)
    rows = rng.integers(0, 50, 10_000)                         # every row many times over
    values = rng.standard_normal((10_000, 3)).astype(np.float32)
    by_numba, by_numpy = np.ones((50, 3), np.float32), np.ones((50, 3), np.float32)
    add_rows(by_numba, rows, values, use_numba=True)
    add_rows(by_numpy, rows, values, use_numba=False)
    np.testing.assert_array_equal(by_numba, by_numpy)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_sparse_embedding_gives_the_rows_looked_up_as_torchs_sparse_embedding_does(dtype):
    theirs = torch.nn.Embedding(10, 4, sparse=True).to(torch.float64 if dtype == np.float64 else torch.float32)
    ours = nn.Embedding(10, 4, sparse=True)
    ours.weight.data = theirs.weight.detach().numpy().copy()
    ids = np.array([[4, 0, 4], [2, 9, 2]])
    out, expected = ours(ids), theirs(torch.tensor(ids))
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), atol=0)
    _backward_both(out, expected, np.random.default_rng(1))
    grad = ours.weight.grad
    assert isinstance(grad, RowSparse) and sorted(set(grad.rows.tolist())) == [0, 2, 4, 9]
    np.testing.assert_allclose(grad.to_dense(), theirs.weight.grad.to_dense().numpy(), atol=1e-12 if dtype == np.float64
                               else 1e-6)
