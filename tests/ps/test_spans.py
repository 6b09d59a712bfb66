"""Key spans (ps/spans.py): rows of a table as key intervals, merged, cut at shard boundaries,
gathered and scattered exactly, and checked strictly when they arrive in a header."""
import numpy as np
import pytest

from downpour.ps import spans as S


def as_list(sp):
    return [(int(a), int(b)) for a, b in zip(*sp)]


def spans(*pairs):
    return np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64)


def test_rows_become_the_keys_of_those_rows_with_consecutive_rows_merged():
    # a table of rows 4 keys wide starting at key 100; rows 7, 2, 3, 3 (repeats allowed)
    assert as_list(S.of_rows(100, 4, np.array([[7, 2], [3, 3]]))) == [(108, 116), (128, 132)]
    assert as_list(S.of_rows(0, 4, np.array([], np.int64))) == []


def test_union_merges_overlapping_and_touching_spans_and_drops_empty_ones():
    a = spans((0, 10), (20, 30))
    b = spans((5, 12), (30, 31), (40, 40), (50, 60))
    assert as_list(S.union(a, b)) == [(0, 12), (20, 31), (50, 60)]
    assert as_list(S.union()) == []


def test_clip_keeps_the_part_inside_a_shards_range_even_of_a_row_the_boundary_cuts():
    sp = spans((0, 10), (20, 30), (40, 50))
    assert as_list(S.clip(sp, 25, 45)) == [(25, 30), (40, 45)]
    assert as_list(S.clip(sp, 10, 20)) == []
    assert as_list(S.clip(sp, 0, 100)) == as_list(sp)
    assert S.size(S.clip(sp, 5, 45)) == 5 + 10 + 5


def test_covers_only_the_exact_range():
    assert S.covers(S.whole(3, 9), 3, 9)
    assert not S.covers(spans((3, 8)), 3, 9) and not S.covers(spans((3, 5), (5, 9)), 3, 9)
    assert as_list(S.whole(4, 4)) == []


@pytest.mark.parametrize("long_first", [True, False])
def test_gather_then_scatter_moves_exactly_the_keys_of_long_and_short_spans(long_first):
    rng = np.random.default_rng(0)
    base = 1000
    source = rng.standard_normal(5000).astype(np.float32)
    dense = (base, base + 2 * S.LONG)                      # copied as a slice
    rows = S.of_rows(base + 3000, 8, rng.integers(0, 200, 50))   # copied through one index
    sp = S.union(S.whole(*dense), rows) if long_first else S.union(rows, S.whole(*dense))
    values = S.gather(source, base, sp)
    expected = np.concatenate([source[a - base:b - base] for a, b in as_list(sp)])
    np.testing.assert_array_equal(values, expected)
    dest = np.zeros_like(source)
    S.scatter(dest, base, sp, values)
    index = S.positions(*sp) - base
    np.testing.assert_array_equal(dest[index], source[index])
    untouched = np.ones(source.size, bool)
    untouched[index] = False
    assert not dest[untouched].any()


def test_gather_of_no_spans_is_an_empty_array():
    assert S.gather(np.ones(10, np.float32), 0, S.empty()).shape == (0,)


def test_pack_and_unpack_round_trip():
    sp = spans((3, 7), (9, 12))
    assert as_list(S.unpack(S.pack(sp), 0, 12)) == [(3, 7), (9, 12)]
    assert as_list(S.unpack(b"", 0, 12)) == []


def test_packed_spans_of_scattered_rows_cost_a_few_bytes_each_and_round_trip_at_any_scale():
    rng = np.random.default_rng(0)
    rows = S.of_rows(1 << 30, 7, rng.choice(1 << 22, 15_000, replace=False))   # a batch's rows of a big table
    raw = S.pack(rows)
    assert len(raw) < 4 * rows[0].size                                        # int64 pairs: 16 bytes a span
    back = S.unpack(raw, 1 << 30, (1 << 30) + 7 * (1 << 22))
    np.testing.assert_array_equal(back[0], rows[0])
    np.testing.assert_array_equal(back[1], rows[1])


@pytest.mark.parametrize("raw, reason", [
    ("3,7", "expected bytes"),
    (b"\x80", "cut off"),
    (b"\x06", "got 1 varints"),
    (b"\xff" * 7 + b"\x01\x02", "at most 6 bytes"),
    (S.pack(spans((3, 3))), "stop greater than its start"),
    (S.pack(spans((5, 9), (6, 10))), "do not overlap"),
    (S.pack(spans((5, 9), (1, 3))), "do not overlap"),
    (S.pack(spans((0, 4))), "outside the range [2, 12)"),
    (S.pack(spans((4, 13))), "outside the range [2, 12)"),
    (b"\x02\x02" * (S.MAX_SPANS + 1), "at most"),
])
def test_unpack_refuses_every_malformed_span_list_by_name(raw, reason):
    with pytest.raises(S.SpanError, match=reason.replace("[", r"\[").replace(")", r"\)")):
        S.unpack(raw, 2, 12)


