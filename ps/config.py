"""The job config: read YAML, apply command-line overrides, validate, fill in every default.

The coordinator, shards, workers and the CLI all read a job through this module, so it imports
nothing but the standard library and PyYAML. The resolved config is a plain nested dict of
plain values (it travels in msgpack); the settings themselves are declared in
`ps.config_schema`.

YAML is read with the YAML 1.2 core schema's scalars: only `true`/`false` are booleans
(`yes`, `on` stay strings and fail a boolean setting), `1e-3` is a float, dates stay strings,
and a key given twice in one mapping is an error rather than a silent overwrite.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from downpour.ps.config_schema import JOB, PLUGIN_SETTINGS
from downpour.ps.schema_nodes import ConfigError, Nullable, Section, join

__all__ = ["ConfigError", "load", "resolve", "apply_overrides", "dump", "get"]

log = logging.getLogger(__name__)

_BOOL_TAG, _FLOAT_TAG = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
_CORE_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_CORE_FLOAT = re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
                              |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X)
_OVERRIDE_FORM = "dotted.key=value (the value in YAML syntax)"


def _core_schema_resolvers() -> dict:
    """PyYAML's implicit scalar types with booleans, floats and timestamps as in YAML 1.2."""
    replaced = {_BOOL_TAG, _FLOAT_TAG, "tag:yaml.org,2002:timestamp"}
    table = {first: [(tag, regexp) for tag, regexp in entries if tag not in replaced]
             for first, entries in yaml.resolver.Resolver.yaml_implicit_resolvers.items()}
    for first in "tTfF":
        table.setdefault(first, []).append((_BOOL_TAG, _CORE_BOOL))
    for first in "-+.0123456789":  # after int, so that `10` stays an int
        table.setdefault(first, []).append((_FLOAT_TAG, _CORE_FLOAT))
    return table


class _Loader(yaml.SafeLoader):
    yaml_implicit_resolvers = _core_schema_resolvers()

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key_node.value!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Dumper(yaml.SafeDumper):
    """Quotes exactly the strings that `_Loader` would otherwise read as something else."""

    yaml_implicit_resolvers = _Loader.yaml_implicit_resolvers


def _represent_list(dumper: yaml.SafeDumper, items: list) -> yaml.Node:
    flow = all(not isinstance(item, (dict, list)) for item in items)  # `betas: [0.9, 0.999]`
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(err, "problem", None) or str(err)
        raise ConfigError(source, text, "valid YAML", f"invalid YAML{where}: {reason}") from err


