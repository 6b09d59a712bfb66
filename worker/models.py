"""The model zoo: what a job's `model:` section names, built from `model.nn` layers.

Every builder takes the section's keys as keyword arguments (so a typo is a clear error naming
the key) plus what the data set says about its inputs. Builders are seeded: every process that
builds the same job gets the same initial weights. A user's own model (`model: {factory:
FILE.py:build, ...}`) is built by `build_factory`, seeded the same way.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from downpour.model import nn
from downpour.model.backend import array_module
from downpour.model.tensor import Tensor

from . import plugins, sparse_models

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: Knuth's multiplicative hash


class ModelConfigError(ValueError):
    """A `model:` section the builder cannot use; the message names the key."""


def _mlp(inputs: int, classes: int, hidden: list[int], dropout: float, activation: str, rng) -> nn.Module:
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    if activation not in acts:
        raise ModelConfigError(f"model.activation: expected one of {sorted(acts)}, got {activation!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = inputs
    for h in hidden:
        layers += [nn.Linear(width, h, rng=rng), acts[activation]()]
        if dropout:
            layers.append(nn.Dropout(dropout, rng=rng))
        width = h
    layers.append(nn.Linear(width, classes, rng=rng))
    return nn.Sequential(*layers)


def logreg(info: dict, rng) -> nn.Module:
    """Multinomial logistic regression: one linear layer on the flattened input."""
    return _mlp(int(np.prod(info["input_shape"])), info["num_classes"], [], 0.0, "relu", rng)


def mlp(info: dict, rng, hidden: list[int] = (128,), dropout: float = 0.0, activation: str = "relu") -> nn.Module:
    """A multi-layer perceptron with optional dropout after every hidden layer."""
    return _mlp(int(np.prod(info["input_shape"])), info["num_classes"], list(hidden), float(dropout), activation, rng)


def lenet5(info: dict, rng, dropout: float = 0.0) -> nn.Module:
    """LeCun et al.'s LeNet-5 (ReLU, max pooling), for 1x28x28 or 1x32x32 images."""
    c, h, w = info["input_shape"]
    pad = 2 if h == 28 else 0
    side = ((h + 2 * pad - 4) // 2 - 4) // 2
    layers: list[nn.Module] = [
        nn.Conv2d(c, 6, 5, padding=pad, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, rng=rng), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * side * side, 120, rng=rng), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout, rng=rng))
    layers += [nn.Linear(120, 84, rng=rng), nn.ReLU(), nn.Linear(84, info["num_classes"], rng=rng)]
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(x))): the identity path lets gradients skip the block."""

    def __init__(self, channels: int, rng):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, rng=rng)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, rng=rng)

    def forward(self, x: Tensor) -> Tensor:
        return (x + self.conv2(self.conv1(x).relu())).relu()


def resnet(info: dict, rng, channels: list[int] = (16, 32), blocks: int = 1, hidden: int = 0,
           dropout: float = 0.0) -> nn.Module:
    """A small residual CNN: per stage a widening 3x3 conv, 2x2 max pooling, then `blocks`
    residual blocks at the pooled size (a quarter of the work of blocks at full size); then
    an optional `hidden`-unit ReLU layer, with dropout before each linear layer of the head."""
    c, h, w = info["input_shape"]
    layers: list[nn.Module] = []
    for width in channels:
        layers += [nn.Conv2d(c, width, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool2d(2)]
        layers += [ResidualBlock(width, rng) for _ in range(blocks)]
        c, h, w = width, h // 2, w // 2
    layers.append(nn.Flatten())
    widths = [c * h * w, *([hidden] if hidden else []), info["num_classes"]]
    for index, (width_in, width_out) in enumerate(zip(widths, widths[1:])):
        if dropout:
            layers.append(nn.Dropout(dropout, rng=rng))
        layers.append(nn.Linear(width_in, width_out, rng=rng))
        if index < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class CharRNN(nn.Module):
    """Embedding -> dropout -> LSTM/GRU -> dropout -> linear: a character-level language model
    (batch-first ids).

    Dropout on the non-recurrent connections only, into the recurrent layer and out of it
    (Zaremba et al. 2014): a small text (the Jargon File's 1.5 M characters) is otherwise
    memorised within a few epochs, while dropout inside the recurrence would erode the memory.

    With `ngram_buckets`, each character's input also adds the vector of its last `ngram`
    characters, hashed into a table of that many rows (fastText's hashed n-grams, Bojanowski
    et al. 2017): a large table of which a batch reads a few thousand rows, the case that
    `compression.rows` serves.
    """

    def __init__(self, cell: str, vocab: int, embed: int, hidden: int, layers: int, dropout: float, rng,
                 ngram_buckets: int = 0, ngram: int = 3):
        super().__init__()
        if ngram_buckets < 0 or not 2 <= ngram <= 8:
            raise ModelConfigError(f"model.ngram_buckets {ngram_buckets}, model.ngram {ngram}: expected "
                                   "ngram_buckets >= 0 (0: none) and ngram in [2, 8]")
        self.vocab, self.ngram_buckets, self.ngram = vocab, ngram_buckets, ngram
        self.embed = nn.Embedding(vocab, embed, rng=rng)
        self.ngrams = nn.Embedding(ngram_buckets, embed, rng=rng) if ngram_buckets else None
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(embed, hidden, num_layers=layers, batch_first=True, rng=rng)
        self.drop = nn.Dropout(dropout, rng=rng) if dropout else None
        self.head = nn.Linear(hidden, vocab, rng=rng)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.embed(ids)
        if self.ngrams is not None:
            x = x + self.ngrams(self.ngram_ids(ids.data))
        out, _ = self.rnn(self.drop(x) if self.drop is not None else x)
        return self.head(self.drop(out) if self.drop is not None else out)

    def ngram_ids(self, ids):
        """The bucket of each position's last `ngram` characters (padded before the start of
        the window): a multiplicative hash of their base-(vocab + 1) code."""
        xp = array_module(ids)
        length = ids.shape[1]
        code = xp.zeros(ids.shape, xp.uint64)
        for j in range(self.ngram - 1, -1, -1):  # the oldest character first
            earlier = xp.full(ids.shape, self.vocab, xp.uint64)
            if j < length:
                earlier[:, j:] = ids[:, :length - j]
            code = code * xp.uint64(self.vocab + 1) + earlier
        return ((code * _GOLDEN) >> xp.uint64(32)) % xp.uint64(self.ngram_buckets)

    def row_tables(self) -> tuple[str, ...]:
        """The parameters a batch reads only some rows of (`compression.rows`)."""
        return ("embed.weight", "ngrams.weight") if self.ngrams is not None else ("embed.weight",)

    def rows_used(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """The rows of each table that a batch of `ids` reads (and whose gradient it makes)."""
        used = {"embed.weight": ids}
        if self.ngrams is not None:
            used["ngrams.weight"] = self.ngram_ids(ids)
        return used


def char_lstm(info: dict, rng, embed: int = 32, hidden: int = 128, layers: int = 1, dropout: float = 0.0,
              ngram_buckets: int = 0, ngram: int = 3) -> nn.Module:
    return CharRNN("lstm", info["num_classes"], embed, hidden, layers, float(dropout), rng, ngram_buckets, ngram)


def char_gru(info: dict, rng, embed: int = 32, hidden: int = 128, layers: int = 1, dropout: float = 0.0,
             ngram_buckets: int = 0, ngram: int = 3) -> nn.Module:
    return CharRNN("gru", info["num_classes"], embed, hidden, layers, float(dropout), rng, ngram_buckets, ngram)


class SequenceGRU(nn.Module):
    """Classify a (N, C, L) sequence from the GRU's last hidden state."""

    def __init__(self, channels: int, classes: int, hidden: int, layers: int, rng):
        super().__init__()
        self.rnn = nn.GRU(channels, hidden, num_layers=layers, batch_first=True, rng=rng)
        self.head = nn.Linear(hidden, classes, rng=rng)

    def forward(self, x: Tensor) -> Tensor:
        _, h_n = self.rnn(x.transpose(0, 2, 1))
        return self.head(h_n[-1])


