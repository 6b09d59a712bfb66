"""The node types of the job config's schema: what a setting accepts, how it is named in an
error, and its default; `config_schema.py` builds the job's table out of them.

Each node resolves a raw value at a dotted key path (`resolve`) or gives its default when the
key is absent (`fill`), and raises `ConfigError` naming the key, the value and what was expected.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # the default of a setting that has none


def show(value: Any) -> str:
    """A value as the user wrote it in YAML (true, null), strings quoted so blanks are visible."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else repr(value)


class ConfigError(ValueError):
    """A setting that cannot be used, located by its dotted key path (`shards.count`)."""

    def __init__(self, path: str, value: Any, expected: str, problem: str | None = None) -> None:
        self.path, self.value, self.expected, self.problem = path, value, expected, problem
        detail = problem if problem is not None else f"expected {expected}, got {show(value)}"
        super().__init__(f"{path}: {detail}")

    def __reduce__(self):  # keeps the fields when the error crosses a process boundary
        return type(self), (self.path, self.value, self.expected, self.problem)


def join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def unknown_key(path: str, key: Any, value: Any, known: list[str]) -> ConfigError:
    """The error for a key the schema does not know, suggesting the nearest known spelling."""
    close = difflib.get_close_matches(str(key), known, n=3)
    hint = ("did you mean " + " or ".join(repr(name) for name in close) + "?" if close
            else "known keys: " + ", ".join(known))
    return ConfigError(join(path, key), value, "one of the known keys: " + ", ".join(known),
                       f"unknown key ({hint})")


