"""Update rules for tables that are trained by rows: FTRL-proximal, and the lazy variants.

FTRL-proximal (McMahan et al., "Ad Click Prediction: a View from the Trenches", KDD 2013,
Algorithm 1) is the rule of click-through-rate models over billions of hashed features. Per
coordinate, with gradient g, it keeps z and n and derives the weight from them:

    sigma = (sqrt(n + g^2) - sqrt(n)) / alpha
    z    += g - sigma * w
    n    += g^2
    w     = 0                                                  if |z| <= l1
            -(z - sign(z) * l1) / ((beta + sqrt(n)) / alpha + l2)   otherwise

    alpha  the scale of the per-coordinate rate alpha / (beta + sqrt(n)) (0.1 is typical)
    beta   smooths that rate while n is small (1 in the paper)
    l1     L1 strength: a coordinate whose |z| stays within it is exactly zero (sparse models)
    l2     L2 strength

The weight is a function of (z, n), so a zero gradient leaves the weight, z and n as they were:
a push by rows steps only its rows, and that is exactly the dense step (`zero_is_noop`). To
make it so from the first step, the state is bound to the initial weights: z starts where the
formula gives them back (z = -w (beta / alpha + l2) - sign(w) l1, n = 0), and binding rounds
the weights to the formula's float32 result (at most an ulp away). PyTorch has no FTRL; the
test writes the paper's algorithm out and compares.

A lazy rule (`lazy_sgd`, `lazy_adagrad`, `lazy_adam`, `lazy_adamw`) is its rule, except that a
push by rows steps only the rows it names, also where a zero gradient would still move the
others (momentum, moving averages, weight decay): the untouched rows keep their weights and
their state until a batch uses them again (TensorFlow's LazyAdam, torch's SparseAdam). That
trains differently from the dense rule, which is why they carry their own names. A push that
moves every key steps every key, as the dense rule does.
"""
from __future__ import annotations

import numpy as np

from .. import jit
from .base import RULES, Rule, _real
from .rules import SGD, Adagrad, Adam, AdamW

_jit = jit.kernel(cache=True, nogil=True, error_model="numpy")


@_jit
def _ftrl_element(p, z, n, i, gi, alpha, beta, l1, l2):
    """One coordinate's FTRL-proximal step, its gradient `gi`: the state (z, n), then the weight."""
    ni = n[i]
    grown = ni + gi * gi
    sigma = (np.sqrt(grown) - np.sqrt(ni)) / alpha
    zi = z[i] + (gi - sigma * p[i])
    z[i] = zi
    n[i] = grown
    if abs(zi) <= l1:
        p[i] = 0
    else:
        shrunk = zi - l1 if zi > 0 else zi + l1
        p[i] = -(shrunk / ((np.sqrt(grown) + beta) / alpha + l2))


@_jit
def _ftrl_kernel(p, g, z, n, alpha, beta, l1, l2):
    for i in range(p.size):
        _ftrl_element(p, z, n, i, g[i], alpha, beta, l1, l2)


@_jit
def _ftrl_at_kernel(p, g, z, n, at, alpha, beta, l1, l2):
    """`_ftrl_kernel` on the elements at positions `at` only, `g` holding their gradient packed."""
    for k in range(at.size):
        _ftrl_element(p, z, n, at[k], g[k], alpha, beta, l1, l2)


class FTRL(Rule):
    """FTRL-proximal with L1 and L2 (McMahan et al. 2013); see the module's docstring."""

    name = "ftrl"
    _scratch_count = 3

    def __init__(self, alpha: float = 0.1, beta: float = 1.0, l1: float = 0.0, l2: float = 0.0):
        alpha = _real("alpha", alpha)
        if alpha <= 0:
            raise ValueError(f"invalid alpha {alpha!r}: expected a number > 0")
        super().__init__(alpha=alpha, beta=_real("beta", beta), l1=_real("l1", l1), l2=_real("l2", l2))

    @property
    def lr(self) -> float:
        return self._hparams["alpha"]

    @lr.setter
    def lr(self, value: float) -> None:
        raise ValueError("ftrl has no global learning rate to schedule: each coordinate's rate is "
                         "alpha / (beta + sqrt(n)), and its weight is derived from its state with alpha")

    def _state_names(self) -> tuple[str, ...]:
        return ("z", "n")

    @property
    def zero_is_noop(self) -> bool:
        return True

    def _initial_state(self, key: str, param: np.ndarray) -> np.ndarray:
        if key == "n":
            return np.zeros(param.shape, param.dtype)
        h = self._hparams
        z = np.multiply(param, -(h["beta"] / h["alpha"] + h["l2"]))
        z -= np.sign(param) * np.asarray(h["l1"], param.dtype)
        return z.astype(param.dtype, copy=False)

    def _bind(self, param: np.ndarray) -> None:
        fresh = not self._state
        super()._bind(param)
        if fresh:  # the weights as the formula gives them back from the state
            self._weights_from_state(param, self._state["z"], self._state["n"],
                                     [np.empty_like(param) for _ in range(2)])

    def _weights_from_state(self, p, z, n, scratch) -> None:
        h, (s, t) = self._hparams, scratch[:2]
        np.sqrt(n, out=s)
        s += h["beta"]
        s /= h["alpha"]
        s += h["l2"]
        np.sign(z, out=t)
        t *= h["l1"]
        np.subtract(z, t, out=t)
        np.divide(t, s, out=t)
        np.negative(t, out=t)
        np.abs(z, out=s)
        p[...] = 0
        np.copyto(p, t, where=s > h["l1"])

    def _fused_step(self, p, g, state, cast):
        h = self._hparams
        _ftrl_kernel(p, g, state["z"], state["n"], cast(h["alpha"]), cast(h["beta"]), cast(h["l1"]), cast(h["l2"]))

    def _fused_step_at(self, p, g, at, cast):
        h = self._hparams
        _ftrl_at_kernel(p, g, self._state["z"], self._state["n"], at, cast(h["alpha"]), cast(h["beta"]), cast(h["l1"]),
                        cast(h["l2"]))

    def _numpy_step(self, p, g, state, scratch):
        h, (s, t, u), z, n = self._hparams, scratch, state["z"], state["n"]
        np.multiply(g, g, out=t)
        np.add(n, t, out=s)
        np.sqrt(s, out=s)
        np.sqrt(n, out=u)
        np.subtract(s, u, out=u)
        u /= h["alpha"]                     # sigma
        u *= p
        np.subtract(g, u, out=u)
        z += u
        n += t
        self._weights_from_state(p, z, n, scratch)


def _lazy(rule: type[Rule]) -> type[Rule]:
    """`rule`, except that a push by rows steps only its rows (see the module's docstring)."""
    return type(f"Lazy{rule.__name__}", (rule,), {
        "name": f"lazy_{rule.name}", "lazy": True, "__module__": __name__,
        "__doc__": f"{rule.__doc__} Lazy: a push by rows steps only its rows, state included."})


LazySGD, LazyAdagrad, LazyAdam, LazyAdamW = (_lazy(r) for r in (SGD, Adagrad, Adam, AdamW))
for _rule in (FTRL, LazySGD, LazyAdagrad, LazyAdam, LazyAdamW):
    RULES[_rule.name] = _rule

__all__ = ["FTRL", "LazyAdagrad", "LazyAdam", "LazyAdamW", "LazySGD"]
