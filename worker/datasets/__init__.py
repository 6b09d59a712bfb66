"""Data sets for workers: one registry of offline loaders and the per-worker batch partition."""
from downpour.worker.datasets.batching import batch_indices
from downpour.worker.datasets.dataset import Dataset
from downpour.worker.datasets.errors import DatasetError
from downpour.worker.datasets.registry import available, load

__all__ = ["Dataset", "DatasetError", "available", "batch_indices", "load"]