# ---- a shard's store applies a push by rows ------------------------------------------------------

@pytest.mark.parametrize("optimizer, rows_only", [({"type": "adagrad", "lr": 0.1}, True),
                                                  ({"type": "sgd", "lr": 0.1}, True),
                                                  ({"type": "sgd", "lr": 0.1, "momentum": 0.9}, False),
                                                  ({"type": "adam", "lr": 0.01}, False)])
@pytest.mark.parametrize("mode", ["async", "bsp"])
def test_a_push_by_rows_changes_the_store_exactly_as_the_dense_push(optimizer, rows_only, mode, monkeypatch):
    """A push by rows hands the store the pushed keys' values, packed, and the keys."""
    from downpour.ps.store import ParameterStore
    rng = np.random.default_rng(2)
    lo, hi = 1000, 1000 + 4096
    initial = rng.standard_normal(hi - lo).astype(np.float32)
    by_rows, dense = (ParameterStore(lo, hi, initial, dict(optimizer), mode, 0, [0]) for _ in range(2))
    stepped_at = []
    monkeypatch.setattr(by_rows.rule, "step_at", lambda *a, _f=by_rows.rule.step_at: (stepped_at.append(1), _f(*a)))
    for clock in range(4):
        keys = S.union(S.whole(lo, lo + 700), S.of_rows(lo + 1000, 16, rng.integers(0, 180, 30)))
        grad = np.zeros(hi - lo, np.float32)
        at = S.positions(*keys) - lo
        grad[at] = rng.standard_normal(at.size)
        by_rows.push(0, clock, lo, hi, grad[at], keys=keys)
        dense.push(0, clock, lo, hi, grad)
    np.testing.assert_array_equal(by_rows.weights, dense.weights)
    assert bool(stepped_at) == rows_only        # bsp too: each clock's mean at the keys its pushes named


def test_a_client_asks_a_shard_for_its_whole_range_when_the_spans_cover_it_or_would_overflow_a_header():
    from downpour.ps import protocol as P
    _part = S.part
    assert as_list(_part(spans((0, 10), (20, 30)), 5, 25)) == [(5, 10), (20, 25)]
    assert _part(spans((0, 40)), 5, 25) is None
    many = S.of_rows(0, 1, np.arange(0, 4 * (S.MAX_SPANS + 1), 2))     # every other key: no merging
    assert _part(many, 0, 4 * (S.MAX_SPANS + 1)) is None
    assert 2 * 2 * S.MAX_VARINT * S.MAX_SPANS <= P.MAX_HEADER_BYTES - (64 << 10)  # a read's and a push's spans fit


def test_a_shards_part_comes_with_its_header_form_and_its_share_of_the_packed_values():
    sp = spans((0, 10), (20, 30), (40, 50))
    values = S.positions(*sp)                                           # each packed value: its key
    parts = S.Parts([(0, 25), (25, 60)])
    first, second = parts(sp, 0, values), parts(sp, 1, values)
    assert as_list(first[0]) == [(0, 10), (20, 25)] and as_list(second[0]) == [(25, 30), (40, 50)]
    np.testing.assert_array_equal(first[2], S.positions(*first[0]))
    np.testing.assert_array_equal(second[2], S.positions(*second[0]))
    assert as_list(S.unpack(second[1], 25, 60)) == as_list(second[0])
    assert parts(sp, 1)[1] is second[1] and parts(sp, 1)[2] is None      # the same spans: worked out once
    assert parts(spans((0, 10), (20, 30), (40, 50)), 1)[1] is not second[1]   # equal spans, another list
    assert parts(S.whole(0, 60), 1) == (None, b"", None)                # the whole range: no spans named
    assert [S.below(sp, k) for k in (0, 5, 10, 15, 25, 45, 99)] == [0, 5, 10, 10, 15, 25, 30]


@pytest.mark.parametrize("seed", range(3))
def test_the_fast_paths_agree_with_the_definitions(seed):
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 5000, 700).astype(np.int32)
    sp = S.of_rows(3, 5, rows)
    keys = np.unique(3 + 5 * rows[:, None] + np.arange(5))              # every key of those rows
    np.testing.assert_array_equal(S.positions(*sp), keys)
    assert np.all(sp[0][1:] > sp[1][:-1])                               # consecutive rows merged
    mixed = S.union(sp, S.whole(9000, 9000 + 3 * S.LONG), S.whole(30_000, 30_000 + S.LONG))
    source = rng.standard_normal(40_000).astype(np.float32)
    index = S.positions(*mixed)
    np.testing.assert_array_equal(S.gather(source, 0, mixed), source[index])
    dest = np.ones_like(source)
    S.clear(dest, 0, mixed)
    assert not dest[index].any() and dest.sum() == source.size - index.size
    raw = S.pack(mixed)
    assert as_list(S.unpack(raw, 0, 40_000)) == as_list(mixed)
    assert S.unpack(S.pack(spans((1 << 39, (1 << 39) + 1))), 0, 1 << 40)[0][0] == 1 << 39   # a 6-byte varint
