"""The fence around aiohttp's private state (edge.aiohttp_internals).

One test per private name the edge relies on, each failing with the name when an aiohttp
release drops or renames it; pyproject.toml admits only the releases these pass on. Two
more keep the fence honest: every private name the module touches is declared, and no
other edge module touches aiohttp's private state.
"""

from __future__ import annotations

import ast
from pathlib import Path

import aiohttp
import pytest

from edge import aiohttp_internals

EDGE = Path(aiohttp_internals.__file__).parent
DECLARED = [(owner, name) for owner, names in aiohttp_internals.PRIVATE.items() for name in names]


@pytest.mark.parametrize(("owner", "name"), DECLARED, ids=[f"{o}.{n}" for o, n in DECLARED])
async def test_private_name_exists_in_installed_aiohttp(owner: str, name: str) -> None:
    instances = aiohttp_internals._instances()
    instance = instances[owner]
    connector = instances["TCPConnector"]
    assert isinstance(connector, aiohttp.TCPConnector)
    await connector.close()
    assert hasattr(instance, name), (
        f"aiohttp {aiohttp.__version__}: {owner}.{name} is gone; edge/aiohttp_internals.py "
        "must follow the rename before the aiohttp pin in pyproject.toml admits this release"
    )


async def test_check_version_passes_on_the_installed_aiohttp() -> None:
    assert await aiohttp_internals.missing() == []
    await aiohttp_internals.check_version()


def _own_private_names(tree: ast.Module) -> set[str]:
    """Private names the module defines itself: its functions and the attributes and
    methods its own classes set."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "self"
                    and isinstance(node, ast.AnnAssign | ast.Assign)
                    and _in_own_init(tree, node)
                ):
                    own.add(target.attr)
    return own


def _in_own_init(tree: ast.Module, node: ast.AST) -> bool:
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef) and func.name == "__init__":
            if any(child is node for child in ast.walk(func)):
                return True
    return False


def _private_attributes(tree: ast.Module) -> set[str]:
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    }


def test_every_private_name_the_fence_touches_is_declared() -> None:
    tree = ast.parse((EDGE / "aiohttp_internals.py").read_text())
    declared = {name for _, name in DECLARED}
    undeclared = _private_attributes(tree) - _own_private_names(tree) - declared
    assert not undeclared, f"declare these in aiohttp_internals.PRIVATE: {sorted(undeclared)}"


def test_no_other_edge_module_touches_aiohttp_private_state() -> None:
    declared = {name for _, name in DECLARED}
    internal_modules = ("aiohttp.web_protocol", "aiohttp.client_proto", "aiohttp.connector")
    offenders = []
    for path in sorted(EDGE.glob("*.py")):
        if path.name == "aiohttp_internals.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in internal_modules:
                offenders.append(f"{path.name}: imports {node.module}")
        own = _own_private_names(tree)
        for name in sorted((_private_attributes(tree) & declared) - own):
            offenders.append(f"{path.name}: .{name}")
    assert not offenders, offenders