def _plain(value: Any) -> Any:
    """Free-form values as msgpack will give them back: tuples become lists."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


@dataclass(frozen=True)
class Field:
    """A leaf setting: a predicate, the phrase naming what it accepts, and its default."""

    expected: str
    accepts: Callable[[Any], bool]
    default: Any = REQUIRED
    convert: Callable[[Any], Any] = lambda value: value

    def resolve(self, value: Any, path: str) -> Any:
        if not self.accepts(value):
            raise ConfigError(path, value, self.expected)
        return self.convert(value)

    def fill(self, path: str) -> Any:
        if self.default is REQUIRED:
            raise ConfigError(path, None, self.expected,
                              f"required but missing (expected {self.expected})")
        return copy.deepcopy(self.default)


@dataclass(frozen=True)
class Nullable:
    """A setting that may be null, meaning off; off is its default."""

    inner: Node

    @property
    def expected(self) -> str:
        return f"{self.inner.expected} or null"

    def resolve(self, value: Any, path: str) -> Any:
        return None if value is None else self.inner.resolve(value, path)

    def fill(self, path: str) -> Any:
        return None


@dataclass(frozen=True)
class Rule:
    """A constraint between the settings of one section, checked once they are all filled in.

    `key` names the setting blamed; None blames the section as a whole.
    """

    key: str | None
    holds: Callable[[dict], bool]
    expected: str | Callable[[dict], str]

    def check(self, resolved: dict, given: dict, path: str) -> None:
        if self.holds(resolved):
            return
        expected = self.expected(resolved) if callable(self.expected) else self.expected
        if self.key is None:
            raise ConfigError(path, given, expected)
        raise ConfigError(join(path, self.key), resolved[self.key], expected)


@dataclass(frozen=True)
class Section:
    """A mapping of named settings.

    `shorthand` names the setting that a bare scalar stands for (`workers: 4` is
    `workers: {count: 4}`); `free_form` keeps keys the schema does not know, as given.
    """

    fields: dict[str, Node]
    shorthand: str | None = None
    rules: tuple[Rule, ...] = ()
    free_form: bool = False
    expected: str = "a mapping"

    def resolve(self, value: Any, path: str) -> dict:
        if value is None:
            value = {}
        if self.shorthand is not None and not isinstance(value, dict):
            value = {self.shorthand: value}
        if not isinstance(value, dict):
            raise ConfigError(path, value, self.expected)
        extra = [key for key in value if key not in self.fields]
        if extra and not self.free_form:
            raise unknown_key(path, extra[0], value[extra[0]], list(self.fields))
        resolved = {key: node.resolve(value[key], join(path, key)) if key in value
                    else node.fill(join(path, key)) for key, node in self.fields.items()}
        resolved.update((key, _plain(value[key])) for key in extra)
        for rule in self.rules:
            rule.check(resolved, value, path)
        return resolved

    def fill(self, path: str) -> dict:
        return self.resolve({}, path)


@dataclass(frozen=True)
class Variants:
    """A mapping whose settings depend on one of them, the tag (`optimizer.type`, a fault's `kind`).

    Each option is a full Section, tag included; a key that belongs to another option is
    reported as such rather than as unknown.
    """

    tag: str
    options: dict[str, Section]
    expected: str = "a mapping"

    def resolve(self, value: Any, path: str) -> dict:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(path, value, self.expected)
        tag_field = next(iter(self.options.values())).fields[self.tag]
        tag_path = join(path, self.tag)
        tag = tag_field.resolve(value[self.tag], tag_path) if self.tag in value else tag_field.fill(tag_path)
        chosen = self.options[tag]
        takes = ", ".join(key for key in chosen.fields if key != self.tag)
        for key in value:
            if key not in chosen.fields and any(key in option.fields for option in self.options.values()):
                raise ConfigError(join(path, key), value[key], f"one of {takes}",
                                  f"not used by {tag} (it takes: {takes})")
        return chosen.resolve(value, path)

    def fill(self, path: str) -> dict:
        return self.resolve({}, path)


@dataclass(frozen=True)
class Either:
    """One of two sections, picked by whether `key` is given: a user's `factory` (whose other
    keys are its keyword arguments) or a built-in (`model.type`, `data.dataset`)."""

    key: str
    given: Section
    otherwise: Section
    expected: str = "a mapping"

    def resolve(self, value: Any, path: str) -> dict:
        chosen = self.given if isinstance(value, dict) and self.key in value else self.otherwise
        return chosen.resolve(value, path)

    def fill(self, path: str) -> dict:
        return self.otherwise.fill(path)


@dataclass(frozen=True)
class ListOf:
    """A list of settings of one shape (the fault schedule); empty by default."""

    item: Node
    expected: str = "a list"

    def resolve(self, value: Any, path: str) -> list:
        if value is None:
            return []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, value, self.expected)
        return [self.item.resolve(item, f"{path}[{index}]") for index, item in enumerate(value)]

    def fill(self, path: str) -> list:
        return []


Node = Field | Nullable | Section | Variants | Either | ListOf


# -- leaf kinds ---------------------------------------------------------------------------------

def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: int, default: Any = REQUIRED) -> Field:
    """An int (never a bool) of at least `minimum`."""
    expected = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
    return Field(expected, lambda value: is_int(value) and value >= minimum, default)


def number(default: Any = REQUIRED, *, low: float | None = 0.0, low_open: bool = False,
           high: float | None = None, high_open: bool = True) -> Field:
    """A finite float (ints accepted and converted) within optional bounds."""
    if high is not None:
        expected = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is None:
        expected = "a number"
    elif low == 0:
        expected = "a positive number" if low_open else "a non-negative number"
    else:
        expected = f"a number {'>' if low_open else '>='} {low:g}"

    def accepts(value: Any) -> bool:
        if not is_number(value):
            return False
        above = low is None or (value > low if low_open else value >= low)
        below = high is None or (value < high if high_open else value <= high)
        return above and below

    return Field(expected, accepts, default, float)


def choice(*options: Any, default: Any = REQUIRED) -> Field:
    """One of a few values, compared with their type (so `true` is not `1`)."""
    expected = "one of " + ", ".join(str(option) for option in options)
    return Field(expected, lambda value: any(type(value) is type(option) and value == option
                                             for option in options), default)


def boolean(default: bool) -> Field:
    """A real YAML boolean: the string 'yes' is not one."""
    return Field("true or false", lambda value: isinstance(value, bool), default)


def text(default: Any = REQUIRED, pattern: str | None = None, expected: str = "a non-empty string") -> Field:
    matcher = re.compile(pattern) if pattern else None
    return Field(expected, lambda value: isinstance(value, str) and (
        bool(matcher.fullmatch(value)) if matcher else bool(value.strip())), default)


def variants(tag: str, default: Any, common: dict[str, Node], **options: Section) -> Variants:
    """Options sharing a tag field (with `default`) and `common` settings, each adding its own."""
    tag_field = choice(*options, default=default)
    return Variants(tag, {name: Section({tag: tag_field, **common, **option.fields}, rules=option.rules)
                          for name, option in options.items()})


_PLUGIN_FORM = re.compile(r"(?:.+\.py|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):[A-Za-z_]\w*")


def plugin(name: str) -> Field:
    """A user's code: `FILE.py:NAME` (a file, relative to the config file's directory unless
    absolute; `ps.config` makes it absolute) or `package.module:NAME` (an importable module)."""
    return Field(f"FILE.py:{name} or package.module:{name}",
                 lambda value: isinstance(value, str) and bool(_PLUGIN_FORM.fullmatch(value.strip())),
                 convert=str.strip)


def factory(builtin: str, fields: dict[str, Node], why: str) -> Section:
    """A section naming a user's factory: its other keys are the factory's keyword arguments."""
    return Section(fields, free_form=True, rules=(
        Rule(builtin, lambda section: builtin not in section, f"no {builtin} with factory ({why})"),))
