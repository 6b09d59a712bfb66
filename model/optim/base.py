"""What every update rule is (`Rule`: state for one buffer, sub-range and by-row steps,
checkpoints), the checks of hyper-parameters, and the rules by name (`RULES`, `make`,
`from_state_dict`), which `rules.py` (SGD, Adagrad, Adam, AdamW) and `sparse_rules.py` (FTRL,
the lazy variants) fill as they are imported.
"""
from __future__ import annotations

import abc
import inspect
from typing import Any

import numpy as np

from ..sparse import RowSparse
from . import fused


def _real(name: str, value: Any, low: float = 0.0) -> float:
    real = isinstance(value, (int, float, np.integer, np.floating))
    if not real or isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not value >= low:  # also rejects NaN
        raise ValueError(f"invalid {name} {value!r}: expected a number >= {low}")
    return float(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _plain(value: Any) -> Any:
    """Scalars read back from an .npz arrive as 0-d arrays; make them Python scalars again."""
    if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0:
        return value.item()
    return value


class Rule(abc.ABC):
    """An update rule with its own state for one buffer: `step(param, grad)` updates in place.

    State buffers are allocated on the first step with the parameter's shape and dtype.
    `state_dict()` holds only Python scalars (the type, the step count, the hyper-parameters,
    tuples flattened to `name.0`, `name.1`) and NumPy arrays (the per-element state, each of
    the parameter's shape), so it goes straight into an .npz file, and its scalars into msgpack.
    """

    name = ""
    _scratch_count = 1
    lazy = False  # a lazy variant steps only the rows a push names (`model/optim/sparse_rules.py`)

    def __init__(self, **hparams: Any):
        self._hparams = hparams
        self.step_count = 0
        self._state: dict[str, np.ndarray] = {}
        self._scratch: list[np.ndarray] = []

    @property
    def hparams(self) -> dict[str, Any]:
        return dict(self._hparams)

    @property
    def lr(self) -> float:
        return self._hparams["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        """Set by a schedule (`model.optim.schedule`) before each step; the state is untouched."""
        self._hparams["lr"] = _real("lr", value)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._hparams.items())
        return f"{type(self).__name__}({args})"

    def _state_names(self) -> tuple[str, ...]:
        """The per-element buffers this rule keeps, given its hyper-parameters."""
        return ()

    def step(self, param: np.ndarray, grad: np.ndarray, index: slice | None = None) -> None:
        """Apply one update to `param` in place; `grad` is only read.

        With `index`, `param` is that slice of the buffer the state was bound to (see `bind`):
        a shard applying a push that covers only part of its range. The rules are elementwise,
        so only that slice of the state is read and written. A table's RowSparse gradient
        steps its rows alone where the rule allows (`steps_by_rows`), else it is made dense."""
        if isinstance(grad, RowSparse) and index is None:
            if self.steps_by_rows:
                rows = grad.coalesce()
                self.step_at(param, rows.values.astype(param.dtype, copy=False), rows.rows)
                return
            grad = grad.to_dense()
        if param.shape != grad.shape:
            raise ValueError(f"{self.name}: grad shape {grad.shape} != param shape {param.shape}")
        if index is None:
            self._bind(param)
            state = self._state
        else:
            if self._state_names() and not self._state:
                raise ValueError(f"{self.name}: a sub-range step needs the whole buffer bound first (bind())")
            state = {k: v[index] for k, v in self._state.items()}
            if any(v.shape != param.shape for v in state.values()):
                raise ValueError(f"{self.name}: index {index} does not match param shape {param.shape}")
        self.step_count += 1
        use_kernel = (
            fused.use_kernel(param.size)
            and param.dtype in (np.float32, np.float64)
            and grad.dtype == param.dtype
            and param.flags.c_contiguous
            and grad.flags.c_contiguous
            and param.flags.writeable
        )
        if use_kernel:
            flat = {k: v.reshape(-1) for k, v in state.items()}
            self._fused_step(param.reshape(-1), grad.reshape(-1), flat, param.dtype.type)
        else:
            self._numpy_step(param, grad, state, self._scratch_like(param))

    @property
    def zero_is_noop(self) -> bool:
        """Whether a zero gradient leaves an element and its state as they are (no momentum,
        no weight decay, no moving averages): then `step_at` may skip the elements a push
        does not touch."""
        return False

    @property
    def steps_by_rows(self) -> bool:
        """Whether `step_at` may step a push's rows alone: the dense step if `zero_is_noop`, or lazy."""
        return self.zero_is_noop or self.lazy

    def step_at(self, param: np.ndarray, grad: np.ndarray, positions: np.ndarray) -> None:
        """One update of `param` (the whole bound buffer) whose gradient is `grad` at
        `positions` (sorted, distinct) and zero elsewhere: only those elements and their state
        are read and written. Exactly the dense step, for a rule where `zero_is_noop`; a lazy
        rule leaves the other elements and their state as they are."""
        if not self.steps_by_rows:
            raise ValueError(f"{self!r}: a zero gradient still changes the weights, so every element needs the step "
                             f"(its lazy variant, lazy_{self.name}, steps only the rows pushed)")
        self._bind(param)
        if self._kernel_at(param, grad, positions):
            return
        p = param[positions]
        state = {k: v[positions] for k, v in self._state.items()}
        self.step_count += 1
        self._numpy_step(p, grad, state, [np.empty_like(p) for _ in range(self._scratch_count)])
        param[positions] = p
        for k, v in state.items():
            self._state[k][positions] = v

    def _kernel_at(self, param: np.ndarray, grad: np.ndarray, positions: np.ndarray) -> bool:
        """Take `step_at` in one Numba loop over the positions (`_fused_step_at`), where the rule
        has one and the dense step would take its kernel too; False to take the NumPy path.
        Gathering the elements and their state, stepping them and scattering them back cost
        a shard five passes over a push's keys where this costs one (37k keys: ~0.1 ms against ~1 ms)."""
        use = (
            self._fused_step_at is not None
            and fused.use_kernel(param.size)
            and param.ndim == 1 and grad.shape == positions.shape
            and param.dtype in (np.float32, np.float64) and grad.dtype == param.dtype
            and positions.dtype == np.int64
            and param.flags.c_contiguous and grad.flags.c_contiguous and param.flags.writeable
        )
        if not use:
            return False
        if positions.size and not (0 <= positions.min() and positions.max() < param.size):
            raise IndexError(f"{self.name}: positions outside a buffer of {param.size}")
        self.step_count += 1
        self._fused_step_at(param, grad, np.ascontiguousarray(positions), param.dtype.type)
        return True

    # `_fused_step_at(p, g, at, cast)`: the Numba kernel of `step_at`, in a rule that has one (it
    # must round as the rule's dense kernel does); None in a rule that has none.
    _fused_step_at: Any = None

    @property
    def state_buffers(self) -> int:  # buffers of the parameter's size kept: 0 for plain SGD, 2 for Adam
        return len(self._state_names())

    @property
    def state_nbytes(self) -> int:  # bytes of that state, once bound (a shard's memory report)
        return sum(int(v.nbytes) for v in self._state.values())

    def bind(self, param: np.ndarray) -> None:
        """Allocate the state for the whole buffer `param` now (before any sub-range step)."""
        self._bind(param)

    def _bind(self, param: np.ndarray) -> None:
        """Allocate state for `param` on the first step, or check the state still fits it."""
        if not self._state and self._state_names():
            self._state = {k: self._initial_state(k, param) for k in self._state_names()}
        for key, buf in self._state.items():
            if buf.shape != param.shape:
                raise ValueError(
                    f"{self.name}: state {key!r} has shape {buf.shape}, param has {param.shape}"
                )
            if buf.dtype != param.dtype:
                self._state[key] = buf.astype(param.dtype)

    def _scratch_like(self, param: np.ndarray) -> list[np.ndarray]:
        """Buffers for the NumPy path's intermediate results, kept from step to step."""
        fits = self._scratch and self._scratch[0].shape == param.shape
        if not fits or self._scratch[0].dtype != param.dtype:
            self._scratch = [np.empty(param.shape, param.dtype) for _ in range(self._scratch_count)]
        return self._scratch

    def _initial_state(self, key: str, param: np.ndarray) -> np.ndarray:
        return np.zeros(param.shape, param.dtype)

    @abc.abstractmethod
    def _fused_step(self, p: np.ndarray, g: np.ndarray, state: dict, cast: type) -> None:
        """The Numba kernel on 1-D C-contiguous views; `cast` makes scalars p's dtype."""

    @abc.abstractmethod
    def _numpy_step(self, p: np.ndarray, g: np.ndarray, state: dict, scratch: list) -> None:
        """The same arithmetic in the same order, as in-place ufuncs over any shape."""

    # ---- checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.name, "step": self.step_count}
        for key, value in self._hparams.items():
            if isinstance(value, tuple):
                out.update({f"{key}.{i}": v for i, v in enumerate(value)})
            else:
                out[key] = value
        out.update({key: buf.copy() for key, buf in self._state.items()})
        return out

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore hyper-parameters, step count and state (copied) from `state_dict()` output."""
        d = {k: _plain(v) for k, v in d.items()}
        if d.get("type") != self.name:
            raise ValueError(f"cannot load {d.get('type')!r} optimizer state into {self.name!r}")
        fresh = make(self.name, **_hparams_from_scalars(d, type(self)))
        names = fresh._state_names()
        unknown = set(d) - set(fresh.state_dict()) - set(names)
        if unknown:
            raise ValueError(f"{self.name}: unexpected keys in state dict: {sorted(unknown)}")
        step = d.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"{self.name}: step must be a non-negative integer, got {step!r}")
        state = {k: np.array(d[k]) for k in names if k in d}
        if step > 0 and len(state) != len(names):
            missing = sorted(set(names) - set(state))
            raise ValueError(f"{self.name}: state dict at step {step} lacks {missing}")
        if len({a.shape for a in state.values()}) > 1:
            shapes = {k: a.shape for k, a in state.items()}
            raise ValueError(f"{self.name}: state buffers differ in shape: {shapes}")
        self._hparams, self.step_count, self._state = fresh._hparams, step, state


def _hparams_from_scalars(d: dict[str, Any], cls: type[Rule]) -> dict[str, Any]:
    """Gather `cls`'s hyper-parameters from a state dict, re-forming `name.0`, `name.1` tuples."""
    out: dict[str, Any] = {}
    for name in inspect.signature(cls).parameters:
        if name in d:
            out[name] = d[name]
        elif f"{name}.0" in d:
            items, i = [], 0
            while f"{name}.{i}" in d:
                items.append(d[f"{name}.{i}"])
                i += 1
            out[name] = tuple(items)
    return out


RULES: dict[str, type[Rule]] = {}  # name -> class, filled by rules.py and sparse_rules.py


def make(type: str, **hparams: Any) -> Rule:
    """Build a rule by name ('sgd', 'adam', 'ftrl', 'lazy_adam', ...) with torch's (FTRL: the paper's) names."""
    cls = RULES.get(str(type).lower())
    if cls is None:
        raise ValueError(f"unknown optimizer {type!r}: expected one of {', '.join(sorted(RULES))}")
    accepted = inspect.signature(cls).parameters
    unknown = sorted(set(hparams) - set(accepted))
    if unknown:
        raise ValueError(f"unknown hyper-parameter(s) {', '.join(unknown)} for {cls.name}: "
                         f"expected some of {', '.join(accepted)}")
    required = [k for k, p in accepted.items() if p.default is inspect.Parameter.empty]
    missing = [k for k in required if k not in hparams]
    if missing:
        raise ValueError(f"{cls.name} needs hyper-parameter(s) {', '.join(missing)}")
    return cls(**hparams)


def from_state_dict(d: dict[str, Any]) -> Rule:
    """Rebuild a rule, state included, from its `state_dict()` (e.g. read back from a checkpoint)."""
    kind = _plain(d.get("type"))
    if kind not in RULES:
        raise ValueError(f"state dict names optimizer {kind!r}: "
                         f"expected one of {', '.join(sorted(RULES))}")
    rule = make(kind, **_hparams_from_scalars({k: _plain(v) for k, v in d.items()}, RULES[kind]))
    rule.load_state_dict(d)
    return rule
