"""The architecture rules of the one run path, checked on the import graph of ``benchmark/``
(imports inside functions included): no import circles, nothing imports upward."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PKG = Path(__file__).resolve().parent.parent / "benchmark"

# (importer prefix, imported prefix): imports that run upward in the layering.
FORBIDDEN = [
    ("benchmark.backends", "benchmark.mitigations"),
    ("benchmark.engine", "benchmark.mitigations"),
    ("benchmark.kinds", "benchmark.mitigations"),
    ("benchmark.data", "benchmark.mitigations"),
    ("benchmark.audits", "benchmark.mitigations"),
    ("benchmark.backends", "benchmark.audits"),
    ("benchmark.audits", "benchmark.backends"),
    ("benchmark.data", "benchmark.backends"),
    ("benchmark.data", "benchmark.kinds"),
    ("benchmark.cards", "benchmark.kinds"),
    ("benchmark.engine", "benchmark.cli"),
    ("benchmark.kinds", "benchmark.boards"),
    ("benchmark.backends", "benchmark.kinds"),
]


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> nx.DiGraph:
    modules = {_module(p): p for p in PKG.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for mod, path in modules.items():
        base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                anchor = ".".join(base[: len(base) - node.level + 1]) if node.level else ""
                modname = ".".join(x for x in (anchor, node.module or "") if x)
                targets = [f"{modname}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                dst = resolve(t)
                # A package's face importing its own submodules is not an edge of the layering.
                if dst and dst != mod and not (path.name == "__init__.py" and dst.startswith(mod + ".")):
                    graph.add_edge(mod, dst)
    return graph


def test_no_import_circles():
    cycles = list(nx.simple_cycles(import_graph()))
    assert cycles == [], f"import circles: {cycles[:5]}"


def test_nothing_imports_upward():
    bad = [(a, b) for a, b in import_graph().edges for src, dst in FORBIDDEN
           if (a == src or a.startswith(src + ".")) and (b == dst or b.startswith(dst + "."))]
    assert bad == [], f"upward imports: {bad}"


def test_one_engine_one_card_discovery_one_backend_protocol():
    graph = import_graph()
    assert not (PKG / "imaging").exists()  # no parallel imaging pipeline
    engines = [m for m in graph if m.rsplit(".", 1)[-1] == "engine"]
    assert engines == ["benchmark.engine"]
    from benchmark.backends.base import Backend
    from benchmark.registry import describe, get

    for name in describe("backends"):
        assert issubclass(get("backends", name), Backend), name
