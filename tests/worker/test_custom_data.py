"""A data factory's splits: array pairs, memory-mapped arrays and indexable objects, all read
through index arrays (never whole), cut by worker rank, carved and scored like built-in sets."""
import sys
import textwrap

import numpy as np
import pytest

from downpour.model import Tensor, nn
from downpour.worker import plugins
from downpour.worker.datasets import DatasetError
from downpour.worker.datasets.custom import load_factory
from downpour.worker.objective import cross_entropy, evaluate


class Recording:
    """An array-like that remembers every index it is asked for (a stand-in for a file on disk)."""

    def __init__(self, array):
        self.array, self.reads = array, []

    def __len__(self):
        return len(self.array)

    def __getitem__(self, index):
        self.reads.append(np.arange(len(self.array))[index])
        return self.array[index]


class Rows:
    """A split object: `__len__` and `__getitem__(index_array) -> (inputs, targets)`."""

    made: list = []

    def __init__(self, x, y):
        self.x, self.y, self.reads = x, y, []
        Rows.made.append(self)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, index):
        self.reads.append(np.asarray(index))
        return self.x[index], self.y[index]


def factory(tmp_path, body, name="load"):
    """Write a data factory returning `body` (an expression over `x`, `y`, `Rows`, `np`)."""
    path = tmp_path / "mydata.py"
    path.write_text(textwrap.dedent(f"""\
        import numpy as np
        from tests.worker.test_custom_data import Recording, Rows

        def {name}(n=40, classes=3, integer=True, **extra):
            rng = np.random.default_rng(0)
            x = rng.standard_normal((n, 4))
            y = rng.integers(0, classes, n) if integer else rng.standard_normal((n, 2))
            return {body}
    """))
    return f"{path}:{name}"


def config(ref, **keys):
    return {"factory": ref, "validation": 0.0, "limit_train": None, **keys}


def test_array_pairs_become_float32_inputs_and_int64_labels_of_a_classification_set(tmp_path):
    data = load_factory(config(factory(tmp_path, '{"train": (x[:30], y[:30]), "test": (x[30:], y[30:])}')), 0)
    assert (data.kind, data.input_shape, data.train_examples, data.num_classes) == ("classification", (4,), 30, 3)
    x, y = next(data.batches(0, 1, 8, seed=0))
    assert (x.dtype, x.shape, y.dtype, y.shape) == (np.float32, (8, 4), np.int64, (8,))
    assert data.has_split("test") and not data.has_split("val")


def test_memory_mapped_arrays_are_read_a_batch_at_a_time_in_ascending_order(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "x.npy", rng.standard_normal((64, 3)))
    np.save(tmp_path / "y.npy", rng.integers(0, 4, 64))
    path = tmp_path / "mapped.py"
    path.write_text(textwrap.dedent("""\
        import numpy as np
        from tests.worker.test_custom_data import Recording

        opened = []

        def load(directory):
            x = np.load(f"{directory}/x.npy", mmap_mode="r")
            y = np.load(f"{directory}/y.npy", mmap_mode="r")
            opened.append(Recording(x))
            return {"train": (opened[-1], y), "test": (x[:10], y[:10])}
    """))
    data = load_factory(config(f"{path}:load", directory=str(tmp_path), validation=0.25, limit_train=40), 0)
    recorded = sys.modules[plugins.load(f"{path}:load", "data.factory").__module__].opened[-1]
    assert isinstance(recorded.array, np.memmap)
    recorded.reads.clear()
    batches = data.batches(rank=0, world=1, batch_size=8, seed=0)
    for _ in range(5):
        x, y = next(batches)
        assert (x.dtype, x.shape, y.shape) == (np.float32, (8, 3), (8,))
    list(data.eval_batches("val", 5))
    assert len(recorded.reads) == 5 + 4 and all(len(read) <= 8 for read in recorded.reads)
    assert all(np.all(np.diff(read) > 0) for read in recorded.reads)
    assert (len(data.splits["val"]), data.train_examples) == (16, 40)
    recorded.reads.clear()
    assert data.num_classes == 4 and recorded.reads == []  # counted from the targets alone


def test_an_indexable_object_is_asked_for_sorted_index_arrays_a_batch_at_a_time(tmp_path):
    ref = factory(tmp_path, '{"train": Rows(x[:32], y[:32]), "test": Rows(x[32:], y[32:])}')
    Rows.made.clear()
    data = load_factory(config(ref), 0)
    train, test = Rows.made
    train.reads.clear()
    batches = data.batches(0, 1, 8, seed=2)
    for _ in range(6):
        x, y = next(batches)
        assert x.shape == (8, 4) and y.shape == (8,)
    assert len(train.reads) == 6 and all(len(r) == 8 and np.all(np.diff(r) > 0) for r in train.reads)
    test.reads.clear()
    assert [len(y) for _, y in data.eval_batches("test", 3)] == [3, 3, 2]
    assert [list(r) for r in test.reads] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert data.num_classes == 3  # counted through the objects, a chunk at a time


