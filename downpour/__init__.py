"""downpour: a distributed parameter-server training system.

`import downpour` is the public face: `launch` a local cluster (a `Job`), `train` in one
process, `connect` to a job's shards from your own training loop (a `Client`). The packages
beneath are `downpour.model` (the autodiff engine), `downpour.ps` (the system) and
`downpour.worker` (one worker's training loop); the `downpour` command line is built on this face.

The names are imported on first use, so that `python -P -m downpour ROLE`, which every process
of a job runs, starts no slower for them.
"""
from __future__ import annotations

import importlib
import pathlib
from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from downpour.ps.schema_nodes import ConfigError
    from downpour.worker.session import JobEnded

    from .client import Client, connect
    from .control import JobError
    from .job import Job, launch
    from .local import train

_WHERE = {"launch": ".job", "Job": ".job", "train": ".local", "connect": ".client", "Client": ".client",
          "JobError": ".control", "ConfigError": "downpour.ps.schema_nodes", "JobEnded": "downpour.worker.session"}

# `python` started in a source checkout puts it first on sys.path, so this folder is found
# before the installed package, and its subpackages are the folders beside it (model/, ps/,
# worker/), not inside it: name them here as setuptools' package-dir does on install.
_CHECKOUT = pathlib.Path(__file__).resolve().parent.parent
if (_CHECKOUT / "ps" / "protocol.py").is_file() and (_CHECKOUT / "model" / "tensor.py").is_file():
    __path__.append(str(_CHECKOUT))

try:
    __version__ = _metadata.version("downpour")
except _metadata.PackageNotFoundError:  # a checkout that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["launch", "Job", "train", "connect", "Client", "ConfigError", "JobError", "JobEnded", "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'downpour' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_WHERE))
