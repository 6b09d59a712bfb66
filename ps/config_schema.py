"""The job config's schema: one declarative table of every setting, its check and its default.

A job spec in the DistBelief / Project Adam style is a small tree of sections. Each node of the
tree knows what it accepts, the phrase that names it in an error, and its default, so the table
at the bottom of this file is both the validator and the reference of every setting.
`JOB.resolve(raw, "")` turns a raw mapping into the full config or raises `ConfigError`.
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

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: int, default: Any = REQUIRED) -> Field:
    """An int (never a bool) of at least `minimum`."""
    expected = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
    return Field(expected, lambda value: _is_int(value) and value >= minimum, default)


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
        if not _is_number(value):
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


# -- the table ----------------------------------------------------------------------------------

NAMED_DATASETS = ("digits", "fashion_mnist", "mnist1d", "text:jargon", "text:pydoc", "fortunes_langid",
                  "fortunes_topic")

DATASET = Field("one of " + ", ".join(NAMED_DATASETS) + ", or npz:PATH",
                lambda value: isinstance(value, str) and (
                    value in NAMED_DATASETS or (value.startswith("npz:") and bool(value[4:].strip()))))

BETAS = Field("two numbers in [0, 1)",
              lambda value: isinstance(value, (list, tuple)) and len(value) == 2
              and all(_is_number(beta) and 0 <= beta < 1 for beta in value),
              [0.9, 0.999], lambda value: [float(beta) for beta in value])


def _adam(weight_decay: float) -> Section:
    return Section({"betas": BETAS, "eps": number(1e-8, low_open=True),
                    "weight_decay": number(weight_decay), "amsgrad": boolean(False)})


_SGD = Section({"momentum": number(0.0, high=1.0), "dampening": number(0.0),
                "nesterov": boolean(False), "weight_decay": number(0.0)},
               rules=(Rule("nesterov", lambda o: not o["nesterov"] or (o["momentum"] > 0 and o["dampening"] == 0),
                           "false unless momentum > 0 and dampening is 0"),))
_ADAGRAD = Section({"lr_decay": number(0.0), "weight_decay": number(0.0),
                    "initial_accumulator_value": number(0.0), "eps": number(1e-10, low_open=True)})
_RATE = {"lr": number(0.01, low_open=True),
         # the rate over the job's planned updates (model/optim/schedule.py)
         "schedule": choice("constant", "linear", "cosine", default="constant"),
         "final_lr": number(0.0)}
# FTRL-proximal (model/optim/sparse_rules.py) has no global rate: alpha sets each coordinate's.
_FTRL = Section({"alpha": number(0.1, low_open=True), "beta": number(1.0), "l1": number(0.0), "l2": number(0.0)})

OPTIMIZER = variants(
    "type", "sgd", _RATE,
    sgd=_SGD, adagrad=_ADAGRAD, adam=_adam(weight_decay=0.0), adamw=_adam(weight_decay=0.01),
    # lazy: a push by rows steps only its rows (model/optim/sparse_rules.py)
    lazy_sgd=_SGD, lazy_adagrad=_ADAGRAD, lazy_adam=_adam(weight_decay=0.0), lazy_adamw=_adam(weight_decay=0.01),
    ftrl=_FTRL,
)
OPTIMIZER.options["ftrl"] = Section({key: node for key, node in OPTIMIZER.options["ftrl"].fields.items()
                                     if key not in _RATE})

_ROLE = choice("coordinator", "shard", "worker")
_FRACTION = number(high=1.0, high_open=False)
_MOMENT = {"at_step": Nullable(integer(0)), "at_seconds": Nullable(number())}
_TARGETING = {"role": Nullable(_ROLE), "rank": Nullable(integer(0)), "op": choice("pull", "push", "any", default="any")}
_ONE_MOMENT = Rule(None, lambda fault: (fault["at_step"] is None) != (fault["at_seconds"] is None),
                   "exactly one of at_step or at_seconds")
_RANK_NEEDS_ROLE = Rule("rank", lambda fault: fault["rank"] is None or fault["role"] is not None,
                        "null unless role is set")


def _message_fault(**fields: Node) -> Section:
    """Faults on messages in flight: aimed at every process, or at one role (and rank), and op."""
    return Section({**fields, **_TARGETING}, rules=(_RANK_NEEDS_ROLE,))


FAULT = variants(
    "kind", REQUIRED, {},
    kill=Section({"role": _ROLE, "rank": integer(0), **_MOMENT}, rules=(_ONE_MOMENT,)),
    delay=_message_fault(seconds=number(), fraction=_FRACTION),
    drop=_message_fault(fraction=_FRACTION),
    duplicate=_message_fault(fraction=_FRACTION),
    corrupt=_message_fault(fraction=_FRACTION),
    partition=Section({"role": _ROLE, "rank": integer(0), **_MOMENT, "seconds": number()}, rules=(_ONE_MOMENT,)),
    nan=Section({"role": choice("worker"), "rank": integer(0), "at_step": integer(0)}),  # a NaN gradient
    # a role answers nothing, heartbeats included, for `seconds`, then goes on (ps/faults.py)
    stall=Section({"role": choice("coordinator", "shard", "worker", "evaluator"), "rank": integer(0), **_MOMENT,
                   "seconds": number(low_open=True)}, rules=(_ONE_MOMENT,)),
)

JOB = Section({
    "name": text(pattern=r"[A-Za-z0-9_.-]+", expected="a name of letters, digits, '_', '.' and '-'"),
    "seed": integer(0, default=0),
    "device": choice("cpu", "cuda", default="cpu"),
    "workers": Section({
        "count": integer(0, default=2),  # built-in workers, started by the launcher
        # workers the job waits for that a user runs (downpour.connect(..., worker=True)); at most
        # protocol.MAX_EXTRA_WORKERS, the ranks a shard accepts beyond workers.count
        "external": Field("an integer in [0, 64]", lambda value: _is_int(value) and 0 <= value <= 64, 0),
        "restart": choice("never", "on-failure", default="never"),
        "max_restarts": integer(0, default=3),
    }, shorthand="count", rules=(
        Rule("count", lambda workers: workers["count"] > 0 or workers["external"] > 0,
             "a positive integer (0 only with workers.external > 0)"),)),
    "shards": Section({
        "count": integer(1, default=1),
        "replication": choice(1, 2, default=1),
        # each shard's memory for weights, update-rule state and backups (ps/layout.py); null: no limit
        "memory_mb": Nullable(number(low_open=True)),
    }, shorthand="count", rules=(
        Rule("replication", lambda shards: shards["replication"] == 1 or shards["count"] >= 2,
             "1 when shards.count is 1 (replication 2 needs at least 2 shards)"),)),
    "consistency": Section({
        "mode": choice("async", "ssp", "bsp", default="async"),
        "staleness": integer(0, default=2),
    }),
    "data": Either("factory", factory("dataset", {  # load(**other keys) -> splits: worker/datasets/custom.py
        "factory": plugin("load"),
        "validation": number(0.0, high=1.0),
        "limit_train": Nullable(integer(1)),
    }, "the factory gives the data"), Section({
        "dataset": DATASET,
        "validation": number(0.0, high=1.0),
        "seq_len": integer(1, default=64),
        "limit_train": Nullable(integer(1)),
        "max_chars": Nullable(integer(1)),
        # sparse data sets: n-grams hashed into `buckets` columns (worker/datasets/hashing.py)
        "features": Section({
            "kind": choice("char", "word", default="char"),
            "n_min": integer(1, default=1),
            "n_max": integer(1, default=4),
            "buckets": integer(1, default=1 << 20),
            "values": choice("l2", "count", "binary", default="l2"),
        }, rules=(Rule("n_max", lambda f: f["n_min"] <= f["n_max"] <= 16,
                       lambda f: f"an integer in [n_min, 16] = [{f['n_min']}, 16]"),)),
    })),
    "model": Either("factory", factory("type", {"factory": plugin("build")}, "the factory builds the model"),
                    Section({"type": text()}, free_form=True)),  # build(**other keys) -> nn.Module
    "loss": Nullable(plugin("loss")),  # loss(output, target) -> 0-d tensor; null: cross-entropy
    "optimizer": OPTIMIZER,
    "train": Section({
        "steps": integer(1, default=1000),
        "batch_size": integer(1, default=32),
        "fetch_every": integer(1, default=1),
        "push_every": integer(1, default=1),
        "overlap": boolean(True),  # async only: the next step computes while the round trip travels
        "clip_norm": Nullable(number(low_open=True)),
        "log_every": integer(1, default=50),
    }),
    "eval": Section({
        "every": integer(0, default=0),
        "early_stopping": Nullable(Section({
            "patience": integer(1, default=5),
            "metric": text("val_loss"),
            "mode": choice("min", "max", default="min"),
        })),
    }),
    "target": Nullable(Section({
        "metric": text(),
        "min": Nullable(number(low=None)),
        "max": Nullable(number(low=None)),
    }, rules=(Rule(None, lambda target: (target["min"] is None) != (target["max"] is None),
                   "exactly one of min or max"),))),
    "cluster": Section({
        "host": text("127.0.0.1"),
        "heartbeat_interval": number(0.5, low_open=True),
        "heartbeat_timeout": number(5.0, low_open=True),
        "startup_timeout": number(60.0, low_open=True),
        "request_timeout": number(30.0, low_open=True),
        "max_message_mb": number(512.0, low_open=True),
        "curve": boolean(False),
        "shared_memory": boolean(True),  # workers and shards on one host share arrays, not copies
    }, rules=(Rule("heartbeat_timeout", lambda c: c["heartbeat_timeout"] > c["heartbeat_interval"],
                   lambda c: f"a number greater than heartbeat_interval ({c['heartbeat_interval']:g})"),)),
    "checkpoint": Section({
        # Each shard overwrites its one checkpoint file (atomically) every this many seconds from
        # the moment it starts serving, which is before training starts: the first checkpoint
        # lands within 30 s of the start, and a crash, a kill -9 or a lost machine costs at most
        # 30 s of training. One write (weights and update-rule state, fsynced) took 11 to 43 ms
        # for the shipped configs' shards (jargon_lstm's 4.2 MB the longest), about 0.1% of the
        # interval. 0: only when the job ends or is stopped, and on `downpour checkpoint`.
        "every_seconds": number(30.0),
    }),
    "compression": Section({  # of pushes, see ps/compression.py
        "codec": choice("none", "fp16", "topk", "onebit", "twobit", "sparse", default="none"),
        "ratio": number(0.01, low_open=True, high=1.0, high_open=False),  # topk: the share kept
        "threshold": number(0.5, low_open=True),                          # twobit: the t of +-t
        "error_feedback": boolean(True),                                  # topk, onebit, twobit
        "rows": boolean(False),  # embedding tables travel by the rows a batch uses (ps/spans.py)
    }, shorthand="codec"),
    "faults": ListOf(FAULT),
}, expected="a mapping of settings")

PLUGIN_SETTINGS = ("model.factory", "data.factory", "loss")  # a user's code: `ps.config` anchors their files