def seq_gru(info: dict, rng, hidden: int = 64, layers: int = 1) -> nn.Module:
    return SequenceGRU(info["input_shape"][0], info["num_classes"], hidden, layers, rng)


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "logreg": logreg, "mlp": mlp, "lenet5": lenet5, "resnet": resnet,
    "char_lstm": char_lstm, "char_gru": char_gru, "seq_gru": seq_gru,
    "sparse_logreg": sparse_models.sparse_logreg, "fasttext": sparse_models.fasttext,  # hashed features
}


def build(model_cfg: dict, info: dict | None, seed: int) -> nn.Module:
    """Build the model a job's `model:` section describes, seeded by the job's seed: a built-in
    `type` (which needs the data set's `info`) or a user's `factory`."""
    if "factory" in model_cfg:
        return build_factory(model_cfg, seed)
    kind = model_cfg.get("type")
    if kind not in BUILDERS:
        raise ModelConfigError(f"model.type: expected one of {sorted(BUILDERS)}, got {kind!r}")
    builder = BUILDERS[kind]
    kwargs = {k: v for k, v in model_cfg.items() if k != "type"}
    accepted = [p for p in inspect.signature(builder).parameters if p not in ("info", "rng")]
    for key in kwargs:
        if key not in accepted:
            raise ModelConfigError(f"model.{key}: not used by {kind} (it takes: {', '.join(accepted) or 'nothing'})")
    nn.manual_seed(seed)
    return builder(info, np.random.default_rng([seed, 1]), **kwargs)


