"""Gradient compression (ps/compression.py): what each codec sends, what the shard decodes, error
feedback on the worker, and a strict decoder that refuses every malformed push by name."""
import math

import numpy as np
import pytest

from downpour.ps import config
from downpour.ps import protocol as P
from downpour.ps.compression import CODECS, CodecError, Compressor, decode, wire_bytes
from downpour.ps.wire import WireError
from downpour.ps.wire import decode as wire_decode
from tests.conftest import CONFIGS, ask_shard, coordinator_and_shard
from tests.e2e.wire_mutator import Mutator, template_frames

N = 1000


def gradient(n=N, seed=0, scale=0.01):
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def round_trip(codec, grad, **spec):
    comp = Compressor({"codec": codec, **spec}, [(0, grad.size)])
    fields, frames = comp.encode(0, grad)
    return fields, frames, decode(fields, frames, grad.size)


# ---- what each codec sends and what the shard gets back ------------------------------------------

def test_none_sends_the_float32_slice_itself_and_adds_no_header_field():
    grad = gradient()
    fields, frames, out = round_trip("none", grad)
    assert fields == {} and len(frames) == 1 and frames[0] is grad   # the push is the uncompressed push
    assert np.shares_memory(out, grad)
    assert decode({"codec": "none"}, frames, N) is grad


def test_fp16_scales_by_a_power_of_two_so_every_value_keeps_float16_precision():
    grad = gradient(scale=1e-6)                    # raw, these would be float16 subnormals
    fields, frames, out = round_trip("fp16", grad)
    peak = np.abs(grad).max()
    assert fields["codec"] == "fp16" and frames[0].dtype == np.float16
    assert 2 ** 14 <= peak * 2.0 ** fields["exponent"] < 2 ** 15
    assert out.dtype == np.float32
    big = np.abs(grad) >= peak * 2.0 ** -14     # the scaled value is a normal float16
    np.testing.assert_allclose(out[big], grad[big], rtol=2 ** -11)  # half a float16 ulp
    np.testing.assert_allclose(out, grad, rtol=2 ** -11, atol=peak * 2.0 ** -28)  # the flushed rest


def test_fp16_flushes_what_would_be_subnormal_and_keeps_zero_and_huge_values_finite():
    grad = np.array([1e6, -1e6, 3e-8, 0.0] + [1.0] * 4, np.float32)
    fields, _, out = round_trip("fp16", grad)
    assert out[2] == 0.0 and out[3] == 0.0              # 3e-8 is under 2^-29 of the largest
    np.testing.assert_allclose(out[[0, 1, 4]], grad[[0, 1, 4]], rtol=2 ** -11)
    assert round_trip("fp16", np.zeros(8, np.float32))[0] == {"codec": "fp16", "exponent": 0}


def test_topk_keeps_exactly_the_k_largest_magnitudes_with_sorted_indices():
    grad = gradient()
    fields, (idx, values), out = round_trip("topk", grad, ratio=0.01)
    k = math.ceil(0.01 * N)
    assert fields == {"codec": "topk", "count": k}
    assert idx.dtype == np.uint32 and values.dtype == np.float32 and np.all(np.diff(idx.astype(np.int64)) > 0)
    largest = set(np.argsort(-np.abs(grad))[:k])
    assert set(np.flatnonzero(out)) == largest
    np.testing.assert_array_equal(out[idx], grad[idx])        # the kept values travel exactly


@pytest.mark.parametrize("shape", ["normal", "mostly zeros", "sorted", "ties"])
def test_topk_of_a_big_gradient_keeps_exactly_the_k_largest_magnitudes(shape):
    """From 8 192 values on, topk partitions only the values above a sampled threshold (or all,
    where that threshold is too high or 0): the values kept are the k largest all the same."""
    n, k = 60_000, 600
    grad = gradient(n, seed=3)
    if shape == "mostly zeros":
        grad[np.random.default_rng(4).random(n) < 0.995] = 0     # fewer non-zeros than k
    elif shape == "sorted":
        grad = np.sort(np.abs(grad))                           # the strided sample sees the order
    elif shape == "ties":
        grad = np.round(grad * 200) / 200                      # a few distinct magnitudes
    _, (idx, values), _ = round_trip("topk", grad, ratio=k / n)
    assert idx.size == k and np.all(np.diff(idx.astype(np.int64)) > 0)
    np.testing.assert_array_equal(np.sort(np.abs(values)), np.sort(np.abs(grad))[-k:])


