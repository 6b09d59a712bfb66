"""Recurrent layers (RNN, LSTM, GRU) with torch's signatures, parameter names and gate orders.

Each layer of the stack is one fused whole-sequence op from `ops_rnn`; this module only
arranges the layout (batch_first, unbatched input), the initial states and the stacking.
Parameters are `weight_ih_l{k}`, `weight_hh_l{k}`, `bias_ih_l{k}`, `bias_hh_l{k}`, all drawn
from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)) as torch does.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import backend
from .. import functional as F
from ..tensor import Tensor
from . import init
from .module import Module, Parameter

_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}


class _RecurrentStack(Module):
    """num_layers recurrent layers, each feeding its hidden states to the next."""

    def __init__(self, op: str, input_size: int, hidden_size: int, num_layers: int,
                 bias: bool, batch_first: bool, dropout: float, rng: np.random.Generator | None):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {dropout}")
        self.op, self.input_size, self.hidden_size = op, input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        self.dropout, self.rng = dropout, rng
        rows, bound = _GATES[op] * hidden_size, 1.0 / math.sqrt(hidden_size)
        for layer in range(num_layers):
            columns = input_size if layer == 0 else hidden_size
            setattr(self, f"weight_ih_l{layer}", Parameter(init.uniform((rows, columns), bound, rng)))
            setattr(self, f"weight_hh_l{layer}", Parameter(init.uniform((rows, hidden_size), bound, rng)))
            if bias:
                setattr(self, f"bias_ih_l{layer}", Parameter(init.uniform((rows,), bound, rng)))
                setattr(self, f"bias_hh_l{layer}", Parameter(init.uniform((rows,), bound, rng)))

    def _layer_weights(self, layer: int) -> list[Tensor]:
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.bias else [])
        return [getattr(self, f"{name}_l{layer}") for name in names]

    def _initial(self, state: Any, batch: int, like: Tensor) -> list[Any]:
        """One (B, H) initial state per layer: zeros when none is given."""
        if state is None:
            xp = backend.array_module(like.data)
            zeros = xp.zeros((batch, self.hidden_size), dtype=like.dtype)
            return [zeros] * self.num_layers
        state = state if isinstance(state, Tensor) else Tensor(state)
        expected = (self.num_layers, batch, self.hidden_size)
        if state.shape != expected:
            raise ValueError(f"initial state has shape {state.shape}, expected {expected}")
        return [state[layer] for layer in range(self.num_layers)]

    def _run(self, x: Tensor, states: tuple[Any, ...]) -> tuple[Tensor, list[tuple[Tensor, ...]]]:
        """Time-major x (T,B,I) through every layer; returns the top layer's outputs and,
        per state kind (h, and c for the LSTM), the final state of every layer."""
        if x.ndim != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"expected input (T, B, {self.input_size}), got {x.shape}")
        steps, batch = x.shape[:2]
        initial = [self._initial(s, batch, x) for s in states]
        finals: list[list[Tensor]] = [[] for _ in states]
        for layer in range(self.num_layers):
            layer_states = [per_layer[layer] for per_layer in initial]
            out = Tensor.apply(self.op, x, *layer_states, *self._layer_weights(layer))
            if self.op == "lstm":
                finals[0].append(out[steps - 1])
                finals[1].append(out[steps])
                out = out[:steps]
            else:
                finals[0].append(out[steps - 1])
            x = out
            if self.dropout and self.training and layer < self.num_layers - 1:
                rng = self.rng if self.rng is not None else init.default_generator()
                x = F.dropout(x, self.dropout, True, rng)
        return x, [F.stack(final, 0) for final in finals]

    def _forward(self, x: Any, states: tuple[Any, ...]) -> tuple[Tensor, list[Tensor]]:
        x = x if isinstance(x, Tensor) else Tensor(x)
        batched = x.ndim == 3
        if not batched:
            x = x.reshape(x.shape[0], 1, x.shape[1])
            states = tuple(None if s is None else self._as_batched_state(s) for s in states)
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        out, finals = self._run(x, states)
        if not batched:
            return out.reshape(out.shape[0], self.hidden_size), [
                f.reshape(self.num_layers, self.hidden_size) for f in finals]
        if self.batch_first:
            out = out.transpose(1, 0, 2)
        return out, finals

    def _as_batched_state(self, state: Any) -> Tensor:
        state = state if isinstance(state, Tensor) else Tensor(state)
        if state.shape != (self.num_layers, self.hidden_size):
            raise ValueError(
                f"initial state of unbatched input has shape {state.shape}, "
                f"expected {(self.num_layers, self.hidden_size)}"
            )
        return state.reshape(self.num_layers, 1, self.hidden_size)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bias={self.bias}, batch_first={self.batch_first}")


class RNN(_RecurrentStack):
    """Elman RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh), act 'tanh' or 'relu'.

    forward(input, hx=None) -> (output, h_n); input (T,B,I), (B,T,I) with batch_first, or
    unbatched (T,I); hx and h_n (num_layers, B, H).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, rng: np.random.Generator | None = None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}: expected 'tanh' or 'relu'")
        super().__init__(f"rnn_{nonlinearity}", input_size, hidden_size, num_layers, bias,
                         batch_first, dropout, rng)
        self.nonlinearity = nonlinearity

    def forward(self, x: Any, hx: Any = None) -> tuple[Tensor, Tensor]:
        out, (h_n,) = self._forward(x, (hx,))
        return out, h_n


class GRU(_RecurrentStack):
    """Gated recurrent unit, gates r, z, n as torch. forward(input, hx=None) -> (output, h_n)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0,
                 rng: np.random.Generator | None = None):
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout, rng)

    def forward(self, x: Any, hx: Any = None) -> tuple[Tensor, Tensor]:
        out, (h_n,) = self._forward(x, (hx,))
        return out, h_n


class LSTM(_RecurrentStack):
    """Long short-term memory, gates i, f, g, o as torch.

    forward(input, (h_0, c_0)=None) -> (output, (h_n, c_n)).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0,
                 rng: np.random.Generator | None = None):
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout, rng)

    def forward(self, x: Any, hx: tuple[Any, Any] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h0, c0 = (None, None) if hx is None else hx
        out, (h_n, c_n) = self._forward(x, (h0, c0))
        return out, (h_n, c_n)