def build_factory(model_cfg: dict, seed: int) -> nn.Module:
    """`model: {factory: FILE.py:build, ...}`: `build(**every other key)`, called with the
    engine's, NumPy's and Python's generators seeded by the job's seed (so every role builds
    the same initial weights), must return an `nn.Module` with parameters."""
    ref = model_cfg["factory"]
    factory = plugins.load(ref, "model.factory")
    kwargs = {key: value for key, value in model_cfg.items() if key != "factory"}
    with plugins.seeded(seed):
        net = plugins.call(factory, ref, "model.factory", **kwargs)
    if not isinstance(net, nn.Module):
        raise plugins.PluginError(f"model.factory: {factory.__name__} ({plugins.where(factory)}) returned a "
                                  f"{type(net).__name__}; expected a downpour.model.nn.Module")
    if not any(True for _ in net.parameters()):
        raise plugins.PluginError(f"model.factory: {factory.__name__} ({plugins.where(factory)}) returned "
                                  f"a {type(net).__name__} without parameters: there is nothing to train")
    return net


def data_info(data: Any) -> dict:
    """What a builder needs to know about a data set."""
    return {"input_shape": tuple(data.input_shape) if data.input_shape is not None else None,
            "num_classes": int(data.num_classes), "kind": data.kind}


def initial_parameters(model_cfg: dict, info: dict, seed: int, by_rows: bool = False) -> list[tuple[str, np.ndarray]]:
    """The seeded initial weights, by PyTorch parameter name (what the coordinator hands out);
    with `by_rows` (`compression.rows`), first check that the model has tables to read by rows."""
    module = build(model_cfg, info, seed)
    if by_rows:
        row_tables(module)
    return [(name, np.asarray(p.data, dtype=np.float32)) for name, p in module.named_parameters()]


def row_tables(net: nn.Module) -> tuple[str, ...]:
    """The names of the parameters that `compression.rows` reads by rows; an error if none."""
    names = net.row_tables() if hasattr(net, "row_tables") else ()
    if not names:
        raise ModelConfigError(f"compression.rows: the model ({type(net).__name__}) has no embedding table "
                               "to read by rows: expected a char_lstm, char_gru, sparse_logreg or fasttext model, "
                               "or compression.rows false")
    return tuple(names)
