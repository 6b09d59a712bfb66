"""A user's own code, named in the job config: `FILE.py:NAME` or `package.module:NAME`.

A file is imported by its path under a private module name, `downpour_user.<stem>_<hash of
the path>`: its directory is never put on `sys.path`, so nothing in it (a `model.py`, a
`ps.py`) can shadow a module of ours or of anyone else, and every process that loads the same
path gets the same module name (pickling, logging). A file's own imports see the usual
`sys.path`; code spread over several modules is named as an importable package instead
(`mynets.vision:build`, installed or on `PYTHONPATH`). The config holds the file's absolute
path (`ps.config` makes it so), and every role (coordinator, workers, evaluator, the CLI's
verbs) loads it from there: on other hosts the file must be at the same path (as in a
container image), or be a module. Shards never load it: they need only names and shapes.

Whatever goes wrong in a user's code (a syntax error, an exception at import or in the call,
a missing name, a wrong argument or return value) becomes one `PluginError` whose message
names the file and the line: the last line of the user's code in the traceback, else the
line where the function is defined. Modules are loaded once per process (a file again when it
has changed on disk since).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import linecache
import logging
import os
import random
import re
import sys
import traceback
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from downpour.model import nn
from downpour.ps.config import split_plugin

log = logging.getLogger(__name__)

PACKAGE = "downpour_user"
_modules: dict[str, tuple[types.ModuleType, Callable[[str], bool], int]] = {}  # target: module, is_user, mtime


class PluginError(Exception):
    """A user's plug-in failed; the message names its file and line."""


def load(ref: str, setting: str) -> Callable:
    """The function `ref` names (`setting`, such as `model.factory`, says where it was named)."""
    target, name, is_file = split_plugin(ref)
    module = _module(target, is_file, setting)[0]
    if not hasattr(module, name):
        defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                         and getattr(v, "__module__", None) == module.__name__)
        raise PluginError(f"{setting}: {_file_of(module)} defines no {name!r} "
                          f"(it defines: {', '.join(defined) or 'nothing callable'})")
    function = getattr(module, name)
    if not callable(function):
        raise PluginError(f"{setting}: {name} in {_file_of(module)} is a {type(function).__name__}, not a function")
    return function


def call(function: Callable, ref: str, setting: str, *args: Any, **kwargs: Any) -> Any:
    """`function(*args, **kwargs)`, its arguments checked against its signature first; an
    exception it raises becomes a `PluginError` at the user's line."""
    _check_arguments(function, setting, len(args), kwargs)
    try:
        return function(*args, **kwargs)
    except Exception as exc:
        raise PluginError(f"{setting} {_name(function)}: {describe(exc, _user_files(ref))}") from exc


def where(function: Callable) -> str:
    """`FILE, line N` of a function's definition: what a wrong return value is blamed on."""
    target = inspect.unwrap(function)
    code = getattr(target, "__code__", None)
    if code is not None:
        return f"{code.co_filename}, line {code.co_firstlineno}"
    try:  # a class
        return f"{inspect.getsourcefile(target)}, line {inspect.getsourcelines(target)[1]}"
    except (TypeError, OSError):
        return repr(function)


