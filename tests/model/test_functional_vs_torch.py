"""model.functional (and the Tensor methods beneath it) against PyTorch 2.13 on the CPU:
forward values and the gradients of every differentiable input, in float64 (to 1e-9) and in
float32 (to 1e-4), both relative to the reference's largest magnitude."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import downpour.model.functional as F
from downpour.model import Tensor
from downpour.model.registry import OPS

torch.set_num_threads(1)

TOLERANCE = {np.float64: 1e-9, np.float32: 1e-4}


def assert_close(ours, reference, tol, what):
    reference = reference.detach().numpy()
    assert ours.shape == reference.shape, f"{what}: shape {ours.shape} != {reference.shape}"
    scale = float(np.abs(reference).max()) if reference.size else 1.0
    error = float(np.abs(ours - reference).max()) if reference.size else 0.0
    assert error <= tol * max(scale, 1e-30), f"{what}: max error {error:.3g} vs scale {scale:.3g}"


def compare(ours_fn, torch_fn, arrays, differentiable, dtype, seed=0):
    """Run both sides on the same inputs; compare outputs and every input gradient, using a
    random upstream gradient so that non-scalar outputs are checked in full."""
    tol = TOLERANCE[dtype]
    cast = [a.astype(dtype) if a.dtype.kind == "f" else a for a in arrays]
    ours_in = [Tensor(a.copy(), requires_grad=i in differentiable) for i, a in enumerate(cast)]
    torch_in = [torch.tensor(a, requires_grad=i in differentiable) for i, a in enumerate(cast)]
    out = ours_fn(*ours_in)
    ref = torch_fn(*torch_in)
    assert out.dtype == dtype, f"output dtype {out.dtype}, expected {np.dtype(dtype)}"
    assert_close(out.data, ref, tol, "forward")
    upstream = np.random.default_rng(seed).standard_normal(tuple(ref.shape)).astype(dtype)
    out.backward(upstream)
    ref.backward(torch.from_numpy(upstream))
    for i in differentiable:
        assert ours_in[i].grad is not None, f"input {i} got no gradient"
        assert ours_in[i].grad.dtype == dtype
        assert_close(ours_in[i].grad, torch_in[i].grad, tol, f"gradient of input {i}")


rng = np.random.default_rng(0)


def randn(*shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def labels(n_classes, *shape):
    return rng.integers(0, n_classes, shape)


def _torch_pair_loss(fn, **kw):
    return lambda x, t: fn(x, t, **kw)


CASES = [
    # name, ours, theirs, arrays, differentiable inputs
    ("linear", F.linear, TF.linear, [randn(5, 4), randn(3, 4), randn(3)], (0, 1, 2)),
    ("linear without bias", F.linear, TF.linear, [randn(5, 4), randn(3, 4)], (0, 1)),
    ("linear on a batch of sequences", F.linear, TF.linear, [randn(2, 5, 4), randn(3, 4), randn(3)], (0, 1, 2)),
    ("linear on a vector", F.linear, TF.linear, [randn(4), randn(3, 4), randn(3)], (0, 1, 2)),
    ("relu", F.relu, torch.relu, [randn(4, 6)], (0,)),
    ("sigmoid of large inputs", F.sigmoid, torch.sigmoid, [randn(4, 6, scale=30)], (0,)),
    ("tanh", F.tanh, torch.tanh, [randn(4, 6, scale=2)], (0,)),
    ("softmax", F.softmax, lambda x: torch.softmax(x, -1), [randn(4, 6, scale=5)], (0,)),
    ("softmax over dim 1", lambda x: F.softmax(x, dim=1), lambda x: torch.softmax(x, 1), [randn(2, 5, 3)], (0,)),
    ("log_softmax", F.log_softmax, lambda x: torch.log_softmax(x, -1), [randn(4, 6, scale=40)], (0,)),
    ("log_softmax over dim 0", lambda x: F.log_softmax(x, dim=0), lambda x: torch.log_softmax(x, 0), [randn(3, 4)], (0,)),
    ("cross_entropy on a batch", F.cross_entropy, TF.cross_entropy, [randn(32, 10, scale=3), labels(10, 32)], (0,)),
    (
        "cross_entropy summed",
        lambda x, t: F.cross_entropy(x, t, reduction="sum"),
        _torch_pair_loss(TF.cross_entropy, reduction="sum"),
        [randn(8, 5), labels(5, 8)],
        (0,),
    ),
    (
        "cross_entropy per sample",
        lambda x, t: F.cross_entropy(x, t, reduction="none"),
        _torch_pair_loss(TF.cross_entropy, reduction="none"),
        [randn(8, 5), labels(5, 8)],
        (0,),
    ),
    ("cross_entropy over a sequence", F.cross_entropy, TF.cross_entropy, [randn(4, 5, 7), labels(5, 4, 7)], (0,)),
    (
        "binary_cross_entropy_with_logits",
        F.binary_cross_entropy_with_logits,
        TF.binary_cross_entropy_with_logits,
        [randn(6, 3, scale=20), rng.random((6, 3))],
        (0, 1),
    ),
    (
        "binary_cross_entropy_with_logits per element",
        lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction="none"),
        _torch_pair_loss(TF.binary_cross_entropy_with_logits, reduction="none"),
        [randn(6, 3), rng.random((6, 3))],
        (0, 1),
    ),
    ("mse_loss", F.mse_loss, TF.mse_loss, [randn(5, 3), randn(5, 3)], (0, 1)),
    (
        "mse_loss summed",
        lambda x, t: F.mse_loss(x, t, reduction="sum"),
        _torch_pair_loss(TF.mse_loss, reduction="sum"),
        [randn(5, 3), randn(5, 3)],
        (0, 1),
    ),
    ("embedding with repeated indices", F.embedding, TF.embedding, [np.array([[1, 3, 1], [0, 1, 4]]), randn(5, 3)], (1,)),
    (
        "layer_norm",
        lambda x, w, b: F.layer_norm(x, 6, w, b),
        lambda x, w, b: TF.layer_norm(x, (6,), w, b),
        [randn(4, 6, scale=3) + 2, randn(6), randn(6)],
        (0, 1, 2),
    ),
    (
        "layer_norm over two axes",
        lambda x, w, b: F.layer_norm(x, (3, 4), w, b, eps=1e-3),
        lambda x, w, b: TF.layer_norm(x, (3, 4), w, b, eps=1e-3),
        [randn(2, 3, 4), randn(3, 4), randn(3, 4)],
        (0, 1, 2),
    ),
    (
        "layer_norm without affine parameters",
        lambda x: F.layer_norm(x, (5,)),
        lambda x: TF.layer_norm(x, (5,)),
        [randn(3, 5)],
        (0,),
    ),
    (
        "layer_norm with bias only",
        lambda x, b: F.layer_norm(x, (5,), bias=b),
        lambda x, b: TF.layer_norm(x, (5,), bias=b),
        [randn(3, 5), randn(5)],
        (0, 1),
    ),
    ("concat", lambda a, b: F.concat([a, b], dim=1), lambda a, b: torch.cat([a, b], 1), [randn(2, 3), randn(2, 2)], (0, 1)),
    ("stack", lambda a, b: F.stack([a, b], dim=-1), lambda a, b: torch.stack([a, b], -1), [randn(2, 3), randn(2, 3)], (0, 1)),
    ("where", lambda c, a, b: F.where(c, a, b), torch.where, [rng.random((3, 4)) > 0.5, randn(3, 4), randn(4)], (1, 2)),
    ("maximum", F.maximum, torch.maximum, [randn(3, 4), randn(3, 4)], (0, 1)),
]

TENSOR_CASES = [
    ("add with broadcasting", lambda a, b: a + b, [randn(3, 4), randn(4)]),
    ("sub with broadcasting", lambda a, b: a - b, [randn(2, 1, 4), randn(3, 1)]),
    ("mul with broadcasting", lambda a, b: a * b, [randn(3, 4), randn(3, 1)]),
    ("div", lambda a, b: a / b, [randn(3, 4), rng.uniform(0.5, 2, (3, 4))]),
    ("neg", lambda a: -a, [randn(3)]),
    ("pow by a scalar", lambda a: a**3, [randn(3, 4)]),
    ("pow by a tensor", lambda a, b: a**b, [rng.uniform(0.5, 2, (3, 4)), randn(3, 4)]),
    ("matmul of matrices", lambda a, b: a @ b, [randn(3, 4), randn(4, 5)]),
    ("matmul of vectors", lambda a, b: a @ b, [randn(4), randn(4)]),
    ("matmul vector by matrix", lambda a, b: a @ b, [randn(4), randn(4, 2)]),
    ("matmul batched by a matrix", lambda a, b: a @ b, [randn(2, 3, 4), randn(4, 5)]),
    ("matmul with broadcast batches", lambda a, b: a @ b, [randn(2, 1, 3, 4), randn(3, 4, 2)]),
    ("exp", lambda a: a.exp(), [randn(3, 4)]),
    ("log", lambda a: a.log(), [rng.uniform(0.1, 3, (3, 4))]),
    ("sqrt", lambda a: a.sqrt(), [rng.uniform(0.1, 3, (3, 4))]),
    ("sum over an axis", lambda a: a.sum(axis=1), [randn(3, 4)]),
    ("sum over everything", lambda a: a.sum(), [randn(3, 4)]),
    ("mean over axes, kept", lambda a: a.mean(axis=(0, 2), keepdims=True), [randn(2, 3, 4)]),
    ("max over an axis", lambda a: a.max(axis=0), [randn(3, 4)]),
    ("reshape", lambda a: a.reshape(6, -1), [randn(3, 4)]),
    ("transpose", lambda a: a.transpose(1, 2, 0), [randn(2, 3, 4)]),
    ("slicing", lambda a: a[1:, ::2], [randn(3, 4)]),
    ("integer-array indexing", lambda a: a[np.array([2, 0, 2])], [randn(3, 4)]),
]

_TORCH_TENSOR = {
    "max over an axis": lambda a: torch.amax(a, dim=0),
    "sum over an axis": lambda a: a.sum(dim=1),
    "mean over axes, kept": lambda a: a.mean(dim=(0, 2), keepdim=True),
    "transpose": lambda a: a.permute(1, 2, 0),
    "integer-array indexing": lambda a: a[torch.tensor([2, 0, 2])],
}

DTYPES = [np.float64, np.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("name, ours, theirs, arrays, differentiable", CASES, ids=[c[0] for c in CASES])
def test_functional_matches_torch(name, ours, theirs, arrays, differentiable, dtype):
    compare(ours, theirs, arrays, differentiable, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("name, fn, arrays", TENSOR_CASES, ids=[c[0] for c in TENSOR_CASES])
def test_tensor_methods_match_torch(name, fn, arrays, dtype):
    compare(fn, _TORCH_TENSOR.get(name, fn), arrays, tuple(range(len(arrays))), dtype)


needs_conv = pytest.mark.skipif("conv2d" not in OPS, reason="the conv2d op is not registered yet")


@needs_conv
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("stride, padding, bias", [(1, 0, True), ((2, 1), (1, 2), True), (2, 1, False)])
def test_conv2d_matches_torch(stride, padding, bias, dtype):
    arrays = [randn(2, 3, 7, 6), randn(4, 3, 3, 2)] + ([randn(4)] if bias else [])
    compare(
        lambda x, w, *b: F.conv2d(x, w, *b, stride=stride, padding=padding),
        lambda x, w, *b: TF.conv2d(x, w, *b, stride=stride, padding=padding),
        arrays,
        tuple(range(len(arrays))),
        dtype,
    )


@needs_conv
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("pool", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("kernel, stride, padding", [(2, None, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 0))])
def test_pooling_matches_torch(pool, kernel, stride, padding, dtype):
    compare(
        lambda x: getattr(F, pool)(x, kernel, stride=stride, padding=padding),
        lambda x: getattr(TF, pool)(x, kernel, stride=stride, padding=padding),
        [randn(2, 3, 7, 6)],
        (0,),
        dtype,
    )


def test_dropout_in_eval_mode_is_the_identity():
    x = Tensor(randn(4, 5).astype(np.float32), requires_grad=True)
    assert F.dropout(x, p=0.5, training=False) is x
    assert F.dropout(x, p=0.0) is x


def test_dropout_in_training_zeroes_about_p_and_scales_the_rest_by_one_over_one_minus_p():
    x = Tensor(np.ones((200, 100), dtype=np.float32), requires_grad=True)
    y = F.dropout(x, p=0.3, rng=np.random.default_rng(0))
    assert y.dtype == np.float32
    kept = y.data != 0
    np.testing.assert_allclose(y.data[kept], 1 / 0.7, rtol=1e-6)
    assert abs(kept.mean() - 0.7) < 0.01
    y.sum().backward()
    np.testing.assert_allclose(x.grad, y.data)  # the gradient is the mask


def test_dropout_masks_are_reproducible_from_a_seeded_generator():
    x = Tensor(np.ones((8, 8), dtype=np.float32))
    first = F.dropout(x, 0.5, rng=np.random.default_rng(7)).data
    again = F.dropout(x, 0.5, rng=np.random.default_rng(7)).data
    np.testing.assert_array_equal(first, again)
    assert F.dropout(x, 1.0).data.max() == 0.0
    with pytest.raises(ValueError):
        F.dropout(x, 1.5)


def test_cross_entropy_rejects_targets_outside_the_classes():
    logits = Tensor(randn(3, 4), requires_grad=True)
    with pytest.raises(ValueError, match="targets"):
        F.cross_entropy(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="targets"):
        F.cross_entropy(logits, np.array([0, -1, 1]))
    with pytest.raises(TypeError):
        F.cross_entropy(logits, np.array([0.0, 1.0, 1.0]))


def test_losses_reject_an_unknown_reduction():
    x = Tensor(randn(3, 4))
    for loss, target in (
        (F.cross_entropy, np.array([0, 1, 2])),
        (F.binary_cross_entropy_with_logits, rng.random((3, 4))),
        (F.mse_loss, randn(3, 4)),
    ):
        with pytest.raises(ValueError, match="reduction"):
            loss(x, target, reduction="average")


def test_embedding_rejects_indices_outside_the_table():
    with pytest.raises(IndexError):
        F.embedding(np.array([0, 5]), Tensor(randn(5, 2)))
