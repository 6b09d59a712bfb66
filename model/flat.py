"""One contiguous float32 buffer behind all of a model's parameters: the shards' view of a model.

A parameter server thinks of a model as one flat key space; a module thinks of it as named
tensors. `FlatParameters` makes the two the same memory: every parameter's `.data` becomes a
view into one buffer (in `named_parameters()` order), so weights pulled from the shards are
written into `flat.data` (or a slice of it) and the model sees them with no further copy, and
an update rule run over `flat.data` updates every parameter at once.

A worker that pulls its weights off the wire need not copy them even once: `receive(lo, hi,
frame, keep=True)` makes each parameter lying wholly inside [lo, hi) a view of the received
frame itself (the network wrote the weights; the model reads them there), and copies into
`data` only the parameters a shard boundary cuts. `data` is then the home of the copied
parameters alone; `set_data` brings every parameter home again. A read of some rows of a
table (`receive_at`) writes them into `data`.

The views hold only while nothing else rebinds a parameter's `.data`. The engine's backward
assigns new arrays to `.grad` (which is why gradients are gathered by copying), never to
`.data`; single-process training must likewise update `flat.data` in place
(`rule.step(flat.data, flat.gather_grads(buf))`), never `p.data = p.data - lr * g`.
`check_views()` tells when a parameter has been cut loose.
"""
from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .sparse import RowSparse

Spec = tuple[str, tuple[int, ...]]


