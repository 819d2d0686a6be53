"""The layers hold: the protocol cores import no config, store, policy, pydantic, SQLAlchemy,
aiohttp or asyncio, and the web layer has no import circle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "ramboot"
CORES = sorted(f"ramboot.proto.{p.stem}" for p in (SRC / "proto").glob("*.py") if p.stem != "__init__")
FORBIDDEN = ("ramboot.config", "ramboot.inventory", "ramboot.policy", "ramboot.server", "pydantic", "sqlalchemy",
             "aiohttp", "asyncio")


@pytest.mark.parametrize("module", CORES)
def test_core_imports_nothing_of_the_outer_layers(module):
    """In a fresh interpreter, importing the core loads none of the outer layers."""
    code = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out)
    bad = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
    assert bad == [], f"{module} loads {bad}"


def test_every_proto_module_is_checked():
    assert {"ramboot.proto.dhcp_codec", "ramboot.proto.dhcp_core", "ramboot.proto.tftp_core",
            "ramboot.proto.pxe", "ramboot.proto.http_conditional"} <= set(CORES)


def _imports(path: Path) -> set[str]:
    """The ramboot modules a file imports (absolute names), from its syntax tree."""
    pkg = "ramboot." + ".".join(path.relative_to(SRC).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.startswith("ramboot"):
                out.add(base)
                out.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("ramboot"))
    return out


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle in a module graph, or None (depth-first, grey/black marks)."""
    mark: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> list[str] | None:
        mark[m] = "grey"
        for n in sorted(graph.get(m, ())):
            if mark.get(n) == "grey":
                return path[path.index(n):] + [n]
            if n not in mark and (found := visit(n, path + [n])):
                return found
        mark[m] = "black"
        return None

    for m in sorted(graph):
        if m not in mark and (found := visit(m, [m])):
            return found
    return None


def test_cycle_finder_finds_one():
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    """Imports anywhere in a file count, those hidden in a function too."""
    mods = {"ramboot." + ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
            for p in SRC.rglob("*.py") if "migrations" not in p.parts}
    graph = {m: {i for i in _imports(p) if i in mods and i != m and not m.startswith(i + ".")}
             for m, p in mods.items()}
    assert import_cycle(graph) is None, f"import cycle: {' -> '.join(import_cycle(graph) or [])}"