def test_workers_cut_the_train_split_by_rank_into_the_global_batches_of_one_worker(tmp_path):
    data = load_factory(config(factory(tmp_path, '{"train": (x, np.arange(len(x))), "test": (x[:4], y[:4])}', )), 0)
    whole = data.batches(0, 1, 12, seed=4)
    parts = [data.batches(rank, 3, 4, seed=4) for rank in range(3)]
    for _ in range(7):  # across an epoch boundary (40 // 12 = 3 global batches an epoch)
        together = np.concatenate([next(part)[1] for part in parts])
        assert sorted(together) == sorted(next(whole)[1])


def test_float_targets_make_a_regression_set_without_accuracy_and_the_default_loss_says_why(tmp_path):
    ref = factory(tmp_path, '{"train": (x, y), "test": (x[:10], y[:10])}')
    data = load_factory(config(ref, integer=False), 0)
    assert data.kind == "regression" and data.num_classes == 0
    net = nn.Linear(4, 2)

    def mse(output, target):
        difference = output - target
        return (difference * difference).mean()

    metrics = evaluate(net, data, "test", loss=mse)
    assert set(metrics) == {"test_loss"} and metrics["test_loss"] > 0
    with pytest.raises(TypeError, match="needs integer class labels.*loss: FILE.py:NAME"):
        cross_entropy(net(Tensor(data.splits["test"].take(np.arange(2))[0])), np.zeros((2, 2), np.float32))


class _Fixed:
    """One evaluation batch, as given."""

    kind = "classification"

    def __init__(self, x, y):
        self.x, self.y = x, y

    def eval_batches(self, split, batch_size):
        return iter([(self.x, self.y)])


class _Echo(nn.Module):
    """Its input as its output (plus a 0-d parameter, so that it has one)."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(np.zeros((), np.float32))

    def forward(self, x):
        return x + self.bias


def test_accuracy_is_reported_for_integer_labels_scored_on_axis_1_or_on_the_last_axis():
    scores = np.zeros((2, 3, 4), np.float32)  # (N, C, L), torch's layout: class 2 scores highest
    scores[:, 2] = 5.0
    labels = np.full((2, 4), 2)
    labels[0, 0] = 1
    metrics = evaluate(_Echo(), _Fixed(scores, labels))
    assert metrics["test_accuracy"] == pytest.approx(7 / 8) and metrics["test_loss"] > 0
    assert evaluate(_Echo(), _Fixed(np.moveaxis(scores, 1, -1).copy(), labels)) == pytest.approx(metrics)  # (N, L, C)


def test_integer_targets_that_the_output_does_not_score_get_a_loss_but_no_accuracy():
    def distance(output, target):
        return ((output - target) * (output - target)).mean()

    metrics = evaluate(_Echo(), _Fixed(np.ones((4, 2), np.float32), np.zeros((4, 2), np.int64)), loss=distance)
    assert metrics == {"test_loss": pytest.approx(1.0)}


@pytest.mark.parametrize("body, message", [
    ('[(x, y)]', "returned a list; expected a mapping of split name"),
    ('{"train": (x, y)}', "returned no 'test' split (it returned: train)"),
    ('{"train": (x, y[:-1]), "test": (x, y)}', "split 'train': 40 inputs but 39 targets"),
    ('{"train": (x, y), "test": 3}', "split 'test': a int; expected a pair (inputs, targets)"),
    ('{"train": (x, y), "test": (x[:0], y[:0])}', "split 'test' is empty"),
    ('{"train": (x, y), "test": (x[:, :2], y)}', "the splits disagree on row shapes"),
    ('{"train": (x, y), "test": (x.astype(str), y)}', "inputs of dtype <U"),
])
def test_a_factory_that_returns_the_wrong_thing_is_named_with_its_line(tmp_path, body, message):
    ref = factory(tmp_path, body)
    with pytest.raises(DatasetError) as caught:
        load_factory(config(ref), 0)
    assert message in str(caught.value)
    assert f"{tmp_path}/mydata.py, line 4" in str(caught.value)


def test_validation_cannot_be_carved_from_a_factory_that_returns_its_own(tmp_path):
    ref = factory(tmp_path, '{"train": (x, y), "val": (x[:5], y[:5]), "test": (x, y)}')
    assert load_factory(config(ref), 0).has_split("val")
    with pytest.raises(DatasetError, match="data.validation: 0.2, but .* returns a 'val' split of its own"):
        load_factory(config(ref, validation=0.2), 0)
