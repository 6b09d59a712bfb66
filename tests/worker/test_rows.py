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



def _fasttext(buckets=5000):
    from downpour.worker.datasets.hashing import Featurizer, HashedTexts

    net = models.build({"type": "fasttext", "dim": 3}, {"input_shape": (buckets,), "num_classes": 4,
                                                         "kind": "classification"}, seed=0)
    flat = FlatParameters(net.named_parameters())
    featurize = Featurizer("word", 1, 1, buckets)
    return net, flat, lambda texts: HashedTexts(texts, featurize)


def _backward(net, x):
    net.zero_grad()
    batch_loss(net, "classification", x, np.zeros(len(x), np.int64)).backward()


def test_gradients_by_rows_are_the_dense_gradients_and_a_buffer_clears_only_what_it_carried():
    """AccruedByRows sums into the outgoing buffers at the keys the batches touched and keeps each
    zero elsewhere from one push to the next, without a pass over the table."""
    from downpour.worker.rows import AccruedByRows

    net, flat, texts = _fasttext()
    plan = RowPlan(net, flat)
    buffers = [np.full(flat.size, 7.0, np.float32), np.full(flat.size, 7.0, np.float32)]  # unused: cleared once
    accrued = AccruedByRows(buffers, flat, plan)
    for batch in (["a b c", "d e"], ["f g", "a"], ["h i j k"], ["b"]):
        x = texts(batch)
        _backward(net, x)
        accrued.add(flat)
        grad, pushed = accrued.take(plan.keys([x]))
        dense = flat.gather_grads()
        np.testing.assert_array_equal(grad, dense)                # the very gradient the dense gather makes
        np.testing.assert_array_equal(np.sort(pushed), np.sort(dense[spans.positions(*plan.keys([x]))]))


def test_gradients_by_rows_average_over_push_every_and_clipping_writes_back_to_the_pushed_keys():
    from downpour.model import optim
    from downpour.worker.rows import AccruedByRows

    net, flat, texts = _fasttext()
    plan = RowPlan(net, flat)
    accrued = AccruedByRows([np.zeros(flat.size, np.float32)], flat, plan)
    a, b = texts(["a b"]), texts(["b c"])
    expected = np.zeros(flat.size, np.float32)
    for x in (a, b):
        _backward(net, x)
        accrued.add(flat)
        expected += flat.gather_grads()
    expected /= 2
    grad, pushed = accrued.take(plan.keys([a, b]))
    np.testing.assert_array_equal(grad, expected)
    optim.clip_grad_norm_(pushed, 1e-3)
    accrued.clipped(pushed)
    assert np.isclose(np.linalg.norm(grad), 1e-3, rtol=1e-3)
    accrued.poison()
    assert np.isnan(grad[accrued.poison_key]) and accrued.poison_key in spans.positions(*plan.keys([a]))


def test_a_batch_read_ahead_and_pushed_steps_later_is_named_by_the_very_same_spans():
    """The read that fetches a batch's rows and the push of its gradient, two exchanges later
    when overlapped, hand the client one object, which it packs for a header once."""
    net = char_model(ngram_buckets=500)
    plan = RowPlan(net, FlatParameters(net.named_parameters()))
    xs = [batch(seed)[0] for seed in range(8)]
    read = {}
    for step in range(6):                         # read step + 2 ahead, push this step's batch
        read[step + 2] = plan.keys([xs[step + 2]])
        pushed = plan.keys([xs[step]])
        if step in read:
            assert pushed is read[step]
        np.testing.assert_array_equal(spans.positions(*pushed), spans.positions(*plan.keys([xs[step].copy()])))