@pytest.mark.parametrize("ratio, k", [(1e-9, 1), (0.0011, 2), (1.0, N)])
def test_topk_sends_at_least_one_value_and_at_most_all(ratio, k):
    grad = gradient()
    fields, _, out = round_trip("topk", grad, ratio=ratio)
    assert fields["count"] == k
    if k == N:
        np.testing.assert_array_equal(out, grad)


def test_sparse_sends_the_non_zero_entries_exactly_and_nothing_else():
    grad = np.zeros(N, np.float32)
    rows = [3, 17, 40]                        # an embedding's rows touched by a batch, 8 wide
    for r in rows:
        grad[r * 8:(r + 1) * 8] = gradient(8, seed=r)
    fields, (idx, values), out = round_trip("sparse", grad)
    assert fields == {"codec": "sparse", "count": 24}
    np.testing.assert_array_equal(out, grad)  # lossless: no residual needed
    assert wire_bytes((idx, values)) == 24 * 8
    assert round_trip("sparse", np.zeros(N, np.float32))[0] == {"codec": "sparse", "count": 0}


def test_onebit_decodes_to_plus_or_minus_the_mean_magnitude():
    grad = gradient(n=13)   # not a multiple of 8: the last byte is padded
    grad[0] = 0.0           # zero counts as non-negative
    fields, (bits,), out = round_trip("onebit", grad)
    scale = np.float32(np.abs(grad).mean())
    assert fields == {"codec": "onebit", "scale": pytest.approx(float(scale), rel=1e-6)}
    assert bits.dtype == np.uint8 and bits.size == 2
    np.testing.assert_array_equal(out, np.where(grad >= 0, np.float32(fields["scale"]), -np.float32(fields["scale"])))


def test_twobit_sends_plus_t_minus_t_or_zero_four_codes_a_byte_first_value_high():
    t = 0.5
    grad = np.array([0.5, -0.5, 0.49, 7.0, -0.2, -3.0], np.float32)
    fields, (codes,), out = round_trip("twobit", grad, threshold=t)
    assert fields == {"codec": "twobit", "threshold": 0.5}
    np.testing.assert_array_equal(out, [t, -t, 0, t, 0, -t])
    assert codes.tolist() == [0b11_10_00_11, 0b00_10_00_00]   # 11 = +t, 10 = -t, 00 = 0; padding 00


@pytest.mark.parametrize("n", [8, 7, 6, 5])
def test_twobit_decodes_every_byte_and_refuses_code_01_only_among_the_values_sent(n):
    """Each of the 256 bytes as the last of a push of n values: its codes decode to 0, -t, +t
    (00, 10, 11) first value high; a 01 among the n codes is refused, one in the padding is not."""
    t = np.float32(0.25)
    for byte in range(256):
        codes = [(byte >> shift) & 3 for shift in (6, 4, 2, 0)][:4 - (8 - n)]
        frames = (np.array([0b11_10_00_11, byte], np.uint8),)
        header = {"codec": "twobit", "threshold": float(t)}
        if 1 in codes:
            with pytest.raises(CodecError, match="code 01"):
                decode(header, frames, n)
            continue
        out = decode(header, frames, n)
        assert out.tolist() == [t, -t, 0, t] + [[0, 0, -t, t][c] for c in codes]


@pytest.mark.parametrize("codec, most", [("fp16", 0.5), ("topk", 0.025), ("onebit", 1 / 32 + 0.001),
                                         ("twobit", 1 / 16 + 0.001)])
def test_bytes_on_the_wire_against_the_dense_float32_push(codec, most):
    grad = gradient(n=100_000)
    _, frames, _ = round_trip(codec, grad, ratio=0.01)
    assert wire_bytes(frames) <= most * grad.nbytes
    assert wire_bytes((grad,)) == grad.nbytes


def test_decode_writes_into_the_buffer_it_is_given():
    grad = gradient()
    out = np.full(N, 7.0, np.float32)
    for codec in ("fp16", "topk", "onebit", "twobit"):
        fields, frames = Compressor({"codec": codec, "threshold": 0.01}, [(0, N)]).encode(0, grad)
        assert decode(fields, frames, N, out) is out
        np.testing.assert_array_equal(out, decode(fields, frames, N))


