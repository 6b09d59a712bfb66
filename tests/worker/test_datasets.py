"""Specification of worker.datasets: offline loaders, their errors, and the per-worker batch partition."""
from __future__ import annotations

import gzip
import importlib.util
import itertools
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from downpour.worker.datasets import DatasetError, available, batch_indices, generated, load
from downpour.worker.datasets.arrays import load_npz
from downpour.worker.datasets.batching import window_offset
from downpour.worker.datasets.idx import encode_idx, parse_idx
from downpour.worker.datasets.images import FASHION_MNIST_DIR, FASHION_MNIST_INSTALL
from downpour.worker.datasets.text import JARGON_INSTALL, JARGON_PATH, decode_ids, read_jargon, read_pydoc_topics

# --- digits -----------------------------------------------------------------------------------

def test_digits_are_float32_nchw_images_in_unit_range_with_int64_labels():
    digits = load("digits")
    assert digits.kind == "classification" and digits.num_classes == 10
    assert digits.x_train.shape == (1437, 1, 8, 8) and digits.x_test.shape == (360, 1, 8, 8)
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int64
    assert digits.x_train.min() == 0.0 and digits.x_train.max() == 1.0
    assert set(np.unique(digits.y_test)) == set(range(10))
    assert digits.input_shape == (1, 8, 8)
    assert digits.x_val.shape == (0, 1, 8, 8) and digits.y_val.shape == (0,)


def test_digits_split_is_identical_across_loads():
    first, second = load("digits"), load("digits")
    np.testing.assert_array_equal(first.x_train, second.x_train)
    np.testing.assert_array_equal(first.y_test, second.y_test)


def test_validation_is_a_seeded_disjoint_subset_carved_out_of_train():
    full = load("digits")
    carved, again, other_seed = (load("digits", validation=0.2, seed=s) for s in (7, 7, 8))
    assert len(carved.y_val) == round(0.2 * 1437) and len(carved.y_train) + len(carved.y_val) == 1437
    np.testing.assert_array_equal(carved.x_val, again.x_val)
    assert not np.array_equal(carved.y_val, other_seed.y_val)
    rows = lambda x: {row.tobytes() for row in x}  # noqa: E731
    assert rows(carved.x_val) | rows(carved.x_train) == rows(full.x_train)
    assert not rows(carved.x_val) & rows(carved.x_train)


def test_limit_train_keeps_only_the_first_training_examples():
    limited = load("digits", limit_train=100)
    np.testing.assert_array_equal(limited.x_train, load("digits").x_train[:100])
    assert len(limited.y_test) == 360


# --- Fashion-MNIST and IDX ----------------------------------------------------------------------

def _write_fashion_dir(directory: Path, n_train: int = 6, n_test: int = 4) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (directory / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(encode_idx(images)))
        (directory / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(encode_idx(labels)))


def test_fashion_mnist_loads_from_the_debian_package(monkeypatch):
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not installed: {FASHION_MNIST_INSTALL}")
    monkeypatch.delenv("DOWNPOUR_FASHION_MNIST_DIR", raising=False)
    fashion = load("fashion_mnist")
    assert fashion.x_train.shape == (60000, 1, 28, 28) and fashion.x_test.shape == (10000, 1, 28, 28)
    assert fashion.x_train.dtype == np.float32 and fashion.y_train.dtype == np.int64
    assert 0.0 <= fashion.x_test.min() and fashion.x_test.max() <= 1.0
    assert np.bincount(fashion.y_test).tolist() == [1000] * 10