def describe(exc: BaseException, is_user: Callable[[str], bool]) -> str:
    """`FILE, line N, in FUNC: Type: message` and the line's text, at the last frame of the
    user's own code in the traceback (or the last frame of all, when it has none)."""
    if isinstance(exc, SyntaxError) and exc.filename:
        text = (exc.text or "").strip()
        return f"{exc.filename}, line {exc.lineno}: SyntaxError: {exc.msg}" + (f"\n    {text}" if text else "")
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if is_user(f.filename)] or frames[-1:]
    head = f"{type(exc).__name__}: {exc}"
    if not mine:
        return head
    frame = mine[-1]
    text = (linecache.getline(frame.filename, frame.lineno) or "").strip()
    return f"{frame.filename}, line {frame.lineno}, in {frame.name}: {head}" + (f"\n    {text}" if text else "")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed the engine's generator and NumPy's and Python's global ones for a factory call, so
    that every role builds the same model and data; the global ones are restored after."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    nn.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def _module(target: str, is_file: bool, setting: str) -> tuple[types.ModuleType, Callable[[str], bool], int]:
    """The module, imported once per process (a file again when it has changed since: a
    notebook that edits it and trains again gets the new code)."""
    stamp = _mtime(target) if is_file else 0
    if target not in _modules or _modules[target][2] != stamp:
        module = _import_file(target, setting) if is_file else _import_module(target, setting)
        _modules[target] = module, _user_files(f"{target}:_"), stamp
        log.info("loaded %s (named by %s)", _file_of(module), setting)
    return _modules[target]


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def _import_file(path: str, setting: str) -> types.ModuleType:
    if not os.path.isfile(path):
        raise PluginError(f"{setting}: {path}: no such file (a relative path is taken from the config file's "
                          "directory; on another host the file must be at this same absolute path)")
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE, "The private namespace of users' plug-in files.")
        package.__path__ = []
        sys.modules[PACKAGE] = package
    stem = re.sub(r"\W", "_", os.path.basename(path)[:-3])
    name = f"{PACKAGE}.{stem}_{hashlib.sha1(path.encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[name]
        raise PluginError(f"{setting}: cannot import {path}: {describe(exc, _user_files(path + ':_'))}") from exc
    return module


def _import_module(name: str, setting: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise PluginError(f"{setting}: no module named {exc.name!r} (a module must be importable: installed, "
                              "or on PYTHONPATH; name a file as FILE.py:NAME)") from exc
        raise PluginError(f"{setting}: cannot import {name}: {describe(exc, _user_files(name + ':_'))}") from exc
    except (Exception, SystemExit) as exc:
        raise PluginError(f"{setting}: cannot import {name}: {describe(exc, _user_files(name + ':_'))}") from exc


def _user_files(ref: str) -> Callable[[str], bool]:
    """Which source files are the user's: the file, or the files of the module's top package."""
    target, _, is_file = split_plugin(ref)
    if target in _modules:
        return _modules[target][1]
    if is_file:
        return lambda filename: filename == target
    try:
        spec = importlib.util.find_spec(target.partition(".")[0])
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return lambda filename: False
    if spec.submodule_search_locations:
        roots = tuple(os.path.join(p, "") for p in spec.submodule_search_locations)
        return lambda filename: filename.startswith(roots)
    return lambda filename: filename == spec.origin


def _name(function: Callable) -> str:
    return getattr(function, "__qualname__", None) or type(function).__name__


def _file_of(module: types.ModuleType) -> str:
    return getattr(module, "__file__", None) or module.__name__


def _check_arguments(function: Callable, setting: str, positional: int, kwargs: dict) -> None:
    """The call's arguments against the function's parameters: an unknown key, a missing one
    or too many positional arguments is named, with where the function is and what it takes."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return
    params = list(signature.parameters.values())
    by_position = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if positional > len(by_position) and not any(p.kind is p.VAR_POSITIONAL for p in params):
        raise PluginError(f"{setting}: {_name(function)} ({where(function)}) must take {positional} "
                          f"arguments; it takes {len(by_position)}")
    keywords = [p for p in params[positional:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes = ", ".join(p.name for p in keywords) or "nothing"
    section = setting.rpartition(".")[0] or setting
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        unknown = [key for key in kwargs if key not in {p.name for p in keywords}]
        if unknown:
            raise PluginError(f"{section}.{unknown[0]}: not a parameter of {_name(function)} "
                              f"({where(function)}; it takes: {takes})")
    missing = [p.name for p in keywords if p.default is p.empty and p.name not in kwargs]
    if missing:
        raise PluginError(f"{section}: {_name(function)} ({where(function)}) needs "
                          + ", ".join(f"{section}.{name}" for name in missing))
