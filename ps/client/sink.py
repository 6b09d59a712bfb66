"""Where pulled weights go: a flat buffer of the whole model, or a `WeightSink` (the worker's
`model.flat.FlatParameters` is one), which may keep the received frames as its memory."""
from __future__ import annotations

from typing import Protocol

import numpy as np

from .. import spans


class WeightSink(Protocol):
    """Where pulled weights can go instead of a flat buffer (`model.flat.FlatParameters` is one)."""

    def receive(self, lo: int, hi: int, weights: np.ndarray, keep: bool = False) -> None:
        """Take elements [lo, hi) of the model; with `keep`, `weights` may be kept without a copy."""

    def receive_at(self, index: np.ndarray, weights: np.ndarray) -> None:
        """Take the elements at `index` (sorted, distinct) of the model: a read by rows."""


Out = np.ndarray | WeightSink | None


def deliver(out: np.ndarray | WeightSink, lo: int, hi: int, weights: np.ndarray, keep: bool) -> None:
    if isinstance(out, np.ndarray):
        np.copyto(out[lo:hi], weights)
    else:
        out.receive(lo, hi, weights, keep=keep)


def deliver_spans(out: np.ndarray | WeightSink, wanted: spans.Spans, values: np.ndarray, keep: bool,
                  base: int | None = None) -> None:
    """Write the keys of `wanted` (packed in `values`, or with `base`, read from `values` holding
    keys [base, ...): a shard's memory): long spans (dense parameters) as ranges, which a sink
    may keep without a copy, the short ones (rows) through one index."""
    if base is not None:
        slices, keys, _ = spans.pieces(wanted, base)
        for a, b, _ in slices:
            deliver(out, a + base, b + base, values[a:b], keep=keep)
        if keys.size:
            if isinstance(out, np.ndarray):
                out[keys + base] = values[keys]
            else:
                out.receive_at(keys + base, values[keys])
        return
    if isinstance(out, np.ndarray):
        spans.scatter(out, 0, wanted, values)
        return
    slices, keys, runs = spans.pieces(wanted, 0)
    for a, b, o in slices:
        out.receive(a, b, values[o:o + b - a], keep=keep)
    if keys.size:
        out.receive_at(keys, spans.short_values(values, runs))