# ---- error feedback ------------------------------------------------------------------------------

def track(codec, error_feedback, steps=600, **spec):
    """Push `steps` drifting noisy gradients; return (sum of true, sum of decoded, compressor)."""
    rng = np.random.default_rng(1)
    drift = rng.standard_normal(N) * 0.01
    comp = Compressor({"codec": codec, "error_feedback": error_feedback, **spec}, [(0, N)])
    true, sent, gaps = np.zeros(N), np.zeros(N), []
    for _ in range(steps):
        g = (drift + rng.standard_normal(N) * 0.01).astype(np.float32)
        fields, frames = comp.encode(0, g)
        true += g
        sent += decode(fields, frames, N)
        gaps.append(np.linalg.norm(true - sent))
    return true, sent, gaps, comp


@pytest.mark.parametrize("codec, spec", [("topk", {"ratio": 0.01}), ("onebit", {}), ("twobit", {"threshold": 0.05})])
def test_with_error_feedback_the_decoded_sum_tracks_the_true_sum(codec, spec):
    true, sent, gaps, comp = track(codec, True, **spec)
    np.testing.assert_allclose(true - sent, comp.residuals[0], atol=1e-4)  # nothing lost: it is all in the residual
    assert gaps[-1] < 0.1 * np.linalg.norm(true)
    assert max(gaps[300:]) < 2 * max(gaps[100:300])                       # bounded, not growing with the steps
    true, sent, _, comp = track(codec, False, **spec)
    assert comp.residuals == [None]
    assert np.linalg.norm(true - sent) > 0.3 * np.linalg.norm(true)        # without it, the loss piles up


def test_each_shard_range_keeps_its_own_residual_and_fp16_keeps_none():
    comp = Compressor({"codec": "topk", "ratio": 0.01}, [(0, 600), (600, N)])
    grad = gradient()
    comp.encode(1, grad[600:])
    assert not comp.residuals[0].any() and comp.residuals[1].any()
    assert Compressor({"codec": "fp16"}, [(0, N)]).residuals == [None]
    with pytest.raises(ValueError, match=r"shape \(400,\)"):
        comp.encode(1, grad)


def test_frames_are_new_arrays_so_a_retry_resends_exactly_what_was_encoded():
    grad = gradient()
    for codec in ("fp16", "topk", "onebit", "twobit"):
        comp = Compressor({"codec": codec, "threshold": 0.01}, [(0, N)])
        _, frames = comp.encode(0, grad)
        kept = [f.copy() for f in frames]
        comp.encode(0, gradient(seed=2))                         # the next push
        for before, now in zip(kept, frames):
            np.testing.assert_array_equal(before, now)
        assert not any(np.shares_memory(f, grad) for f in frames)


# ---- the strict decoder --------------------------------------------------------------------------

def u32(*xs):
    return np.array(xs, np.uint32)


def f32(*xs):
    return np.array(xs, np.float32)


