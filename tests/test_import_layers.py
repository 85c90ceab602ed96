"""The layers, read from the sources: imports only point down (docs/architecture.md).

    web (app/ but the shared modules)      worker (worker/tasks/, celery_app, copyguard)
                 \\                          /
                  shared (settings, db, ORM, repositories, storage, the job kit)
                                   |
                  core (worker/domainstudio/: imports nothing of the others)

The graph holds every import statement, those inside functions too (a lazy import is still
a dependency), from each module of app/ and worker/ to the module it names.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the torch-free layer both sides import
SHARED = {"app", "app.settings", "app.db", "app.models", "app.repositories", "app.storage", "app.errors", "app.logs",
          "app.jobs", "app.leases", "app.progress", "app.packfiles", "app.thumbnails", "app.migrate"}
# the core's modules the web may import: none of them imports torch
CORE_FOR_THE_WEB = {"worker.domainstudio", "worker.domainstudio.config", "worker.domainstudio.errors",
                    "worker.domainstudio.layout", "worker.domainstudio.model_kinds", "worker.domainstudio.demo_words"}


def modules() -> dict[str, Path]:
    found = {}
    for top in ("app", "worker"):
        for path in sorted((ROOT / top).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for target in targets:
                found = resolve(target)
                # a module's own package __init__ runs before it anyway: not an edge
                if found and found != mod and not (mods[found].name == "__init__.py" and mod.startswith(found + ".")):
                    graph[mod].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer(mod: str) -> str:
    if mod == "worker.domainstudio" or mod.startswith("worker.domainstudio."):
        return "core"
    if mod.startswith("worker"):
        return "worker"
    return "shared" if mod in SHARED else "web"


def crossings(graph, source_layer: str, allowed) -> list[str]:
    return sorted(f"{m} -> {t}" for m, targets in graph.items() if layer(m) == source_layer
                  for t in targets if not allowed(t))


def test_the_graph_sees_every_import_also_lazy_ones():
    graph = import_graph()
    assert "worker.domainstudio.checkpoints" in graph["worker.domainstudio.sampling"]  # inside a function
    assert "app.jobs" in graph["worker.celery_app"]
    assert "app.models" in graph["app.repositories"]


def test_no_import_cycle_between_any_two_modules():
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_imports_nothing_of_the_web_the_shared_layer_or_the_worker():
    assert crossings(import_graph(), "core", lambda t: layer(t) == "core") == []


def test_the_shared_layer_imports_neither_the_web_nor_the_worker():
    assert crossings(import_graph(), "shared", lambda t: layer(t) == "shared" or t in CORE_FOR_THE_WEB) == []


def test_the_web_never_imports_the_worker_nor_the_torch_side_of_the_core():
    assert crossings(import_graph(), "web", lambda t: layer(t) in ("web", "shared") or t in CORE_FOR_THE_WEB) == []


def test_the_worker_never_imports_routes_or_web_services():
    assert crossings(import_graph(), "worker", lambda t: layer(t) != "web") == []