def test_missing_fashion_mnist_files_name_the_package_and_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("DOWNPOUR_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DatasetError, match="dataset-fashion-mnist") as raised:
        load("fashion_mnist")
    assert "apt-get install -y dataset-fashion-mnist" in str(raised.value)


def test_fashion_mnist_reads_synthetic_idx_files_from_the_override_directory(monkeypatch, tmp_path):
    _write_fashion_dir(tmp_path)
    monkeypatch.setenv("DOWNPOUR_FASHION_MNIST_DIR", str(tmp_path))
    fashion = load("fashion_mnist")
    assert fashion.x_train.shape == (6, 1, 28, 28) and fashion.y_test.shape == (4,)
    raw = parse_idx(gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes()), "train", ndim=3)
    np.testing.assert_allclose(fashion.x_train[:, 0] * 255, raw, atol=1e-4)


@pytest.mark.parametrize("array", [
    np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
    np.array([-3, 7, 1_000_000], dtype=np.int32),
    np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
])
def test_idx_encoding_round_trips_shape_dtype_and_values(array):
    decoded = parse_idx(encode_idx(array), "memory", ndim=array.ndim)
    assert decoded.shape == array.shape and decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


def test_idx_with_a_corrupted_magic_number_is_rejected_naming_the_file():
    data = bytearray(encode_idx(np.zeros((2, 28, 28), np.uint8)))
    data[0] = 0x1F
    with pytest.raises(DatasetError, match="images.idx: bad IDX magic number"):
        parse_idx(bytes(data), "images.idx", ndim=3)


def test_idx_whose_payload_disagrees_with_its_header_is_rejected():
    data = encode_idx(np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DatasetError, match="truncated or corrupted"):
        parse_idx(data[:-1], "images.idx", ndim=3)
    with pytest.raises(DatasetError, match="3 dimensions, expected 1"):
        parse_idx(data, "labels.idx", ndim=1)


def test_fashion_mnist_file_that_is_not_gzip_is_a_dataset_error(monkeypatch, tmp_path):
    _write_fashion_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    monkeypatch.setenv("DOWNPOUR_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz is not a readable gzip file"):
        load("fashion_mnist")


# --- mnist1d --------------------------------------------------------------------------------

needs_mnist1d = pytest.mark.skipif(
    importlib.util.find_spec("mnist1d") is None, reason="mnist1d not installed: pip install 'downpour[data]'"
)


@needs_mnist1d
def test_mnist1d_gives_channels_first_sequences_of_length_40_and_its_own_80_20_split(monkeypatch, tmp_path):
    monkeypatch.setenv("DOWNPOUR_CACHE", str(tmp_path))
    small = generated.load_mnist1d(num_samples=200)
    assert small.x_train.shape == (160, 1, 40) and small.x_test.shape == (40, 1, 40)
    assert small.x_train.dtype == np.float32 and small.y_train.dtype == np.int64
    assert small.num_classes == 10 and set(np.unique(small.y_train)) <= set(range(10))


@needs_mnist1d
def test_mnist1d_is_generated_once_then_read_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DOWNPOUR_CACHE", str(tmp_path))
    first = generated.load_mnist1d(num_samples=100, seed=3)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind

    def must_not_generate(*args):
        raise AssertionError("regenerated despite a cache file")

    monkeypatch.setattr(generated, "_generate", must_not_generate)
    second = generated.load_mnist1d(num_samples=100, seed=3)
    np.testing.assert_array_equal(first.x_train, second.x_train)
    np.testing.assert_array_equal(first.y_test, second.y_test)
    with pytest.raises(AssertionError, match="regenerated"):
        generated.load_mnist1d(num_samples=100, seed=4)  # other arguments, other cache key


@needs_mnist1d
def test_mnist1d_generation_is_deterministic_and_leaves_global_random_state_alone(monkeypatch, tmp_path):
    np.random.seed(123)
    random.seed(123)
    expected_numpy, expected_python = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    monkeypatch.setenv("DOWNPOUR_CACHE", str(tmp_path / "a"))
    first = generated.load_mnist1d(num_samples=100)
    assert (np.random.random(), random.random()) == (expected_numpy, expected_python)
    monkeypatch.setenv("DOWNPOUR_CACHE", str(tmp_path / "b"))
    np.testing.assert_array_equal(first.x_train, generated.load_mnist1d(num_samples=100).x_train)


