"""Reading by rows (worker/rows.py): the keys a worker names for a batch are every key the
batch's step reads or changes, and the hashed n-gram table they come from is well defined."""
import numpy as np
import pytest

from downpour.model.flat import FlatParameters
from downpour.model.tensor import Tensor
from downpour.ps import spans
from downpour.worker import models
from downpour.worker.objective import batch_loss
from downpour.worker.rows import RowPlan

VOCAB = 30


def char_model(**kw):
    return models.char_lstm({"num_classes": VOCAB}, np.random.default_rng(0), embed=4, hidden=8, **kw)


def batch(seed=1, shape=(3, 12)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, VOCAB, shape), rng.integers(0, VOCAB, shape)


def test_ngram_buckets_depend_on_the_last_n_characters_only_and_lie_in_the_table():
    net = char_model(ngram_buckets=97, ngram=3)
    ids = np.array([[5, 6, 7, 1, 5, 6, 7, 2, 6, 7]])
    buckets = net.ngram_ids(ids)
    assert buckets.shape == ids.shape and buckets.min() >= 0 and buckets.max() < 97
    assert buckets[0, 2] == buckets[0, 6]             # "5 6 7" twice
    again = net.ngram_ids(np.array([[9, 9, 5, 6, 7]]))
    assert again[0, 4] == buckets[0, 2]               # wherever it stands in the window
    padded = net.ngram_ids(np.array([[6, 7]]))
    assert padded[0, 1] != buckets[0, 2]              # a window's start is padded, not wrapped


def test_a_table_read_by_rows_needs_a_model_with_one():
    mlp = models.mlp({"input_shape": (4,), "num_classes": 3}, np.random.default_rng(0), hidden=[5])
    with pytest.raises(models.ModelConfigError, match="compression.rows: the model .* has no embedding table"):
        RowPlan(mlp, FlatParameters(mlp.named_parameters()))


@pytest.mark.parametrize("buckets", [0, 500])
def test_the_keys_of_a_batch_hold_every_non_zero_gradient_and_every_dense_parameter(buckets):
    net = char_model(ngram_buckets=buckets)
    flat = FlatParameters(net.named_parameters())
    plan = RowPlan(net, flat)
    assert set(plan.tables) == ({"embed.weight", "ngrams.weight"} if buckets else {"embed.weight"})
    x, y = batch()
    batch_loss(net, "language_model", x, y).backward()
    grad = flat.gather_grads()
    keys = spans.positions(*plan.keys([x]))
    outside = np.ones(flat.size, bool)
    outside[keys] = False
    assert not grad[outside].any()                     # nothing is lost by pushing only these
    start = dict(zip((n for n, _ in flat.specs), flat.offsets))
    head = start["head.weight"]
    assert np.isin(np.arange(head, head + 8 * VOCAB), keys).all()   # dense parameters whole
    rows = {int(r) for r in np.unique(x)}
    embed = (keys[(keys >= start["embed.weight"]) & (keys < start["embed.weight"] + VOCAB * 4)]) // 4
    assert set(embed.tolist()) == rows                 # exactly the rows the batch looked up


def test_the_keys_of_several_batches_are_their_union():
    net = char_model(ngram_buckets=500)
    plan = RowPlan(net, FlatParameters(net.named_parameters()))
    (a, _), (b, _) = batch(1), batch(2)
    both = spans.positions(*plan.keys([a, b]))
    expected = np.union1d(spans.positions(*plan.keys([a])), spans.positions(*plan.keys([b])))
    np.testing.assert_array_equal(both, expected)
    assert net(Tensor(a)).shape == (3, 12, VOCAB)


def test_gradients_by_rows_equal_the_dense_gather_and_the_buffer_clears_only_what_it_carried():
    """RowGradients fills an outgoing buffer at the keys its batches touched and keeps it zero
    elsewhere from one push to the next, without a pass over the whole table."""
    from downpour.worker.datasets.hashing import Featurizer, HashedTexts
    from downpour.worker.rows import RowGradients

    net = models.build({"type": "fasttext", "dim": 3}, {"input_shape": (5000,), "num_classes": 4,
                                                         "kind": "classification"}, seed=0)
    flat = FlatParameters(net.named_parameters())
    plan, grads = RowPlan(net, flat), RowGradients(flat, RowPlan(net, flat))
    featurize = Featurizer("word", 1, 1, 5000)
    buf = np.full(flat.size, 7.0, np.float32)          # never used: cleared whole the first time
    for texts in (["a b c", "d e"], ["f g", "a"], ["h i j k"]):
        x = HashedTexts(texts, featurize)
        net.zero_grad()
        batch_loss(net, "classification", x, np.array([0] * len(texts))).backward()
        grads.gather(buf, first=True)
        keys = plan.keys([x])
        norm = grads.finish(buf, keys, accumulated=1, clip_norm=None)
        dense = flat.gather_grads()
        np.testing.assert_array_equal(buf, dense)      # the very gradient the dense gather makes
        assert np.isclose(norm, np.linalg.norm(dense), rtol=1e-5)
        grads.sent(buf, keys)


def test_gradients_by_rows_average_and_clip_on_the_pushed_keys():
    from downpour.worker.rows import RowGradients

    net = models.build({"type": "sparse_logreg"}, {"input_shape": (100,), "num_classes": 2,
                                                    "kind": "classification"}, seed=0)
    flat = FlatParameters(net.named_parameters())
    grads = RowGradients(flat, RowPlan(net, flat))
    buf = np.zeros(flat.size, np.float32)
    buf[[0, 1, 200]] = [3.0, 4.0, 9.0]                  # key 200 (the bias) is not pushed
    keys = (np.array([0]), np.array([2]))
    assert grads.finish(buf, keys, accumulated=2, clip_norm=1.0) == 2.5
    np.testing.assert_allclose(buf[:2], [0.6, 0.8], rtol=1e-5)
    assert buf[200] == 9.0
