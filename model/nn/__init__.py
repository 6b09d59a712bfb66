"""Layers with PyTorch's names, shapes, defaults and state_dict layout: `from downpour.model import nn`.

Initialisation is reproducible: every layer takes an explicit `rng`, else it draws from the
default generator that `manual_seed(seed)` resets.
"""
from .init import default_generator, manual_seed
from .layers import (
    AvgPool2d,
    Conv2d,
    Dropout,
    Embedding,
    Flatten,
    LayerNorm,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    Sigmoid,
    Tanh,
)
from .module import LoadResult, Module, Parameter
from .rnn import GRU, LSTM, RNN
from .sparse import EmbeddingBag

__all__ = [
    "AvgPool2d",
    "Conv2d",
    "Dropout",
    "Embedding",
    "EmbeddingBag",
    "Flatten",
    "GRU",
    "LSTM",
    "LayerNorm",
    "Linear",
    "LoadResult",
    "MaxPool2d",
    "Module",
    "Parameter",
    "RNN",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Tanh",
    "default_generator",
    "manual_seed",
]