F16 = np.zeros(8, np.float16)
BITS = np.zeros(1, np.uint8)
MALFORMED = [
    ({"codec": "gzip"}, [F16], "unknown codec 'gzip': expected one of none, fp16, topk, onebit, twobit"),
    ({"codec": None}, [F16], "unknown codec 'None'"),
    ({"codec": 3}, [F16], "unknown codec '3'"),
    ({"codec": "fp16", "exponent": 0}, [F16, F16], "fp16 push with 2 array frames: expected 1"),
    ({"codec": "fp16"}, [F16], "fp16 push without header field 'exponent'"),
    ({"codec": "fp16", "exponent": 101}, [F16], "fp16 exponent 101: expected an integer in [-100, 100]"),
    ({"codec": "fp16", "exponent": 1.5}, [F16], "fp16 exponent 1.5"),
    ({"codec": "topk", "count": 1}, [u32(1)], "topk push with 1 array frames: expected 2"),
    ({"codec": "fp16", "exponent": 0}, [np.zeros(8, np.float32)], "fp16 values: expected float16 of shape (8,), got float32"),
    ({"codec": "fp16", "exponent": 0}, [F16[:7]], "fp16 values: expected float16 of shape (8,), got float16 of shape (7,)"),
    ({"codec": "fp16", "exponent": 0}, [F16.reshape(2, 4)], "expected float16 of shape (8,), got float16 of shape (2, 4)"),
    ({"codec": "fp16", "exponent": 0}, [np.array([np.inf] + [0] * 7, np.float16)], "fp16 values include inf or NaN"),
    ({"codec": "none"}, [F16], "none values: expected float32 of shape (8,)"),
    ({"codec": "topk"}, [u32(1), f32(1)], "topk push without header field 'count'"),
    ({"codec": "topk", "count": 9}, [u32(*range(9)), f32(*range(9))], "topk count 9: expected an integer in [0, 8]"),
    ({"codec": "topk", "count": -1}, [u32(), f32()], "topk count -1"),
    ({"codec": "topk", "count": True}, [u32(1), f32(1)], "topk count True"),
    ({"codec": "topk", "count": 1.0}, [u32(1), f32(1)], "topk count 1.0"),
    ({"codec": "topk", "count": 2}, [u32(1), f32(1, 2)], "topk indices: expected uint32 of shape (2,)"),
    ({"codec": "topk", "count": 1}, [np.array([1], np.int64), f32(1)], "topk indices: expected uint32"),
    ({"codec": "topk", "count": 1}, [u32(1), np.array([1], np.float64)], "topk values: expected float32"),
    ({"codec": "topk", "count": 1}, [u32(8), f32(1)], "topk index 8 out of range: expected indices in [0, 8)"),
    ({"codec": "topk", "count": 2}, [u32(1, 2**32 - 1), f32(1, 2)], "topk index 4294967295 out of range"),
    ({"codec": "topk", "count": 2}, [u32(5, 2), f32(1, 2)], "topk indices not strictly increasing"),
    ({"codec": "topk", "count": 2}, [u32(2, 2), f32(1, 2)], "sorted indices without repeats"),
    ({"codec": "topk", "count": 1}, [u32(0), f32(np.nan)], "topk values include inf or NaN"),
    ({"codec": "topk", "count": 1, "scale": 1.0}, [u32(0), f32(1)], "topk push with header field 'scale': topk takes 'count'"),
    ({"codec": "fp16", "exponent": 0, "count": 1}, [F16], "fp16 push with header field 'count': fp16 takes 'exponent'"),
    ({"codec": "onebit"}, [BITS], "onebit push without header field 'scale'"),
    ({"codec": "onebit", "scale": float("nan")}, [BITS], "onebit scale nan: expected a finite number >= 0"),
    ({"codec": "onebit", "scale": float("inf")}, [BITS], "onebit scale inf"),
    ({"codec": "onebit", "scale": 1e39}, [BITS], "onebit scale 1e+39"),   # finite, but not as float32
    ({"codec": "onebit", "scale": -1.0}, [BITS], "onebit scale -1.0"),
    ({"codec": "onebit", "scale": "1"}, [BITS], "onebit scale 1: expected a finite number"),
    ({"codec": "onebit", "scale": 1.0}, [np.zeros(2, np.uint8)], "onebit sign bits: expected uint8 of shape (1,)"),
    ({"codec": "twobit"}, [np.zeros(2, np.uint8)], "twobit push without header field 'threshold'"),
    ({"codec": "twobit", "threshold": 0.0}, [np.zeros(2, np.uint8)], "twobit threshold 0.0: expected a finite number > 0"),
    ({"codec": "twobit", "threshold": None}, [np.zeros(2, np.uint8)], "twobit threshold None"),
    ({"codec": "twobit", "threshold": 0.5}, [np.zeros(3, np.uint8)], "twobit codes: expected uint8 of shape (2,)"),
    ({"codec": "twobit", "threshold": 0.5}, [np.array([0b00_01_00_00, 0], np.uint8)], "twobit code 01 found"),
]


@pytest.mark.parametrize("header, arrays, message", MALFORMED, ids=[m[2][:50] for m in MALFORMED])
def test_every_malformed_push_raises_a_codec_error_that_says_what_was_expected(header, arrays, message):
    with pytest.raises(CodecError) as err:
        decode(header, arrays, 8)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def compressed_templates(n):
    grad = gradient(n)
    data = {"job": "j", "from": "worker-0", "clock": 0, "lo": 0, "hi": n, "seq": 1}
    out = []
    for codec in CODECS:
        fields, frames = Compressor({"codec": codec, "threshold": 0.01}, [(0, n)]).encode(0, grad)
        out.append(({**data, "op": P.PUSH, "codec": codec, **fields}, list(frames)))
    return out


