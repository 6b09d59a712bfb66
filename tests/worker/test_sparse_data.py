"""Hashed features and the fortune-cookie data sets: n-grams and field=value pairs become CSR
rows of a fixed number of buckets, the same in every process; the fortunes tasks read each
package's own files once, label them by package (or file), and split them with no text on
both sides."""
import subprocess
import sys

import numpy as np
import pytest

from downpour.worker import datasets
from downpour.worker.datasets import fortunes
from downpour.worker.datasets.hashing import Featurizer, HashedTexts, hash_fields, string_hashes

BIG = 1 << 40   # so many buckets that distinct n-grams never share one


def test_char_ngrams_of_a_padded_text_each_once_with_their_counts():
    rows = Featurizer("char", 1, 4, BIG, "count")(["ab"])      # " ab ": 4 + 3 + 2 + 1 n-grams
    assert rows.offsets.tolist() == [0] and rows.ids.size == 9  # " " appears twice
    assert sorted(rows.values.tolist()) == [1.0] * 8 + [2.0]


def test_word_ngrams_count_repeats_and_l2_values_have_unit_norm():
    counted = Featurizer("word", 1, 2, BIG, "count")(["the cat the cat", "dog"])
    assert counted.offsets.tolist() == [0, 4]                    # the, cat, "the cat", "cat the"; dog
    assert sorted(counted.values[:4].tolist()) == [1.0, 2.0, 2.0, 2.0]
    l2 = Featurizer("word", 1, 2, BIG, "l2")(["the cat the cat", "dog"])
    assert np.isclose(np.sum(l2.values[:4] ** 2), 1.0) and l2.values[4] == 1.0
    assert Featurizer("word", 1, 1, BIG, "binary")(["a b"]).values is None


def test_every_id_lies_below_the_bucket_count_and_rows_are_sorted_csr():
    rows = Featurizer("char", 2, 5, 1000)(["hello world", "xyz", "über straße"])
    assert rows.ids.min() >= 0 and rows.ids.max() < 1000
    assert rows.offsets[0] == 0 and np.all(np.diff(rows.offsets) > 0)
    for r in range(len(rows)):
        assert np.all(np.diff(rows.row(r)) > 0)                  # each bucket once per row


def test_hashes_are_stable_across_processes_and_runs():
    """Python's own hash is salted per process; ours must not be, or workers would disagree."""
    here = Featurizer("char", 1, 3, 1 << 22)(["fortune"]).ids.tolist()
    code = ("from downpour.worker.datasets.hashing import Featurizer; "
            "print(Featurizer('char', 1, 3, 1 << 22)(['fortune']).ids.tolist())")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout.strip()
    assert there == str(here)
    assert string_hashes(["ab", "ba", "ab"]).tolist()[0] == string_hashes(["ab"]).tolist()[0] != \
        string_hashes(["ba"]).tolist()[0]


def test_field_value_pairs_hash_by_field_and_value():
    rows = hash_fields([{"country": "de", "device": "phone"}, {"country": "de"}, {"device": "de"}], BIG)
    assert rows.row(1).tolist()[0] in rows.row(0).tolist()           # the same pair, the same bucket
    assert rows.row(2).tolist()[0] != rows.row(1).tolist()[0]        # the same value in another field
    assert rows.values is None


def test_bad_featurizer_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="features.kind"):
        Featurizer("bytes")
    with pytest.raises(ValueError, match="n_min 3, features.n_max 2"):
        Featurizer("char", 3, 2)


def test_hashed_texts_pick_without_hashing_and_hash_a_pick_like_the_featurizer():
    f = Featurizer("char", 1, 2, 1 << 18)
    texts = HashedTexts(["one", "two", "three", "four"], f)
    picked = texts[np.array([True, False, True, False])][1:]
    assert len(picked) == 1 and picked.shape == (1, 1 << 18) and picked._rows is None
    np.testing.assert_array_equal(picked.ids, f(["three"]).ids)
    np.testing.assert_array_equal(texts[3].ids, f(["four"]).ids)             # an integer picks one text


@pytest.fixture(scope="module")
def langid():
    return fortunes.split("langid")


def test_langid_has_seven_languages_on_both_sides_of_a_fixed_fifth_held_out(langid):
    train, y_train, test, y_test, classes = langid
    assert classes == ("en", "de", "es", "it", "cs", "pl", "ru")
    assert 80_000 < len(train) + len(test) < 100_000
    assert abs(len(test) / (len(train) + len(test)) - 0.2) < 0.001
    for y in (y_train, y_test):
        assert np.all(np.bincount(y, minlength=7) > 1000)      # Polish too, whose .u8 twins are empty


def test_no_text_is_on_both_sides_nor_twice_on_one(langid):
    train, _, test, _, _ = langid
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert not set(train) & set(test)


def test_italian_cookies_linked_into_the_top_directory_are_not_taken_for_english(langid):
    train, y_train, test, y_test, classes = langid
    label = dict(zip(train + test, [classes[i] for i in np.concatenate([y_train, y_test])]))
    italian, _ = fortunes.read_cookies(fortunes.ROOT / "it" / "italia")
    found = [label[c] for c in italian if c in label]
    assert found and set(found) == {"it"}
    files = fortunes.package_files("fortunes-it")
    assert all(path.parent.name == "it" for path in files)    # read once, where they really are


def test_topic_is_the_english_file_each_cookie_comes_from():
    train, y_train, test, y_test, classes = fortunes.split("topic")
    assert 40 <= len(classes) <= 45 and "zippy" in classes and "riddles" in classes
    assert 14_000 < len(train) + len(test) < 16_000
    assert not set(train) & set(test)


def test_a_twin_pair_is_read_once_and_a_latin1_file_is_decoded(tmp_path, monkeypatch):
    (tmp_path / "quotes").write_bytes("caf\xe9\n%\nna\xefve\n%\n".encode("latin-1"))
    (tmp_path / "quotes.u8").write_text("café\n%\nnaïve\n%\n", encoding="utf-8")
    (tmp_path / "other").write_bytes("\xfcber\n%\n".encode("latin-1"))
    (tmp_path / "other.u8").write_bytes(b"")                   # fortunes-pl ships empty twins
    monkeypatch.setattr(fortunes, "package_files", lambda _: tuple(sorted(tmp_path.iterdir())))
    assert fortunes.package_cookies("any") == [("other", "über"), ("quotes", "café"), ("quotes", "naïve")]


def test_a_missing_package_is_named_with_the_command_that_installs_it():
    with pytest.raises(datasets.DatasetError, match="fortunes-klingon is not installed.*apt-get install -y"):
        fortunes.package_files("fortunes-klingon")


def test_the_registry_loads_a_task_as_hashed_texts_of_the_configured_buckets():
    data = datasets.load("fortunes_langid", validation=0.1, features={"buckets": 1 << 18, "n_max": 3})
    assert data.num_classes == 7 and data.input_shape == (1 << 18,)
    assert isinstance(data.x_val, HashedTexts) and len(data.x_val) > 5000
    x, y = next(data.batches(0, 2, 16, seed=0))
    assert len(x) == 16 and x.ids.max() < 1 << 18 and len(x.offsets) == 16
