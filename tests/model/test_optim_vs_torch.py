"""model.optim against torch.optim: same hyper-parameters, same gradients, same numbers.

Also the properties the parameter-server shards rely on: rules are elementwise (a sub-range
updated by its own rule instance is bit-identical to the whole buffer updated at once), state
survives a checkpoint round trip, and the Numba and NumPy kernels agree exactly.
"""
from __future__ import annotations

import io
import itertools

import msgpack
import numpy as np
import pytest

from downpour.model import optim

torch = pytest.importorskip("torch")

STEPS = 200
SHAPE = (17, 9)
TOLERANCE = {np.float64: 1e-10, np.float32: 1e-5}
TORCH_RULES = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad,
               "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
KERNELS = ["numpy", "numba"] if optim.HAVE_NUMBA else ["numpy"]


def _sgd_cases():
    grid = itertools.product((0.0, 0.9), (0.0, 0.3), (False, True), (0.0, 0.01))
    for momentum, dampening, nesterov, wd in grid:
        if nesterov and (momentum == 0 or dampening != 0):
            continue  # torch refuses these too
        yield "sgd", dict(lr=0.05, momentum=momentum, dampening=dampening, nesterov=nesterov,
                          weight_decay=wd)


def _adagrad_cases():
    for lr_decay, wd, initial in itertools.product((0.0, 0.01), (0.0, 0.01), (0.0, 0.1)):
        yield "adagrad", dict(lr=0.1, lr_decay=lr_decay, weight_decay=wd,
                              initial_accumulator_value=initial)
    yield "adagrad", dict(lr=0.1, eps=1e-3)


def _adam_cases():
    for name, wd, amsgrad, betas in itertools.product(
        ("adam", "adamw"), (0.0, 0.05), (False, True), ((0.9, 0.999), (0.8, 0.99))
    ):
        yield name, dict(lr=0.01, betas=betas, weight_decay=wd, amsgrad=amsgrad)
    yield "adam", dict(lr=0.01, eps=1e-3)
    yield "adamw", dict()  # torch's defaults, weight decay 0.01 included


CASES = [*_sgd_cases(), *_adagrad_cases(), *_adam_cases()]
CASE_IDS = [f"{name}-" + "-".join(f"{k}={v}" for k, v in hp.items()) for name, hp in CASES]


@pytest.fixture(params=KERNELS)
def kernel(request):
    """Run a test once on the NumPy path and once on the Numba kernels (when numba is there)."""
    previous = optim.set_fused(request.param == "numba")
    yield request.param
    optim.set_fused(previous)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def problem(dtype, steps=STEPS, shape=SHAPE, seed=0):
    """A starting parameter and a sequence of random gradients."""
    rng = np.random.default_rng(seed)
    param = rng.standard_normal(shape).astype(dtype)
    scales = rng.uniform(0.1, 3.0, (steps,) + (1,) * len(shape))  # gradients of varying size
    grads = (rng.standard_normal((steps, *shape)) * scales).astype(dtype)
    return param, grads


def run_ours(name, hp, param, grads):
    rule = optim.make(name, **hp)
    param = param.copy()
    for g in grads:
        rule.step(param, g)
    return param, rule


def run_torch(name, hp, param, grads):
    p = torch.tensor(param.copy(), requires_grad=True)
    opt = TORCH_RULES[name]([p], **hp)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    return p.detach().numpy(), opt.state[p]


