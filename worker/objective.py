"""What a job optimises and how it is scored: the loss of a batch, and metrics over a split."""
from __future__ import annotations

import math

import numpy as np

import downpour.model.functional as F
from downpour.model import no_grad
from downpour.model.tensor import Tensor


def model_input(x):
    """What the model is called with: a Tensor of the batch's array, or, for sparse data, the
    batch's rows as they are (CSR: `ids`, `offsets`, `values`, worker/datasets/hashing.py)."""
    return x if hasattr(x, "offsets") else Tensor(x)


def batch_loss(net, kind: str, x: np.ndarray, y: np.ndarray) -> Tensor:
    """Mean cross-entropy of a batch: over examples (classification) or characters (language model)."""
    logits = net(model_input(x))
    if kind == "language_model":
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return F.cross_entropy(logits, y)


def evaluate(net, data, split: str = "test", batch_size: int = 500) -> dict:
    """Loss and accuracy (classification) or bits per character (language model) over a split,
    in eval mode (dropout off), without recording the tape."""
    was_training = net.training
    net.eval()
    total_loss, correct, count = 0.0, 0, 0
    with no_grad():
        for x, y in data.eval_batches(split, batch_size):
            logits = net(model_input(x))
            if data.kind == "language_model":  # score the window, not the context before it
                scored = logits.numpy()[:, -y.shape[1]:]
                logits = Tensor(np.ascontiguousarray(scored).reshape(-1, scored.shape[-1]))
                y = y.reshape(-1)
            n = len(y)
            total_loss += float(F.cross_entropy(logits, y).item()) * n
            correct += int((logits.numpy().argmax(axis=1) == y).sum())
            count += n
    net.train(was_training)
    if count == 0:
        return {}
    loss = total_loss / count
    prefix = f"{split}_"
    metrics = {prefix + "loss": loss, prefix + "accuracy": correct / count}
    if data.kind == "language_model":
        metrics[prefix + "bpc"] = loss / math.log(2)
    return metrics
