"""Who may import whom (DESIGN.md), checked on every import of every installed module.

Modules go by their installed names (`downpour.model.nn`, as pyproject.toml's package-dir maps
the folders), absolute and relative imports alike, also those inside functions. The layers:

    the face: downpour/ (the API) and downpour.ps.cli   -> everything
    downpour.ps.launcher                                -> ps (starts roles by command line)
    downpour.worker   -> its own modules, the engine, and the client side of ps
    the server side of ps (shard, coordinator, store, consistency, replication)
                      -> model.optim, ps shared modules (never the worker, never ps.client)
    ps shared modules (what both sides import) and the client package ps.client
                      -> model.optim, ps shared modules (the client package: also itself)
    downpour.model    -> nothing of ours; numpy (numba, cupy optional) besides the standard library

Only the face may reach everything; nothing else imports the face or the launcher.
"""
from __future__ import annotations

import ast
import pathlib
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

SERVER_SIDE = ("downpour.ps.shard", "downpour.ps.coordinator", "downpour.ps.store", "downpour.ps.consistency",
               "downpour.ps.replication", "downpour.ps.backups", "downpour.ps.holdings", "downpour.ps.membership",
               "downpour.ps.ranges", "downpour.ps.incoming", "downpour.ps.dedupe")
# The client side of ps, which a worker may use: the client package, and the modules both
# sides share (the control line, heartbeats, fault injection, the wire, protocol constants,
# spans, the config and its schema (table and node types), the layout).
CLIENT_SIDE = ("downpour.ps.client", "downpour.ps.control", "downpour.ps.heartbeat", "downpour.ps.faults",
               "downpour.ps.wire", "downpour.ps.protocol", "downpour.ps.spans", "downpour.ps.config",
               "downpour.ps.config_schema", "downpour.ps.schema_nodes", "downpour.ps.layout")
ENGINE_DEPENDENCIES = {"numpy", "numba", "llvmlite", "cupy", "cupyx"}  # llvmlite ships with numba, cupyx with cupy

# Crossings known today, each to be deleted once the branch named removes it (a test below fails
# when an entry no longer crosses, so none outlives its fix).
KNOWN_CROSSINGS: set[tuple[str, str]] = set()


def within(name: str, *packages: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def layer(name: str) -> str:
    """The layer of an installed module (or of a name imported from one)."""
    if not within(name, "downpour.model", "downpour.ps", "downpour.worker") or within(name, "downpour.ps.cli"):
        return "face"
    if within(name, "downpour.ps.launcher"):
        return "launcher"
    if within(name, *SERVER_SIDE):
        return "server"
    if within(name, "downpour.ps.client"):
        return "client"
    if within(name, "downpour.ps"):
        return "ps shared"
    return "worker" if within(name, "downpour.worker") else "model"


def crossing(importer: str, imported: str) -> str | None:
    """Why `importer` may not import `imported` (both installed names of ours), or None if it may."""
    mine, theirs = layer(importer), layer(imported)
    if mine == "face" or theirs == mine:
        return None
    if theirs in ("face", "launcher"):
        return "only the face reaches the face; the launcher starts roles by command line, nobody imports it"
    if mine == "model":
        return "the engine imports nothing of ours"
    if mine == "worker":
        return None if theirs == "model" or within(imported, *CLIENT_SIDE) else "a worker uses only the client side of ps"
    if theirs == "worker":
        return "ps never imports the worker"
    if mine == "launcher":
        return None if within(imported, "downpour.ps") else "the launcher needs only ps"
    if theirs == "model":
        return None if within(imported, "downpour.model.optim") else "ps needs only model.optim of the engine"
    if theirs == "client":
        return "the server side and the modules both sides share never import the client package"
    if theirs == "server":
        return "only the server side imports the server side"
    return None


def installed_modules() -> dict[str, pathlib.Path]:
    """Every module of the distribution by its installed name, found through package-dir."""
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    found = {}
    for package, folder in package_dir.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            parts = [*package.split("."), *path.relative_to(base).with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = installed_modules()


def imports(module: str, path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, name) of every import in the module: `from X import a` names X.a, and relative
    imports are resolved against the module's installed package."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            names += [(node.lineno, f"{base}.{alias.name}" if base.startswith("downpour") else base)
                      for alias in node.names]
    return names


def known(module: str, name: str) -> bool:
    return any(module == m and within(name, target) for m, target in KNOWN_CROSSINGS)


def crossings(module: str) -> list[str]:
    found = []
    for line, name in imports(module, MODULES[module]):
        why = within(name, "downpour") and not known(module, name) and crossing(module, name)
        if why:
            found.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {module} imports {name}: {why}")
    return found


def test_the_modules_are_found_by_their_installed_names():
    assert {"downpour", "downpour.model.nn", "downpour.ps.client.data", "downpour.worker.datasets.text",
            "downpour.ps.shard"} <= MODULES.keys()
    assert MODULES["downpour.model.nn"] == ROOT / "model" / "nn" / "__init__.py"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_import_keeps_to_the_layers(module):
    found = crossings(module)
    assert not found, "\n".join(found)


def test_the_engine_needs_nothing_but_numpy_and_optionally_numba_and_cupy_besides_the_standard_library():
    outside = {f"{m}: {name}" for m in MODULES if layer(m) == "model" for _, name in imports(m, MODULES[m])
               if not within(name, "downpour")
               and name.split(".")[0] not in sys.stdlib_module_names | ENGINE_DEPENDENCIES}
    assert not outside


def test_every_known_crossing_is_still_there_so_its_entry_is_deleted_with_its_fix():
    for module, target in KNOWN_CROSSINGS:
        assert crossing(module, target), (module, target)
        assert any(within(name, target) for _, name in imports(module, MODULES[module])), (module, target)


@pytest.mark.parametrize("importer, imported, allowed", [
    ("downpour.model.tensor", "downpour.model.backend", True),
    ("downpour.model.kernels", "downpour.ps.protocol", False),
    ("downpour.worker.loop", "downpour.ps.faults", True),
    ("downpour.worker.loop", "downpour.ps.protocol", True),
    ("downpour.worker.loop", "downpour.ps.store", False),
    ("downpour.worker.loop", "downpour.ps.checkpoint", False),
    ("downpour.worker.loop", "downpour.ps.cli", False),
    ("downpour.ps.shard", "downpour.ps.client.data", False),
    ("downpour.ps.shard", "downpour.ps.store", True),
    ("downpour.ps.store", "downpour.model.optim.rules", True),
    ("downpour.ps.store", "downpour.model.nn", False),
    ("downpour.ps.checkpoint", "downpour.worker.models", False),
    ("downpour.ps.wire", "downpour.ps.client", False),
    ("downpour.ps.client.data", "downpour.ps.shm", True),
    ("downpour.ps.client.data", "downpour.ps.coordinator", False),
    ("downpour.ps.launcher", "downpour.ps.client", True),
    ("downpour.ps.launcher", "downpour.worker.loop", False),
    ("downpour.ps.coordinator", "downpour.ps.launcher", False),
    ("downpour.ps.cli", "downpour.worker.loop", True),
    ("downpour", "downpour.ps.launcher", True),
    ("downpour.worker.job", "downpour", False),
])
def test_the_rules_are_those_of_the_design(importer, imported, allowed):
    assert (crossing(importer, imported) is None) == allowed