def assert_close(actual, expected, rtol):
    """Relative agreement, measured against the scale of the expected array."""
    scale = float(np.max(np.abs(expected)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


# ---- agreement with torch ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name,hp", CASES, ids=CASE_IDS)
def test_rule_matches_torch_over_200_steps_of_random_gradients(name, hp, dtype, kernel):
    param, grads = problem(dtype)
    ours, rule = run_ours(name, hp, param, grads)
    theirs, torch_state = run_torch(name, hp, param, grads)
    assert ours.dtype == dtype
    assert_close(ours, theirs, TOLERANCE[dtype])
    state = rule.state_dict()
    assert state["step"] == STEPS
    for key, value in torch_state.items():
        if key == "step":
            assert int(value) == STEPS
        else:
            assert_close(state[key], value.numpy(), TOLERANCE[dtype])


@pytest.mark.parametrize("name", ["adagrad", "adam", "adamw"])
def test_default_hyper_parameters_are_torch_defaults(name):
    torch_defaults = TORCH_RULES[name]([torch.zeros(1, requires_grad=True)]).defaults
    ours = optim.make(name).hparams
    assert ours == {k: torch_defaults[k] for k in ours}


def test_sgd_hyper_parameters_have_torch_names_and_defaults():
    hp = optim.make("sgd", lr=0.1).hparams
    torch_defaults = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1).defaults
    assert hp == {k: torch_defaults[k] for k in hp}
    assert set(hp) == {"lr", "momentum", "dampening", "nesterov", "weight_decay"}


# ---- the shards' properties -------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name,hp", CASES, ids=CASE_IDS)
def test_updating_three_sub_ranges_separately_is_bit_identical_to_the_whole(name, hp, dtype, kernel):
    param, grads = problem(dtype, steps=50, shape=(1000,))
    whole, _ = run_ours(name, hp, param, grads)
    split = param.copy()
    ranges = [slice(0, 301), slice(301, 302), slice(302, 1000)]
    rules = [optim.make(name, **hp) for _ in ranges]
    for g in grads:
        for rule, r in zip(rules, ranges):
            rule.step(split[r], g[r])
    np.testing.assert_array_equal(split, whole)


@pytest.mark.parametrize("name,hp", CASES, ids=CASE_IDS)
def test_state_dict_through_npz_and_msgpack_continues_identically(name, hp, kernel):
    param, grads = problem(np.float32)
    uninterrupted, _ = run_ours(name, hp, param, grads)

    halfway, rule = run_ours(name, hp, param, grads[: STEPS // 2])
    state = rule.state_dict()
    scalars = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    assert all(isinstance(v, (bool, int, float, str)) for v in scalars.values())
    assert all(a.shape == param.shape and a.dtype == param.dtype for a in arrays.values())
    file = io.BytesIO()
    np.savez(file, **arrays)
    file.seek(0)
    with np.load(file) as npz:
        restored_state = {**msgpack.unpackb(msgpack.packb(scalars)), **{k: npz[k] for k in npz.files}}

    restored = optim.from_state_dict(restored_state)
    assert restored.hparams == rule.hparams
    for g in grads[STEPS // 2:]:
        restored.step(halfway, g)
    np.testing.assert_array_equal(halfway, uninterrupted)


def test_state_read_back_from_npz_scalars_loads_into_an_existing_rule():
    param, grads = problem(np.float64, steps=20)
    expected, rule = run_ours("adam", dict(lr=0.02, amsgrad=True), param, grads)
    file = io.BytesIO()
    np.savez(file, **rule.state_dict())  # scalars become 0-d arrays, strings included
    file.seek(0)
    other = optim.make("adam")  # different hyper-parameters, replaced by the loaded ones
    with np.load(file) as npz:
        other.load_state_dict(dict(npz))
    assert other.hparams == rule.hparams and other.step_count == 20
    continued, again = param.copy(), param.copy()
    for g in grads[:5]:
        rule.step(continued, g)
        other.step(again, g)
    np.testing.assert_array_equal(again, continued)


def test_loading_another_rules_state_is_refused():
    _, rule = run_ours("sgd", dict(lr=0.1, momentum=0.9), *problem(np.float32, steps=2))
    with pytest.raises(ValueError, match="sgd"):
        optim.make("adam").load_state_dict(rule.state_dict())


def test_loading_a_state_dict_missing_its_buffers_is_refused():
    _, rule = run_ours("adam", {}, *problem(np.float32, steps=2))
    state = rule.state_dict()
    del state["exp_avg_sq"]
    with pytest.raises(ValueError, match="exp_avg_sq"):
        optim.make("adam").load_state_dict(state)


def test_state_is_allocated_on_the_first_step_with_the_params_shape_and_dtype():
    rule = optim.make("adam", amsgrad=True)
    assert not any(isinstance(v, np.ndarray) for v in rule.state_dict().values())
    param, grads = problem(np.float64, steps=1, shape=(3, 4))
    rule.step(param, grads[0])
    buffers = {k: v for k, v in rule.state_dict().items() if isinstance(v, np.ndarray)}
    assert set(buffers) == {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert all(b.shape == (3, 4) and b.dtype == np.float64 for b in buffers.values())


@pytest.mark.parametrize("name,hp", CASES, ids=CASE_IDS)
def test_step_reads_the_gradient_without_modifying_it(name, hp, kernel):
    param, grads = problem(np.float32, steps=3)
    before = grads.copy()
    run_ours(name, hp, param, grads)
    np.testing.assert_array_equal(grads, before)


@pytest.mark.parametrize("name,hp", CASES, ids=CASE_IDS)
def test_non_contiguous_params_give_the_same_numbers_as_contiguous_ones(name, hp, kernel):
    param, grads = problem(np.float32, steps=10, shape=(9, 17))
    contiguous, _ = run_ours(name, hp, param, grads)
    strided = np.asfortranarray(param)
    rule = optim.make(name, **hp)
    for g in grads:
        rule.step(strided, np.asfortranarray(g))
    np.testing.assert_array_equal(strided, contiguous)


def test_a_gradient_of_another_shape_is_refused():
    with pytest.raises(ValueError, match="shape"):
        optim.make("sgd", lr=0.1).step(np.zeros(4, np.float32), np.zeros(5, np.float32))


@pytest.mark.skipif(not optim.HAVE_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name,hp", CASES, ids=CASE_IDS)
def test_numba_kernels_and_numpy_path_agree_exactly(name, hp, dtype):
    param, grads = problem(dtype, steps=50)
    previous = optim.set_fused(True)
    try:
        fused, _ = run_ours(name, hp, param, grads)
        optim.set_fused(False)
        plain, _ = run_ours(name, hp, param, grads)
    finally:
        optim.set_fused(previous)
    np.testing.assert_array_equal(fused, plain)


# ---- clipping ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("fraction_of_norm", [0.1, 0.9, 1.5])
def test_clip_grad_norm_matches_torch(dtype, fraction_of_norm):
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(shape).astype(dtype) for shape in [(5, 3), (7,), (2, 2, 2)]]
    max_norm = fraction_of_norm * np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads))
    params = [torch.zeros(g.shape, dtype=torch.from_numpy(g).dtype, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = torch.tensor(g)
    expected_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    norm = optim.clip_grad_norm_(grads, max_norm)

    assert norm == pytest.approx(expected_norm, rel=TOLERANCE[dtype])
    for g, p in zip(grads, params):
        assert_close(g, p.grad.numpy(), TOLERANCE[dtype])
    after = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    assert after == pytest.approx(min(expected_norm, max_norm), rel=1e-5)


def test_clip_grad_norm_of_one_flat_array_scales_it_in_place_and_skips_none():
    flat = np.full(4, 3.0, np.float32)  # norm 6
    assert optim.clip_grad_norm_(flat, 3.0) == pytest.approx(6.0)
    np.testing.assert_allclose(flat, np.full(4, 1.5), rtol=1e-6)
    grads = [np.array([3.0, 4.0]), None]
    assert optim.clip_grad_norm_(grads, 10.0) == pytest.approx(5.0)
    np.testing.assert_array_equal(grads[0], [3.0, 4.0])


# ---- the factory ------------------------------------------------------------------------


def test_make_builds_each_rule_by_case_insensitive_name():
    assert isinstance(optim.make("SGD", lr=0.1), optim.SGD)
    assert isinstance(optim.make("adagrad"), optim.Adagrad)
    assert isinstance(optim.make("Adam"), optim.Adam)
    assert type(optim.make("adamw")) is optim.AdamW


@pytest.mark.parametrize(
    "name,hp,message",
    [
        ("rmsprop", {}, "unknown optimizer 'rmsprop': expected one of adagrad, adam, adamw, ftrl, lazy_adagrad, lazy_adam, lazy_adamw, lazy_sgd, sgd"),
        ("adam", {"momentum": 0.9}, "unknown hyper-parameter.*momentum.*expected some of lr, betas"),
        ("sgd", {}, "sgd needs hyper-parameter.*lr"),
        ("sgd", {"lr": -0.1}, "invalid lr"),
        ("sgd", {"lr": "0.1"}, "lr must be a real number"),
        ("sgd", {"lr": 0.1, "momentum": float("nan")}, "invalid momentum"),
        ("sgd", {"lr": 0.1, "nesterov": True}, "nesterov momentum requires momentum > 0"),
        ("sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True}, "dampening == 0"),
        ("adam", {"betas": (1.0, 0.9)}, r"invalid betas\[0\]"),
        ("adam", {"betas": 0.9}, "betas must be a pair"),
        ("adamw", {"amsgrad": "yes"}, "amsgrad must be True or False"),
        ("adagrad", {"initial_accumulator_value": -1}, "invalid initial_accumulator_value"),
        ("adagrad", {"eps": -1e-10}, "invalid eps"),
    ],
)
def test_make_rejects_bad_names_and_hyper_parameters_naming_them(name, hp, message):
    with pytest.raises(ValueError, match=message):
        optim.make(name, **hp)


@pytest.mark.parametrize("name, hp", [("sgd", {"lr": 0.1, "momentum": 0.9}), ("adam", {"lr": 0.01}),
                                       ("adagrad", {"lr": 0.1})])
def test_a_sub_range_step_updates_only_that_slice_of_the_state(name, hp):
    """A shard may get a push for part of its range: stepping the slice with `index` equals
    stepping the whole buffer with a gradient that is zero outside the slice, for the slice."""
    rng = np.random.default_rng(3)
    original = rng.standard_normal(40).astype(np.float32)
    whole, part = original.copy(), original.copy()
    a, b = optim.make(name, **hp), optim.make(name, **hp)
    a.bind(part)
    for _ in range(5):
        g = rng.standard_normal(40).astype(np.float32)
        a.step(part[10:25], g[10:25], index=slice(10, 25))
        masked = np.zeros_like(g)
        masked[10:25] = g[10:25]
        b.step(whole, masked)
    np.testing.assert_array_equal(part[:10], original[:10])
    np.testing.assert_array_equal(part[25:], original[25:])
    np.testing.assert_allclose(part[10:25], whole[10:25], rtol=1e-6)
    with pytest.raises(ValueError, match="bound first"):
        optim.make("adam", lr=0.1).step(part[:3], g[:3], index=slice(0, 3))


@pytest.mark.parametrize("name,hp", CASES, ids=CASE_IDS)
def test_a_step_at_some_positions_is_the_dense_step_wherever_a_zero_gradient_changes_nothing(name, hp):
    """A shard applies a push by rows (`compression.rows`) to those rows only, when the rule
    lets it: the result must be the dense step's, bit for bit on the NumPy path, state included."""
    rng = np.random.default_rng(5)
    original = rng.standard_normal(300)
    rule = optim.make(name, **hp)
    noop = rule.zero_is_noop
    assert noop == ((name == "sgd" and hp.get("momentum", 0) == 0 and hp.get("weight_decay", 0) == 0)
                    or (name == "adagrad" and hp.get("weight_decay", 0) == 0))
    if not noop:
        with pytest.raises(ValueError, match="a zero gradient still changes the weights"):
            rule.step_at(original.copy(), np.ones(2), np.array([0, 1]))
        return
    previous = optim.set_fused(False)
    try:
        dense, sparse = original.copy(), original.copy()
        whole, rows = optim.make(name, **hp), rule
        for _ in range(6):
            at = np.sort(rng.choice(300, 40, replace=False))
            g = rng.standard_normal(40)
            masked = np.zeros(300)
            masked[at] = g
            whole.step(dense, masked)
            rows.step_at(sparse, g, at)
        np.testing.assert_array_equal(sparse, dense)
        for key, value in whole.state_dict().items():
            np.testing.assert_array_equal(rows.state_dict()[key], value)
    finally:
        optim.set_fused(previous)
