"""The layering rules of shared/STYLE.md, checked by reading every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "csce513msg"
IO_MODULES = {"socket", "select", "selectors", "ssl", "threading", "asyncio", "time", "sqlite3"}
LAYERS = ("protocol", "hub", "store", "crypto", "client", "backends", "cli")

# layer -> (our layers it may import, standard modules it must not import)
RULES: dict[str, tuple[set[str], set[str]]] = {
    "protocol": ({"protocol"}, IO_MODULES),
    "hub": ({"hub", "protocol", "store"}, IO_MODULES),
    "store": ({"store"}, IO_MODULES - {"sqlite3", "threading", "time"}),
    "crypto": ({"crypto"}, set()),
    "client": ({"client", "protocol", "crypto"}, set()),
    "backends": ({"backends", "hub"}, set()),  # never protocol: a backend never sees a message
    "cli": (set(LAYERS), set()),
}


def imports_of(path: Path, root: Path = PACKAGE) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in ``path``, a module of the package ``root``."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(root.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((name, node.lineno))
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def layer_problems(path: Path, root: Path = PACKAGE) -> list[str]:
    """What in the module ``path`` (of the package ``root``) breaks its layer's rules."""
    parts = path.relative_to(root).parts
    layer = parts[0] if len(parts) > 1 else None
    problems = []
    for name, line in imports_of(path, root):
        top = name.split(".")[0]
        if top == "typer" and layer != "cli":
            problems.append(f"line {line}: typer outside cli/")
        if layer is None:
            continue
        allowed, forbidden = RULES[layer]
        if top in forbidden:
            problems.append(f"line {line}: {layer}/ may not import {name}")
        if top == "csce513msg":
            target = name.split(".")[1] if "." in name else ""
            if target in LAYERS and target not in allowed:
                problems.append(f"line {line}: {layer}/ may not import {name}")
    return problems


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_respects_its_layer(path: Path) -> None:
    problems = layer_problems(path)
    assert not problems, f"{path.relative_to(PACKAGE)}: " + "; ".join(problems)


def test_the_checker_catches_a_violation(tmp_path: Path) -> None:
    """A package of our name in a temporary directory (the real one is never written to):
    hub/ importing an I/O module and, relatively, backends/; and a module that breaks nothing."""
    root = tmp_path / "csce513msg"
    (root / "hub").mkdir(parents=True)
    bad = root / "hub" / "_layering_probe.py"
    bad.write_text("import socket\nfrom ..backends import load\n")
    good = root / "hub" / "_fine.py"
    good.write_text("import dataclasses\nfrom ..protocol import encode\nfrom .engine import Engine\n")
    assert layer_problems(bad, root) == [
        "line 1: hub/ may not import socket",
        "line 2: hub/ may not import csce513msg.backends",
    ]
    assert layer_problems(good, root) == []


# ---- the readiness backends read as lessons --------------------------------------------

STRATEGIES = {"select_backend": "select", "poll_backend": "poll", "epoll_backend": "poll"}


def calls_in(path: Path) -> set[str]:
    """The names of the methods and functions ``path`` calls (``sock.recv(...)``: recv)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


@pytest.mark.parametrize("module", sorted(STRATEGIES))
def test_each_strategy_module_shows_its_whole_cycle_of_system_calls(module: str) -> None:
    """A student reading one strategy module sees the wait, accept, recv, send with its
    partial write, and the change of interest that follows: none of it hides in driver.py."""
    calls = calls_in(PACKAGE / "backends" / f"{module}.py")
    cycle = {STRATEGIES[module], "accept", "recv", "send", "sent", "watch"}
    assert cycle <= calls, f"{module} lacks {sorted(cycle - calls)}"


def test_the_driver_keeps_books_and_moves_no_data() -> None:
    calls = calls_in(PACKAGE / "backends" / "driver.py")
    assert not calls & {"recv", "send", "sendall", "accept", "select", "poll", "register", "modify"}