def _pairs(named: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    pairs = list(named.items()) if isinstance(named, Mapping) else list(named)
    names = [name for name, _ in pairs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"parameter names must be unique, repeated: {duplicates}")
    return pairs


def _offsets(specs: list[Spec]) -> list[int]:
    """Where each parameter starts in the flat buffer, plus the total size at the end."""
    offsets = [0]
    for _, shape in specs:
        offsets.append(offsets[-1] + int(np.prod(shape, dtype=np.int64)))
    return offsets


def unflatten(flat: np.ndarray, specs: Iterable[Spec]) -> dict[str, np.ndarray]:
    """Views of a flat buffer as named arrays of the given shapes, in order (no copies)."""
    specs = [(name, tuple(shape)) for name, shape in specs]
    offsets = _offsets(specs)
    flat = flat.reshape(-1)
    if flat.size != offsets[-1]:
        raise ValueError(f"flat buffer has {flat.size} elements, the specs need {offsets[-1]}")
    return {
        name: flat[start:end].reshape(shape)
        for (name, shape), start, end in zip(specs, offsets, offsets[1:])
    }


def flatten(named_arrays: Mapping[str, Any] | Iterable[tuple[str, Any]],
            dtype: Any = np.float32) -> np.ndarray:
    """Copy named arrays, in order, into one new 1-D buffer (float32 unless told otherwise)."""
    pairs = _pairs(named_arrays)
    specs = [(name, np.shape(a)) for name, a in pairs]
    out = np.empty(_offsets(specs)[-1], dtype)
    for (_, array), view in zip(pairs, unflatten(out, specs).values()):
        np.copyto(view, array, casting="same_kind")
    return out


class FlatParameters:
    """A module's parameters rebound as views into one contiguous buffer.

    Built from `(name, tensor)` pairs (`module.named_parameters()`); a tensor needs a NumPy
    `.data`, a `.grad` (array or None) and a `.shape`. Attributes: `data` (the 1-D buffer),
    `specs` ((name, shape) in order), `offsets` (start of each parameter, then `size`), `size`.
    """

    def __init__(self, named_parameters: Iterable[tuple[str, Any]], dtype: Any = np.float32):
        pairs = _pairs(named_parameters)
        seen: dict[int, str] = {}
        for name, tensor in pairs:
            if not isinstance(tensor.data, np.ndarray):
                raise TypeError(f"parameter {name!r} holds {type(tensor.data).__name__}, "
                                "not a NumPy array: flat buffers live in host memory")
            if id(tensor) in seen:
                raise ValueError(f"parameters {seen[id(tensor)]!r} and {name!r} are the same "
                                 "tensor: list a shared parameter once")
            seen[id(tensor)] = name
        self.specs: list[Spec] = [(name, tuple(t.shape)) for name, t in pairs]
        self.offsets: list[int] = _offsets(self.specs)
        self.size: int = self.offsets[-1]
        self.data: np.ndarray = flatten(((n, t.data) for n, t in pairs), dtype)
        self._tensors = [t for _, t in pairs]
        self._views = list(unflatten(self.data, self.specs).values())
        for tensor, view in zip(self._tensors, self._views):
            tensor.data = view
        self._memory = list(self._views)  # what each parameter's .data is: its view, or a received frame's

    def __len__(self) -> int:
        return len(self.specs)

    def __repr__(self) -> str:
        return f"FlatParameters({len(self)} tensors, {self.size} x {self.data.dtype})"

    def named_views(self) -> dict[str, np.ndarray]:
        """Each parameter's view into `data`, by name (writing to one writes the model)."""
        return {name: view for (name, _), view in zip(self.specs, self._views)}

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Views of any buffer of this size shaped like the parameters (e.g. a gradient)."""
        return unflatten(flat, self.specs)

    def set_data(self, flat: np.ndarray) -> None:
        """Copy new weights (any buffer of `size` elements) into `data`, and make every
        parameter its view again."""
        flat = np.asarray(flat)
        if flat.size != self.size:
            raise ValueError(f"got {flat.size} weights, the model has {self.size}")
        np.copyto(self.data, flat.reshape(-1), casting="same_kind")
        for i in range(len(self._tensors)):
            self._rebind(i, self._views[i])

    def receive(self, lo: int, hi: int, weights: np.ndarray, keep: bool = False) -> None:
        """Make elements [lo, hi) of the model equal `weights` (shape (hi - lo,)).

        With `keep`, `weights` is ours to keep (a frame just received, which nobody else holds
        or writes): every parameter lying wholly inside [lo, hi) becomes a view of it, with no
        copy. Parameters that [lo, hi) cuts, and everything when `keep` is false or `weights`
        is not of our dtype and aligned, are copied into `data`.
        """
        weights = np.asarray(weights)
        if not 0 <= lo <= hi <= self.size or weights.shape != (hi - lo,):
            raise ValueError(f"weights of shape {weights.shape} for [{lo}, {hi}) of a model of {self.size}")
        keep = keep and weights.dtype == self.data.dtype and weights.flags.writeable and weights.flags.aligned
        first = bisect.bisect_right(self.offsets, lo) - 1
        for i in range(max(first, 0), len(self._tensors)):
            start, end = self.offsets[i], self.offsets[i + 1]
            if start >= hi:
                break
            whole = lo <= start and end <= hi
            if keep and whole:
                self._rebind(i, weights[start - lo:end - lo].reshape(self.specs[i][1]))
                continue
            if self._memory[i] is not self._views[i]:  # back home (all of it, if we overwrite a part)
                if not whole:
                    np.copyto(self._views[i], self._memory[i])
                self._rebind(i, self._views[i])
            a, b = max(start, lo), min(end, hi)
            np.copyto(self.data[a:b], weights[a - lo:b - lo], casting="same_kind")

    def receive_at(self, index: np.ndarray, weights: np.ndarray) -> None:
        """Make the elements at `index` (flat positions, sorted) equal `weights`: a read of
        some rows of a table. The parameters they fall in are copied home first, if a received
        frame held them, so that their other elements keep their values."""
        index = np.asarray(index)
        if index.shape != np.shape(weights) or (index.size and not 0 <= index[0] <= index[-1] < self.size):
            raise ValueError(f"{np.shape(weights)} weights for {index.shape} positions in a model of {self.size}")
        if index.size == 0:
            return
        first = bisect.bisect_right(self.offsets, int(index[0])) - 1
        last = bisect.bisect_right(self.offsets, int(index[-1])) - 1
        bounds = np.searchsorted(index, self.offsets[first:last + 2])  # each parameter's share of index
        for i in range(first, last + 1):
            if bounds[i - first + 1] > bounds[i - first] and self._memory[i] is not self._views[i]:
                np.copyto(self._views[i], self._memory[i])
                self._rebind(i, self._views[i])
        self.data[index] = weights

    def _rebind(self, i: int, memory: np.ndarray) -> None:
        self._tensors[i].data = memory
        self._memory[i] = memory

    def gather_grads(self, out: np.ndarray | None = None) -> np.ndarray:
        """Copy every parameter's `.grad` into one flat buffer (zeros where a grad is None).

        Pass the previous result as `out` to reuse its memory instead of allocating.
        """
        if out is None:
            out = np.empty(self.size, self.data.dtype)
        elif out.shape != (self.size,):
            raise ValueError(f"out has shape {out.shape}, expected ({self.size},)")
        views = self.unflatten(out).values()
        for (name, shape), tensor, view in zip(self.specs, self._tensors, views):
            grad = tensor.grad
            if grad is None:
                view.fill(0)
            elif isinstance(grad, RowSparse) and grad.shape == shape:
                view.fill(0)  # the whole table: what moving every key costs (`add_grads` costs less)
                grad.add_to(view)
            elif np.shape(grad) != shape:
                raise ValueError(f"gradient of {name!r} has shape {np.shape(grad)}, expected {shape}")
            else:
                np.copyto(view, grad, casting="same_kind")
        return out

    def add_grads(self, out: np.ndarray) -> None:
        """out += every parameter's `.grad` (a None adds nothing), where a RowSparse adds at its
        rows only: what it costs follows the rows a batch touched, not the size of the table.
        A caller that keeps `out` zero outside the rows it last wrote (clearing just those)
        gathers a batch's gradient with no table-sized pass at all."""
        if out.shape != (self.size,):
            raise ValueError(f"out has shape {out.shape}, expected ({self.size},)")
        views = self.unflatten(out)
        for name, _, _, grad in self._grads():
            if isinstance(grad, RowSparse):
                grad.add_to(views[name])
            else:
                views[name] += grad

    def grads_at(self) -> tuple[np.ndarray, np.ndarray]:
        """Every parameter's `.grad` as flat positions (sorted, distinct) and the values there: a
        RowSparse at its rows only, any other gradient whole, a None not at all. A rule that
        `steps_by_rows` steps these at the cost of the rows a batch touched, not of the table."""
        positions, values = [np.zeros(0, np.int64)], [np.zeros(0, self.data.dtype)]
        for _, shape, start, grad in self._grads():
            if isinstance(grad, RowSparse):
                rows = grad.coalesce()
                width = int(np.prod(shape[1:], dtype=np.int64))
                positions.append((start + rows.rows[:, None] * width + np.arange(width)).reshape(-1))
                values.append(rows.values.reshape(-1))
            else:
                positions.append(np.arange(start, start + int(np.prod(shape, dtype=np.int64))))
                values.append(np.reshape(grad, -1))
        return np.concatenate(positions), np.concatenate(values).astype(self.data.dtype, copy=False)

    def _grads(self):
        """(name, shape, flat offset, gradient) of every parameter that has a gradient, its shape checked."""
        for (name, shape), tensor, start in zip(self.specs, self._tensors, self.offsets):
            grad = tensor.grad
            if grad is None:
                continue
            if np.shape(grad) != shape:
                raise ValueError(f"gradient of {name!r} has shape {np.shape(grad)}, expected {shape}")
            yield name, shape, start, grad

    def check_views(self) -> None:
        """Raise if any parameter's `.data` is neither its view into `data` nor the received
        memory `receive` gave it (something else rebound it)."""
        pairs = zip(self.specs, self._tensors, self._memory)
        cut = [name for (name, _), tensor, memory in pairs if tensor.data is not memory]
        if cut:
            raise RuntimeError(f"parameters {cut} no longer share the flat buffer: their .data "
                               "was replaced instead of updated in place")