def test_hostile_compressed_pushes_only_ever_raise_wire_or_codec_errors():
    """The fuzz test's mutator, in process: whatever passes the wire's checks goes to decode,
    which must answer with a dense float32 gradient or a CodecError, never anything else."""
    n = 650
    templates = compressed_templates(n)
    mutator = Mutator(11, templates)
    fields = ["codec", "count", "scale", "threshold"]
    outcomes = {"wire": 0, "codec": 0, "ok": 0}
    for i in range(20_000):
        if i % 2:
            frames = next(mutator)
        else:   # a hostile value in a codec field, the frames intact
            header, arrays = templates[i // 2 % len(templates)]
            frames = template_frames({**header, mutator.rng.choice(fields): mutator.value()}, arrays)
        try:
            msg = wire_decode(frames[1:] if frames and frames[0] == b"" else frames)
        except WireError:
            outcomes["wire"] += 1
            continue
        lo, hi = msg.header.get("lo"), msg.header.get("hi")
        size = hi - lo if isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi <= 10**6 else n
        try:
            out = decode(msg.header, msg.arrays, size)
        except CodecError:
            outcomes["codec"] += 1
            continue
        assert out.dtype == np.float32 and out.shape == (size,)
        assert msg.header.get("codec", "none") == "none" or np.isfinite(out).all()
        outcomes["ok"] += 1
    assert min(outcomes.values()) > 1000, outcomes   # every path was exercised


# ---- the job config ------------------------------------------------------------------------------

def test_the_compression_section_defaults_shorthand_and_errors():
    base = CONFIGS / "digits_logreg.yaml"
    assert config.load(base)["compression"] == {"codec": "none", "ratio": 0.01, "threshold": 0.5,
                                                "error_feedback": True, "rows": False, "pull": "none",
                                                "pull_full_every": None, "pull_memory_mb": 1024.0}
    assert config.load(base, ["compression=topk"])["compression"]["codec"] == "topk"
    assert config.load(base, ["compression.codec=twobit", "compression.threshold=0.1"])["compression"]["threshold"] == 0.1
    for override, message in [
        ("compression.codec=gzip", "compression.codec: expected one of none, fp16, topk, onebit, twobit, sparse, got 'gzip'"),
        ("compression.ratio=0", "compression.ratio: expected a number in (0, 1], got 0"),
        ("compression.threshold=-1", "compression.threshold: expected a positive number, got -1"),
    ]:
        with pytest.raises(config.ConfigError) as err:
            config.load(base, [override])
        assert str(err.value) == message


# ---- a live shard --------------------------------------------------------------------------------

@pytest.mark.e2e
def test_a_live_shard_decodes_compressed_pushes_and_refuses_malformed_ones(tmp_path):
    """Plain SGD (lr 0.1): a topk push moves exactly its coordinates; a bad one gets an ERROR
    reply naming the problem, changes nothing, and the shard keeps serving."""
    with coordinator_and_shard(tmp_path, ["optimizer.momentum=0"]) as rig:
        n, initial = rig["initial"].size, rig["initial"]

        def ask(header, arrays=()):
            return ask_shard(rig, header, arrays)

        def pull():
            reply = ask({"op": P.PULL, "from": "client-0", "clock": 0})
            assert reply.op == P.OK
            return reply.arrays[0]

        bad = ask({"op": P.PUSH, "from": "worker-0", "clock": 1, "codec": "topk", "count": 2},
                  [u32(9, 3), f32(1, 1)])
        assert bad.op == P.ERROR and bad.header["reason"] == (
            f"push to [0, {n}): topk indices not strictly increasing: expected sorted indices without repeats")
        np.testing.assert_array_equal(pull(), initial)

        idx, values = u32(3, 10, n - 1), f32(1.0, -2.0, 0.5)
        ok = ask({"op": P.PUSH, "from": "worker-0", "clock": 2, "codec": "topk", "count": 3}, [idx, values])
        assert ok.op == P.OK, ok.header
        after = pull()
        moved = np.flatnonzero(after != initial)
        np.testing.assert_array_equal(moved, idx)
        np.testing.assert_allclose(after[idx], initial[idx] - np.float32(0.1) * values, rtol=1e-6)
