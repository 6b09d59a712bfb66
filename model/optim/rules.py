"""The update rules (SGD with momentum and Nesterov, Adagrad, Adam, AdamW) over flat buffers,
each with a NumPy path next to its Numba kernel (`fused.py`), and torch's names and formulas.
What they share, and the rules by name, are in `base.py`.
"""
from __future__ import annotations

import math

import numpy as np

from . import fused
from .base import RULES, Rule, _flag, _real


class SGD(Rule):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay."""

    name = "sgd"
    _scratch_count = 2

    def __init__(self, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        momentum = _real("momentum", momentum)
        dampening = _real("dampening", dampening, low=-math.inf)
        nesterov = _flag("nesterov", nesterov)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum requires momentum > 0 and dampening == 0")
        super().__init__(lr=_real("lr", lr), momentum=momentum, dampening=dampening,
                         nesterov=nesterov, weight_decay=_real("weight_decay", weight_decay))

    def _state_names(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self._hparams["momentum"] != 0 else ()

    @property
    def zero_is_noop(self) -> bool:
        return self._hparams["momentum"] == 0 and self._hparams["weight_decay"] == 0

    def _fused_step(self, p, g, state, cast):
        h = self._hparams
        buf = state.get("momentum_buffer", p)  # an unused placeholder when there is no momentum
        fused.sgd(p, g, buf, cast(h["lr"]), cast(h["momentum"]), cast(1 - h["dampening"]),
                    cast(h["weight_decay"]), h["nesterov"], self.step_count == 1)

    def _numpy_step(self, p, g, state, scratch):
        h, (s, t) = self._hparams, scratch
        d = g
        if h["weight_decay"] != 0:
            np.multiply(p, h["weight_decay"], out=s)
            d = np.add(g, s, out=s)
        if h["momentum"] != 0:
            buf = state["momentum_buffer"]
            if self.step_count == 1:
                np.copyto(buf, d)
            else:
                buf *= h["momentum"]
                if h["dampening"] == 0:
                    buf += d
                else:
                    buf += np.multiply(d, 1 - h["dampening"], out=t)
            if h["nesterov"]:
                d = np.add(d, np.multiply(buf, h["momentum"], out=t), out=s)
            else:
                d = buf
        p -= np.multiply(d, h["lr"], out=s)


class Adagrad(Rule):
    """Adagrad: per-element step sizes shrink with the running sum of squared gradients."""

    name = "adagrad"
    _scratch_count = 2

    def __init__(self, lr: float = 0.01, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10):
        initial = _real("initial_accumulator_value", initial_accumulator_value)
        super().__init__(lr=_real("lr", lr), lr_decay=_real("lr_decay", lr_decay),
                         weight_decay=_real("weight_decay", weight_decay),
                         initial_accumulator_value=initial, eps=_real("eps", eps))

    def _state_names(self) -> tuple[str, ...]:
        return ("sum",)

    @property
    def zero_is_noop(self) -> bool:  # the sum grows by g^2 = 0 and the step is 0 / (sqrt(sum) + eps)
        return self._hparams["weight_decay"] == 0

    def _initial_state(self, key: str, param: np.ndarray) -> np.ndarray:
        return np.full(param.shape, self._hparams["initial_accumulator_value"], param.dtype)

    def _decayed_lr(self) -> float:
        return self._hparams["lr"] / (1 + (self.step_count - 1) * self._hparams["lr_decay"])

    def _fused_step(self, p, g, state, cast):
        h = self._hparams
        clr, weight_decay, eps = cast(self._decayed_lr()), cast(h["weight_decay"]), cast(h["eps"])
        fused.adagrad(p, g, state["sum"], clr, weight_decay, eps)

    def _fused_step_at(self, p, g, at, cast):
        h = self._hparams
        clr, weight_decay, eps = cast(self._decayed_lr()), cast(h["weight_decay"]), cast(h["eps"])
        fused.adagrad_at(p, g, self._state["sum"], at, clr, weight_decay, eps)

    def _numpy_step(self, p, g, state, scratch):
        h, (s, t), acc = self._hparams, scratch, state["sum"]
        d = g
        if h["weight_decay"] != 0:
            np.multiply(p, h["weight_decay"], out=s)
            d = np.add(g, s, out=s)
        acc += np.multiply(d, d, out=t)
        np.sqrt(acc, out=t)
        t += h["eps"]
        np.divide(d, t, out=t)
        p -= np.multiply(t, self._decayed_lr(), out=t)


class Adam(Rule):
    """Adam with bias correction; weight decay is L2 (added to the gradient), as in torch."""

    name = "adam"
    _scratch_count = 2
    _decoupled = False

    def __init__(self, lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        betas = (_real("betas[0]", betas[0]), _real("betas[1]", betas[1]))
        for i, beta in enumerate(betas):
            if not beta < 1:
                raise ValueError(f"invalid betas[{i}] {beta!r}: expected 0 <= beta < 1")
        super().__init__(lr=_real("lr", lr), betas=betas, eps=_real("eps", eps),
                         weight_decay=_real("weight_decay", weight_decay),
                         amsgrad=_flag("amsgrad", amsgrad))

    def _state_names(self) -> tuple[str, ...]:
        moments = ("exp_avg", "exp_avg_sq")
        return moments + ("max_exp_avg_sq",) if self._hparams["amsgrad"] else moments

    def _scalars(self) -> tuple[float, float, float]:
        """(decay factor of param, L2 coefficient added to the grad, step size) for this step."""
        h = self._hparams
        step_size = h["lr"] / (1 - h["betas"][0] ** self.step_count)
        if self._decoupled:
            return 1 - h["lr"] * h["weight_decay"], 0.0, step_size
        return 1.0, h["weight_decay"], step_size

    def _bc2_sqrt(self) -> float:
        return (1 - self._hparams["betas"][1] ** self.step_count) ** 0.5

    def _fused_step(self, p, g, state, cast):
        h, (beta1, beta2) = self._hparams, self._hparams["betas"]
        decay, l2, step_size = self._scalars()
        m, v = state["exp_avg"], state["exp_avg_sq"]
        vmax = state.get("max_exp_avg_sq", v)  # an unused placeholder without amsgrad
        fused.adam(p, g, m, v, vmax, cast(decay), cast(l2), cast(1 - beta1), cast(beta2),
                     cast(1 - beta2), cast(step_size), cast(self._bc2_sqrt()), cast(h["eps"]),
                     h["amsgrad"])

    def _numpy_step(self, p, g, state, scratch):
        h, (s, t), (beta1, beta2) = self._hparams, scratch, self._hparams["betas"]
        decay, l2, step_size = self._scalars()
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if decay != 1:
            p *= decay
        d = g
        if l2 != 0:
            np.multiply(p, l2, out=s)
            d = np.add(g, s, out=s)
        m += np.multiply(np.subtract(d, m, out=t), 1 - beta1, out=t)
        v *= beta2
        v += np.multiply(np.multiply(d, 1 - beta2, out=t), d, out=t)
        if h["amsgrad"]:
            v = np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
        np.sqrt(v, out=t)
        t /= self._bc2_sqrt()
        t += h["eps"]
        np.divide(m, t, out=t)
        p -= np.multiply(t, step_size, out=t)


class AdamW(Adam):
    """Adam with decoupled weight decay: the parameter shrinks by lr*weight_decay each step."""

    name = "adamw"
    _decoupled = True

    def __init__(self, lr: float = 0.001, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, amsgrad: bool = False):
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


RULES.update((cls.name, cls) for cls in (SGD, Adagrad, Adam, AdamW))