def load(path: str | os.PathLike, overrides: Sequence[str] | Mapping[str, Any] = ()) -> dict:
    """Read a job config file, apply `--set` overrides, validate it and fill in every default."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(source, None, "a readable YAML file",
                          f"cannot read the config file ({err.strerror or err})") from err
    raw = _parse_yaml(text, source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, raw, JOB.expected)
    return resolve(raw, overrides, base=Path(os.path.abspath(path)).parent)


def resolve(raw: Mapping, overrides: Sequence[str] | Mapping[str, Any] = (),
            base: str | os.PathLike | None = None) -> dict:
    """Apply overrides to a raw config mapping, validate it and fill in every default.

    The files of a user's code (`model: {factory: mynet.py:build}`) are made absolute against
    `base` (the config file's directory; the working directory when None): the resolved config
    travels to every role, which finds them at that path, whatever its own directory.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError("config", raw, JOB.expected)
    resolved = JOB.resolve(apply_overrides(raw, overrides), "")
    for dotted in PLUGIN_SETTINGS:
        section, _, key = dotted.rpartition(".")
        holder = get(resolved, section) if section else resolved
        if holder.get(key) is not None:
            holder[key] = anchor_plugin(holder[key], Path.cwd() if base is None else Path(base))
    log.debug("resolved job config %r", resolved["name"])
    return resolved


def split_plugin(ref: str) -> tuple[str, str, bool]:
    """`FILE.py:NAME` or `package.module:NAME` as (file or module, NAME, whether a file)."""
    target, _, name = ref.rpartition(":")
    return target, name, target.endswith(".py")


def anchor_plugin(ref: str, base: Path) -> str:
    """A `FILE.py:NAME` with FILE made absolute against `base` (`~` expanded); a module's
    `package.module:NAME` as it is."""
    target, name, is_file = split_plugin(ref)
    if not is_file:
        return ref
    path = Path(target).expanduser()
    return f"{os.path.normpath(path if path.is_absolute() else base / path)}:{name}"


def apply_overrides(raw: Mapping, overrides: Sequence[str] | Mapping[str, Any]) -> dict:
    """A copy of `raw` with each `dotted.key=value` set; values are parsed as YAML.

    `model.hidden=[256,128]` sets a list; a key inside a section given in shorthand
    (`workers: 2`, then `workers.restart=on-failure`) expands the shorthand first. A mapping
    of dotted keys to values (the Python API's form) sets the values as they are, unparsed.
    """
    config = copy.deepcopy(dict(raw))
    if isinstance(overrides, Mapping):
        for dotted, value in overrides.items():
            keys = [key.strip() for key in dotted.split(".")] if isinstance(dotted, str) else []
            if not keys or not all(keys):
                raise ConfigError("overrides", dotted, "a dotted key such as 'consistency.mode'")
            _set(config, keys, copy.deepcopy(value))
        return config
    for override in [overrides] if isinstance(overrides, str) else overrides:
        keys, value = _parse_override(override)
        _set(config, keys, value)
        log.debug("override %s = %r", ".".join(keys), value)
    return config


def _parse_override(override: str) -> tuple[list[str], Any]:
    dotted, equals, text = str(override).partition("=")
    keys = [key.strip() for key in dotted.split(".")]
    if not equals or not all(keys):
        raise ConfigError("--set", override, _OVERRIDE_FORM)
    try:
        return keys, yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError("--set", override, _OVERRIDE_FORM) from err


def _schema_child(node: Any, key: str) -> Any:
    if isinstance(node, Nullable):
        node = node.inner
    return node.fields.get(key) if isinstance(node, Section) else None


def _set(config: dict, keys: list[str], value: Any) -> None:
    container: Any = config
    schema: Any = JOB
    for depth, key in enumerate(keys):
        path = ".".join(keys[:depth + 1])
        if isinstance(container, list):
            if not key.isdigit() or int(key) >= len(container):
                raise ConfigError(path, key, f"an index below {len(container)}, the length of {'.'.join(keys[:depth])}")
            index: Any = int(key)
        else:
            index = key
        if depth == len(keys) - 1:
            container[index] = value
            return
        schema = _schema_child(schema, key)
        child = container[index] if isinstance(container, list) else container.get(key)
        if child is None:
            child = {}
        elif isinstance(schema, Section) and schema.shorthand and not isinstance(child, dict):
            child = {schema.shorthand: child}
        if not isinstance(child, (dict, list)):
            raise ConfigError(path, child, f"a mapping to set {'.'.join(keys)} in")
        container[index] = child
        container = child


def dump(resolved: Mapping) -> str:
    """YAML text of a config (the run directory's `config.yaml`); `load` reads it back equal."""
    return yaml.dump(dict(resolved), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True)


_MISSING: Any = object()


def get(cfg: Mapping, dotted: str, default: Any = _MISSING) -> Any:
    """The value at `a.b.c` (list items by index); without a default, a missing key is a KeyError."""
    value: Any = cfg
    walked = ""
    for key in dotted.split("."):
        walked = join(walked, key)
        if isinstance(value, Mapping) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif default is not _MISSING:
            return default
        else:
            raise KeyError(f"{walked}: no such setting" + (f" (in {dotted})" if walked != dotted else ""))
    return value


def expected_workers(cfg: dict) -> int:
    """The workers a job waits for: those the launcher starts and those that join from outside."""
    return cfg["workers"]["count"] + cfg["workers"]["external"]


def planned_updates(cfg: Mapping) -> int:
    """How many updates each shard range will apply if every worker runs all its steps: the
    span of a learning-rate schedule. BSP applies one averaged update per clock; async and SSP
    one per push. External workers are counted as if they push as often as the built-in ones."""
    t = cfg["train"]
    pushes = -(-t["steps"] // t["push_every"])
    return pushes if cfg["consistency"]["mode"] == "bsp" else pushes * expected_workers(cfg)
