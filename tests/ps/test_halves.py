"""float32 <-> float16 by bits (ps/halves.py): exactly what NumPy's astype gives, on every value
where rounding could go either way, every float16 there is, and every scaling the fp16 codec uses."""
import numpy as np
import pytest

from downpour.ps.halves import float16_scaled, scaled_to_float16

TINY = np.float32(2.0 ** -14)
FINITE_HALVES = np.arange(0x7C00, dtype=np.uint16).view(np.float16)   # +0 up to the largest, 65504


def by_astype(x, exponent):
    y = np.multiply(x, np.float32(2.0 ** exponent))
    y *= np.abs(y) >= TINY
    return y.astype(np.float16)


def rounding_cases():
    """Every float16, every midpoint between two neighbours and the float32 values on either side
    of each, both signs, -0.0, values flushed to zero and ordinary ones."""
    values = FINITE_HALVES.astype(np.float32)
    midpoints = ((values[:-1].astype(np.float64) + values[1:]) / 2).astype(np.float32)
    near = [np.nextafter(m, d) for m in (values, midpoints) for d in (np.float32(0), np.float32(np.inf))]
    ordinary = np.random.default_rng(0).standard_normal(100_000).astype(np.float32) * 1000
    cases = np.concatenate([values, midpoints, *near, ordinary, [-0.0, 1e-30, -3e-8]]).astype(np.float32)
    cases = np.concatenate([cases, -cases])
    return cases[np.abs(cases) < 65504]


@pytest.mark.parametrize("exponent", [0, 3, -3, 14, -100, 100])
def test_to_float16_rounds_to_nearest_even_and_flushes_as_astype_does(exponent):
    x = (rounding_cases().astype(np.float64) * 2.0 ** -exponent).astype(np.float32)
    x = x[np.abs(x.astype(np.float64)) * 2.0 ** exponent < 65504]
    assert scaled_to_float16(x, exponent).tobytes() == by_astype(x, exponent).tobytes()


@pytest.mark.parametrize("exponent", [0, 15, -15, -16, 29, -100, 100])
def test_back_to_float32_gives_every_float16_scaled_as_astype_and_a_multiply_do(exponent):
    halves = np.concatenate([FINITE_HALVES, -FINITE_HALVES])
    out = np.empty(halves.size, np.float32)
    expected = halves.astype(np.float32) * np.float32(2.0 ** -exponent)
    assert float16_scaled(halves, exponent, out)
    assert out.tobytes() == expected.tobytes()


@pytest.mark.parametrize("bits", [0x7C00, 0xFC00, 0x7C01, 0x7E00, 0xFFFF])
def test_back_to_float32_reports_inf_and_nan_wherever_they_are(bits):
    halves = np.array([1, 2, bits, 3], np.uint16).view(np.float16)
    assert not float16_scaled(halves, 0, np.empty(4, np.float32))
    assert float16_scaled(halves[:0], 0, np.empty(0, np.float32))
