"""The layout: one flat key space, cut into byte-balanced contiguous ranges."""
import subprocess
import sys

import numpy as np
import pytest

from downpour.ps.layout import ALIGN, ParamSpec, layout_from_dict, make_layout

MLP = [("0.weight", (512, 784)), ("0.bias", (512,)), ("2.weight", (512, 512)), ("2.bias", (512,)),
       ("4.weight", (10, 512)), ("4.bias", (10,))]


@pytest.mark.parametrize("shards", [1, 2, 3, 5, 8])
def test_ranges_cover_every_key_exactly_once(shards):
    layout = make_layout(MLP, shards)
    owned = np.zeros(layout.total, dtype=int)
    for lo, hi in layout.ranges:
        owned[lo:hi] += 1
    assert (owned == 1).all()
    assert layout.ranges[0][0] == 0 and layout.ranges[-1][1] == layout.total


@pytest.mark.parametrize("shards", [2, 3, 7])
def test_no_shard_holds_more_than_its_share_plus_one_alignment_unit(shards):
    layout = make_layout(MLP, shards)
    share = layout.total / shards
    for lo, hi in layout.ranges:
        assert hi - lo <= share + ALIGN
        assert lo % ALIGN == 0


def test_a_big_tensor_spans_shards_and_pieces_reassemble_it():
    layout = make_layout([("embed", (1000, 64)), ("bias", (7,))], 3)
    assert len({layout.shard_of(k) for k in range(0, 64000, 997)}) == 3
    flat = np.arange(layout.total, dtype=np.float32)
    rebuilt = {"embed": np.empty(64000, np.float32), "bias": np.empty(7, np.float32)}
    for shard, (lo, hi) in enumerate(layout.ranges):
        mine = flat[lo:hi]
        for name, start, at, length in layout.pieces(shard):
            rebuilt[name][start:start + length] = mine[at:at + length]
    np.testing.assert_array_equal(np.concatenate([rebuilt["embed"], rebuilt["bias"]]), flat)


def test_layout_survives_the_wire_and_matches_in_another_process():
    layout = make_layout(MLP, 3)
    assert layout_from_dict(layout.to_dict()) == layout
    code = ("from downpour.ps.layout import make_layout; import sys; "
            f"print(make_layout({MLP!r}, 3).fingerprint())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == layout.fingerprint()


def test_a_different_spec_or_cut_changes_the_fingerprint():
    base = make_layout(MLP, 2).fingerprint()
    assert make_layout(MLP, 3).fingerprint() != base
    assert make_layout(MLP[:-1], 2).fingerprint() != base


def test_bad_specs_are_rejected():
    with pytest.raises(ValueError, match="at least 1"):
        make_layout(MLP, 0)
    with pytest.raises(ValueError, match="unique"):
        make_layout([("w", (2,)), ("w", (3,))], 1)
    with pytest.raises(KeyError):
        make_layout(MLP, 2).shard_of(10**9)
    assert ParamSpec("w", (3, 4)).size == 12


def test_a_table_larger_than_one_shards_memory_budget_is_split_across_shards_that_each_fit():
    """2^20 rows x 8 floats with Adagrad (one buffer of state): 64 MiB, for shards of 40 MiB."""
    from downpour.ps.layout import check_memory, shard_bytes

    table = [("bag.weight", (1 << 20, 8)), ("bias", (8,))]
    with pytest.raises(ValueError, match=r"shards.memory_mb: shard 0 would hold 64.0 MB .* use shards.count >= 2"):
        check_memory(make_layout(table, 1), 1, 1, 40)
    layout = make_layout(table, 2)
    check_memory(layout, 1, 1, 40)
    assert all(n <= 40 << 20 for n in shard_bytes(layout, 1))
    assert [piece[0] for piece in layout.pieces(0)] == ["bag.weight"]
    assert [piece[0] for piece in layout.pieces(1)] == ["bag.weight", "bias"]   # the table spans both
    with pytest.raises(ValueError, match=r"and a backup range\), over the budget of 40 MB: use shards.count >= 4"):
        check_memory(layout, 1, 2, 40)                                      # each shard backs another up
    check_memory(layout, 1, 2, None)                                        # no budget, no limit
