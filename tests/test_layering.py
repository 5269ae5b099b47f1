"""Import hygiene: no cycles, nothing imports the CLI, lower layers never import upper ones.

Modules are found on disk, so new ones are covered as they land (style.md §4).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import mptorrent

PKG = Path(mptorrent.__file__).parent
MODULES = sorted(p.stem for p in PKG.glob("*.py") if p.stem != "__init__")

LOWER = ["errors", "bencode", "metainfo", "messages", "storage", "wire", "tracker"]
UPPER = {"worker", "coordinator", "seeder", "cli"}


def project_imports(module: str) -> set[str]:
    """Names of the mptorrent modules ``module`` imports anywhere (lazy imports included)."""
    tree = ast.parse((PKG / f"{module}.py").read_text(), filename=f"{module}.py")
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "mptorrent" and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = [] if node.module is None else node.module.split(".")
            elif node.module and node.module.split(".")[0] == "mptorrent":
                base = node.module.split(".")[1:]
            else:
                continue
            if base:
                found.add(base[0])
            else:  # from mptorrent import x / from . import x: x may be a module
                found.update(a.name for a in node.names if (PKG / f"{a.name}.py").exists())
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


@pytest.mark.parametrize("module", [m for m in MODULES if m not in ("cli", "__main__")])
def test_nothing_imports_cli(module: str) -> None:
    assert "cli" not in project_imports(module)


@pytest.mark.parametrize("module", LOWER)
def test_lower_layers_do_not_import_upper(module: str) -> None:
    if not (PKG / f"{module}.py").exists():
        pytest.skip(f"mptorrent/{module}.py does not exist yet")
    assert not project_imports(module) & UPPER


def test_import_parser_sees_every_form() -> None:
    # The checks above are only as good as project_imports; pin its behaviour on cli.py,
    # which imports in all the styles we use (plain, from-package, lazy in a function).
    found = project_imports("cli")
    assert {"errors", "metainfo", "checker", "storage", "create"} <= found
    assert project_imports("__main__") == {"cli"}
