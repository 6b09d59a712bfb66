"""What a job optimises and how it is scored: the loss of a batch, and metrics over a split.

The loss is the job's `loss:` (a user's `loss(output, target) -> 0-d tensor`, the mean over
the batch) or, by default, cross-entropy over integer class labels. A split's loss is always
reported; its accuracy whenever the targets are integer class labels that the output scores.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

import downpour.model.functional as F
from downpour.model import no_grad
from downpour.model.tensor import Tensor

from . import plugins

Loss = Callable[[Tensor, np.ndarray], Tensor]


def model_input(x):
    """What the model is called with: a Tensor of the batch's array, or, for sparse data, the
    batch's rows as they are (CSR: `ids`, `offsets`, `values`, worker/datasets/hashing.py)."""
    return x if hasattr(x, "offsets") else Tensor(x)


def _class_axis(output_shape: tuple[int, ...], target_shape: tuple[int, ...]) -> int | None:
    """Where the output holds the class scores of integer targets: the last axis ((N, C)
    against (N,), or (N, L, V) against (N, L) as the engine's batch-first recurrent layers give
    them), else axis 1 as in PyTorch ((N, C, d1, ...) against (N, d1, ...)); None when the
    output does not score the targets' classes."""
    if len(output_shape) != len(target_shape) + 1:
        return None
    if output_shape[:-1] == target_shape:
        return len(output_shape) - 1
    if output_shape[:1] + output_shape[2:] == target_shape:
        return 1
    return None


def cross_entropy(output: Tensor, target: np.ndarray) -> Tensor:
    """The default loss: mean cross-entropy of integer class labels, per example or per position."""
    if target.dtype.kind not in "iu":
        raise TypeError(f"the default loss, cross-entropy, needs integer class labels as targets, got {target.dtype}; "
                        "name your own with `loss: FILE.py:NAME` in the job config")
    axis = _class_axis(output.shape, target.shape)
    if axis is None:
        raise ValueError(f"cross-entropy: an output of shape {output.shape} does not score targets of shape "
                         f"{target.shape} (expected (..., C) or (N, C, ...) against the targets' shape)")
    if axis == 1 or output.ndim == 2:
        return F.cross_entropy(output, target)
    return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


def job_loss(config: dict) -> Loss:
    """The loss a job names (`loss: FILE.py:NAME`), or cross-entropy."""
    ref = config.get("loss")
    return cross_entropy if ref is None else plugins.load(ref, "loss")


def batch_loss(net, kind: str, x: np.ndarray, y: np.ndarray, loss: Loss | None = None) -> Tensor:
    """The loss of a batch: the job's `loss`, or cross-entropy over examples (or over characters
    for a language model: the default reads which from the shapes, so `kind` no longer decides)."""
    return (loss or cross_entropy)(net(model_input(x)), y)


def evaluate(net, data, split: str = "test", batch_size: int = 500, loss: Loss | None = None) -> dict:
    """Loss over a split, plus accuracy (integer class labels) and bits per character (language
    model), in eval mode (dropout off), without recording the tape. The loss is the mean of
    the batches' losses weighted by their numbers of examples."""
    loss = loss or cross_entropy
    was_training = net.training
    net.eval()
    total_loss, count, correct, scored, labels = 0.0, 0, 0, 0, True
    with no_grad():
        for x, y in data.eval_batches(split, batch_size):
            output = net(model_input(x))
            if data.kind == "language_model":  # score the window, not the context before it
                output = output[:, -y.shape[1]:]
            total_loss += float(loss(output, y).item()) * len(y)
            count += len(y)
            axis = _class_axis(output.shape, y.shape) if y.dtype.kind in "iu" else None
            labels = labels and axis is not None
            if labels:
                correct += int((output.numpy().argmax(axis=axis) == y).sum())
                scored += y.size
    net.train(was_training)
    if count == 0:
        return {}
    prefix = f"{split}_"
    metrics = {prefix + "loss": total_loss / count}
    if labels:
        metrics[prefix + "accuracy"] = correct / scored
    if data.kind == "language_model":
        metrics[prefix + "bpc"] = metrics[prefix + "loss"] / math.log(2)
    return metrics
