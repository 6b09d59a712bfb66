"""A job config as the API takes it: a YAML path or a dict, plus overrides as a list or a dict.

Overrides are exactly what `--set` takes (`["workers=4", "consistency.mode=ssp"]`), or a dict
of dotted keys to values (`{"workers": 4, "model.hidden": [64]}`); values in a dict are used as
they are, not parsed as YAML, so `{"name": "007"}` stays a string. A plug-in's file
(`model: {factory: mynet.py:build}`) is found from the config file's directory, or from the
working directory for a dict. Every error is a `ConfigError` naming the key, the value and
what was expected.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from downpour.ps import config as job_config
from downpour.ps.schema_nodes import ConfigError

Config = str | os.PathLike | Mapping[str, Any]
Overrides = Sequence[str] | Mapping[str, Any] | None


def resolve(config: Config, overrides: Overrides = None) -> dict:
    """The full job config (every default filled in) from a path or a mapping, with overrides."""
    if overrides is None:
        overrides = ()
    elif isinstance(overrides, str) or not isinstance(overrides, (Sequence, Mapping)) or (
            not isinstance(overrides, Mapping) and not all(isinstance(o, str) for o in overrides)):
        raise ConfigError("overrides", overrides, "a list of KEY=VALUE strings or a dict of dotted keys to values")
    if isinstance(config, (str, os.PathLike)):
        return job_config.load(config, overrides)
    if isinstance(config, Mapping):
        return job_config.resolve(config, overrides)
    raise ConfigError("config", config, "a path to a YAML job config or a dict")
