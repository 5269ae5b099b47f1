"""Import hygiene: no cycles, nothing imports the CLI, lower layers never import upper ones.

Modules are found on disk, walking every subpackage, so new ones are covered as they land.
The layers, lowest first, are the folders of ``mptorrent/`` (docs/architecture.md):

    base     errors, messages, mp          (top-level modules every layer may use)
    proto    sans-IO codecs                (bencode, metainfo, wire, tracker)
    policy   decisions without I/O         (picker, download policy)
    disk     storage, hashing pools
    netio    sockets around the codecs
    worker   the worker process
    engine   coordinator, pool, seeder
    cli      the command line and demo

A module may import its own layer and any layer below it, never one above.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import mptorrent

PKG = Path(mptorrent.__file__).parent
LAYERS = ["base", "proto", "policy", "disk", "netio", "worker", "engine", "cli"]


def dotted(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


MODULES = sorted(dotted(p) for p in PKG.rglob("*.py") if dotted(p))


def layer_of(module: str) -> str:
    """The layer a dotted module name (relative to mptorrent) lives in."""
    head = module.split(".")[0]
    if head == "__main__":  # ``python -m mptorrent`` is the command line's front door
        return "cli"
    return head if head in LAYERS else "base"


def resolve(module: str, node: ast.ImportFrom) -> list[str]:
    """The mptorrent modules (relative dotted names) an ``ImportFrom`` node names."""
    if node.level:
        pkg = module.split(".")
        # a module's package is its name minus the last part; __init__ files are packages
        is_pkg = (PKG / module.replace(".", "/") / "__init__.py").exists()
        base = pkg if is_pkg else pkg[:-1]
        base = base[: len(base) - (node.level - 1)]
        if node.module:
            base = base + node.module.split(".")
    elif node.module and node.module.split(".")[0] == "mptorrent":
        base = node.module.split(".")[1:]
    else:
        return []
    found = []
    for alias in node.names:
        cand = [*base, alias.name]
        if (PKG.joinpath(*cand).with_suffix(".py")).exists() or (
            PKG.joinpath(*cand) / "__init__.py"
        ).exists():
            found.append(".".join(cand))
        elif base:
            found.append(".".join(base))
    return found


def project_imports(module: str) -> set[str]:
    """Dotted names of the mptorrent modules ``module`` imports anywhere (lazy ones too)."""
    path = PKG / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PKG / module.replace(".", "/") / "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "mptorrent" and len(parts) > 1:
                    found.add(".".join(parts[1:]))
        elif isinstance(node, ast.ImportFrom):
            found.update(resolve(module, node))
    return found


@pytest.fixture(scope="module")
def lone_imports() -> dict[str, subprocess.CompletedProcess[str]]:
    """Import each module in a fresh interpreter of its own, all at once to save time."""
    procs = {
        m: subprocess.Popen(
            [sys.executable, "-c", f"import mptorrent.{m}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for m in MODULES
    }
    done = {}
    for m, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        done[m] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


@pytest.mark.parametrize("module", MODULES)
def test_imports_alone(
    module: str, lone_imports: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    """A fresh interpreter per module, so an import cycle cannot hide behind import order."""
    proc = lone_imports[module]
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("module", [m for m in MODULES if layer_of(m) != "cli"])
def test_nothing_imports_cli(module: str) -> None:
    assert not {m for m in project_imports(module) if layer_of(m) == "cli"}


@pytest.mark.parametrize("module", MODULES)
def test_lower_layers_do_not_import_upper(module: str) -> None:
    rank = LAYERS.index(layer_of(module))
    above = {m for m in project_imports(module) if LAYERS.index(layer_of(m)) > rank}
    assert not above, f"{module} ({layer_of(module)}) imports upper layers: {sorted(above)}"


def test_every_folder_is_a_known_layer() -> None:
    # A new folder must be placed in LAYERS (and docs/architecture.md), not slip past the test.
    folders = {p.relative_to(PKG).parts[0] for p in PKG.rglob("__init__.py") if p.parent != PKG}
    assert folders <= set(LAYERS), folders - set(LAYERS)


def test_import_parser_sees_every_form() -> None:
    # The checks above are only as good as project_imports; pin its behaviour on cli.main,
    # which imports in all the styles we use (plain, from-package, lazy in a function).
    found = project_imports("cli.main")
    assert {"errors", "proto.metainfo", "disk.checker", "disk.storage", "disk.create"} <= found
    assert project_imports("__main__") == {"cli.main"}


def test_the_layer_check_catches_an_upward_import(tmp_path: Path) -> None:
    # A planted upward import (proto -> engine) must be reported, or the check is blind.
    tree = ast.parse("from mptorrent.engine import coordinator\nfrom . import wire\n")
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.update(resolve("proto.bencode", node))
    assert names == {"engine.coordinator", "proto.wire"}
    assert LAYERS.index(layer_of("engine.coordinator")) > LAYERS.index(layer_of("proto.bencode"))