def test_mnist1d_without_the_package_names_the_pip_extra(monkeypatch, tmp_path):
    monkeypatch.setenv("DOWNPOUR_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(DatasetError, match=r"pip install 'downpour\[data\]'"):
        generated.load_mnist1d(num_samples=100)


# --- text -----------------------------------------------------------------------------------

def test_text_ids_decode_back_to_the_text_with_a_sorted_shared_vocabulary():
    pydoc = load("text:pydoc")
    text = read_pydoc_topics()
    assert pydoc.kind == "language_model" and pydoc.vocab == "".join(sorted(set(text)))
    assert pydoc.num_classes == len(pydoc.vocab) and pydoc.train_ids.dtype == np.int64
    assert decode_ids(np.concatenate([pydoc.train_ids, pydoc.test_ids]), pydoc.vocab) == text


def test_text_test_split_is_the_held_out_last_ten_percent_by_position():
    pydoc = load("text:pydoc", max_chars=10_000)
    assert len(pydoc.train_ids) == 9_000 and len(pydoc.test_ids) == 1_000
    assert decode_ids(pydoc.test_ids, pydoc.vocab) == read_pydoc_topics()[9_000:10_000]


def test_text_validation_is_the_end_of_the_training_text():
    pydoc = load("text:pydoc", max_chars=10_000, validation=0.1, seed=5)
    assert decode_ids(pydoc.val_ids, pydoc.vocab) == read_pydoc_topics()[8_100:9_000]
    assert len(pydoc.train_ids) == 8_100


def test_jargon_file_round_trips_through_its_vocabulary():
    if not JARGON_PATH.is_file():
        pytest.skip(f"Jargon File not installed: {JARGON_INSTALL}")
    jargon = load("text:jargon", max_chars=50_000)
    assert len(jargon.train_ids) == 45_000 and "hacker" in decode_ids(jargon.train_ids, jargon.vocab)
    assert decode_ids(jargon.test_ids, jargon.vocab) == read_jargon()[45_000:50_000]


def test_missing_jargon_file_names_the_package_and_install_command(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install -y jargon-text"):
        read_jargon(tmp_path / "jargon.txt.gz")


def test_language_model_batches_are_windows_whose_targets_are_the_next_characters():
    pydoc = load("text:pydoc", max_chars=5_000, seq_len=16)
    x, y = next(pydoc.batches(rank=1, world=2, batch_size=8, seed=0))
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == np.int64
    windows = (len(pydoc.train_ids) - 16) // 16  # as many as fit at every offset of the grid
    assert pydoc.train_examples == windows
    chosen = next(batch_indices(windows, 8, rank=1, world=2, seed=0))
    starts = window_offset(16, seed=0, epoch=0) + chosen * 16  # non-overlapping, on a shifted grid
    np.testing.assert_array_equal(x, pydoc.train_ids[starts[:, None] + np.arange(16)])
    np.testing.assert_array_equal(y, pydoc.train_ids[starts[:, None] + np.arange(1, 17)])


def test_each_epoch_cuts_the_text_into_windows_at_a_new_offset():
    pydoc = load("text:pydoc", max_chars=20_000, seq_len=16)
    per_epoch = pydoc.steps_per_epoch(batch_size=4, world=1)
    batches = list(itertools.islice(pydoc.batches(rank=0, world=1, batch_size=4, seed=0), 8 * per_epoch))
    indices = list(itertools.islice(batch_indices(pydoc.train_examples, 4, rank=0, world=1, seed=0), 8 * per_epoch))
    offsets = [window_offset(16, seed=0, epoch=e) for e in range(8)]
    assert len(set(offsets)) > 1 and all(0 <= o < 16 for o in offsets)
    for step in (0, per_epoch - 1, per_epoch, 7 * per_epoch + 1):
        starts = offsets[step // per_epoch] + indices[step] * 16
        np.testing.assert_array_equal(batches[step][0], pydoc.train_ids[starts[:, None] + np.arange(16)])


def test_all_workers_shift_their_windows_alike_so_they_still_partition_each_global_batch():
    pydoc = load("text:pydoc", max_chars=20_000, seq_len=16)
    one = pydoc.batches(rank=0, world=1, batch_size=8, seed=3, epoch_start=2)
    halves = [pydoc.batches(rank=r, world=2, batch_size=4, seed=3, epoch_start=2) for r in (0, 1)]
    for _ in range(2 * pydoc.steps_per_epoch(8, 1) + 1):
        x, _ = next(one)
        parts = np.concatenate([next(h)[0] for h in halves])
        np.testing.assert_array_equal(x, parts)


def test_text_eval_scores_consecutive_windows_each_read_after_its_context():
    pydoc = load("text:pydoc", max_chars=5_000, seq_len=16)
    batches = list(pydoc.eval_batches("test", batch_size=7))
    xs = np.concatenate([x for x, _ in batches])
    ys = np.concatenate([y for _, y in batches])
    scored = (len(pydoc.test_ids) - 1) // 16 - 1  # the first 16 characters are context only
    assert xs.shape == (scored, 32) and ys.shape == (scored, 16)
    ids = pydoc.test_ids
    np.testing.assert_array_equal(ys.reshape(-1), ids[17: 17 + scored * 16])
    for i in (0, scored - 1):
        start = 16 * (i + 1)
        np.testing.assert_array_equal(xs[i], ids[start - 16: start + 16])


def test_text_too_short_for_one_window_is_a_dataset_error():
    with pytest.raises(DatasetError, match="too few for one window"):
        load("text:pydoc", max_chars=200, seq_len=64)


# --- npz ------------------------------------------------------------------------------------

def _npz(tmp_path: Path, **overrides) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 255, size=(12, 3, 4)), "y_train": rng.integers(0, 3, size=12),
        "x_test": rng.integers(0, 255, size=(5, 3, 4)), "y_test": rng.integers(0, 3, size=5),
    }
    arrays.update(overrides)
    path = tmp_path / "mine.npz"
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


def test_npz_arrays_load_as_float32_inputs_and_int64_labels(tmp_path):
    mine = load(f"npz:{_npz(tmp_path)}")
    assert mine.x_train.dtype == np.float32 and mine.y_train.dtype == np.int64
    assert mine.input_shape == (3, 4) and mine.num_classes == int(max(mine.y_train.max(), mine.y_test.max())) + 1


@pytest.mark.parametrize("overrides, message", [
    ({"y_test": None}, "missing key.*y_test"),
    ({"x_train": np.full((12, 3, 4), "a")}, "x_train has dtype <U1"),
    ({"x_test": np.ones((5, 3, 4), np.complex64)}, "x_test has dtype complex64"),
    ({"y_train": np.zeros(12, np.float32)}, "y_train has dtype float32; it must hold integer class labels"),
    ({"y_test": np.zeros(4, np.int64)}, "x_test has 5 rows but y_test has 4 labels"),
    ({"x_train": np.zeros(12)}, r"x_train has shape \(12,\)"),
    ({"y_train": np.zeros((12, 1), np.int64)}, r"y_train has shape \(12, 1\)"),
    ({"x_test": np.zeros((5, 4))}, r"x_train rows have shape \(3, 4\) but x_test rows \(4,\)"),
    ({"y_train": -np.ones(12, np.int64)}, "y_train holds negative labels"),
    ({"x_train": np.full((12, 3, 4), np.nan)}, "x_train holds NaN"),
])
def test_npz_errors_name_the_file_and_the_offending_key(tmp_path, overrides, message):
    path = _npz(tmp_path, **overrides)
    with pytest.raises(DatasetError, match=message) as raised:
        load_npz(path)
    assert str(path) in str(raised.value)


def test_npz_that_is_missing_or_not_an_archive_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load(f"npz:{tmp_path / 'absent.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="not a readable .npz archive"):
        load(f"npz:{tmp_path / 'junk.npz'}")


# --- registry -------------------------------------------------------------------------------

def test_available_lists_every_loader_name():
    assert available() == ["digits", "fashion_mnist", "fortunes_langid", "fortunes_topic", "mnist1d", "npz:PATH",
                           "text:jargon", "text:pydoc"]


def test_unknown_name_lists_the_known_ones_and_suggests_a_close_match():
    with pytest.raises(DatasetError, match="Did you mean 'fashion_mnist'") as raised:
        load("fashion-mnist")
    assert "digits" in str(raised.value) and "text:pydoc" in str(raised.value)
    with pytest.raises(DatasetError, match="known: digits") as raised:
        load("imagenet")
    assert "Did you mean" not in str(raised.value)


# --- batching -------------------------------------------------------------------------------

def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


@pytest.mark.parametrize("workers", [2, 3])
def test_k_workers_together_see_exactly_the_global_batches_of_one_worker_with_k_times_the_batch(workers):
    n, batch, seed, steps = 101, 4, 9, 20  # 20 steps span several epochs
    single = _take(batch_indices(n, batch * workers, rank=0, world=1, seed=seed), steps)
    per_worker = [_take(batch_indices(n, batch, rank, workers, seed), steps) for rank in range(workers)]
    for step in range(steps):
        np.testing.assert_array_equal(np.concatenate([w[step] for w in per_worker]), single[step])


def test_workers_batches_are_disjoint_within_an_epoch():
    n, batch, workers = 100, 5, 3
    per_epoch = n // (batch * workers)
    seen = np.concatenate([
        np.concatenate(_take(batch_indices(n, batch, rank, workers, seed=1), per_epoch)) for rank in range(workers)
    ])
    assert len(seen) == len(np.unique(seen)) == per_epoch * batch * workers


def test_each_epoch_is_its_seeded_permutation_with_the_incomplete_tail_dropped():
    n, batch = 10, 3
    indices = _take(batch_indices(n, batch, rank=0, world=1, seed=4, epoch_start=2), 6)
    for epoch, first_step in ((2, 0), (3, 3)):
        expected = np.random.default_rng([4, epoch]).permutation(n)[:9].reshape(3, 3)
        np.testing.assert_array_equal(np.stack(indices[first_step : first_step + 3]), expected)


def test_batching_rejects_a_data_set_smaller_than_one_global_batch_and_bad_ranks():
    with pytest.raises(DatasetError, match="cannot fill one global batch"):
        batch_indices(10, 4, rank=0, world=3, seed=0)
    with pytest.raises(ValueError, match="rank"):
        batch_indices(100, 4, rank=3, world=3, seed=0)


def test_classification_batches_are_the_rows_batch_indices_choose():
    digits = load("digits")
    x, y = next(digits.batches(rank=1, world=2, batch_size=16, seed=3))
    chosen = next(batch_indices(len(digits.y_train), 16, rank=1, world=2, seed=3))
    np.testing.assert_array_equal(x, digits.x_train[chosen])
    np.testing.assert_array_equal(y, digits.y_train[chosen])
    assert digits.steps_per_epoch(16, world=2) == 1437 // 32


def test_classification_eval_batches_cover_the_whole_split_in_order():
    digits = load("digits", validation=0.1)
    batches = list(digits.eval_batches("val", batch_size=50))
    assert [len(y) for _, y in batches][-1] == len(digits.y_val) % 50
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), digits.x_val)
    assert sum(len(y) for _, y in digits.eval_batches("test", batch_size=50)) == 360


def test_describe_names_the_data_set_and_its_split_sizes():
    assert load("digits").describe().startswith("digits: classification, 10 classes")
    assert "vocab" in load("text:pydoc", max_chars=10_000).describe()
