"""Data sets for workers: one registry of offline loaders and the per-worker batch partition."""
from worker.datasets.batching import batch_indices
from worker.datasets.dataset import Dataset
from worker.datasets.errors import DatasetError
from worker.datasets.registry import available, load

__all__ = ["Dataset", "DatasetError", "available", "batch_indices", "load"]
