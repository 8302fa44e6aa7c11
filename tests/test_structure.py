"""The package's structure, tested (not grepped): no import cycles, backends reached only through the seam,
modules of a readable size. grimp sees imports inside functions too."""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest

PACKAGE = "pytest_sglang_tune"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
MAX_LINES = 500
# Modules allowed past MAX_LINES, each with its reason.
LONG_MODULES: dict[str, str] = {
    "flags.py": "the SGLang flag tables' reader, resolver and introspection: one cohesive parser",
}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(PACKAGE, exclude_type_checking_imports=True)


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above can fail: a two-module cycle is found."""
    g = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c"):
        g.add_module(m)
    g.add_import(importer="p.a", imported="p.b")
    g.add_import(importer="p.b", imported="p.a")
    g.add_import(importer="p.c", imported="p.a")
    assert _cycles(g) == [["p.a", "p.b"]]


# the seam: the base class, the registry, and the GPU leases (run-wide bookkeeping the engine keeps, no backend)
SEAM = {f"{PACKAGE}.backends", f"{PACKAGE}.backends.base", f"{PACKAGE}.backends.registry",
        f"{PACKAGE}.backends.leases"}


@pytest.mark.parametrize("importer", ["plugin", "engine", "session", "session_xdist", "items", "points",
                                      "report.run"])
def test_core_reaches_backends_only_through_the_seam(graph: grimp.ImportGraph, importer: str) -> None:
    """plugin, engine and the session import a backend module only through ``backends.base`` and the registry
    (which imports the built-in backends by name, lazily). The local launcher helpers are the one exception:
    the session introspects the local launcher's SGLang to pick the flag table."""
    module = f"{PACKAGE}.{importer}"
    direct = {m for m in graph.find_modules_directly_imported_by(module) if m.startswith(f"{PACKAGE}.backends")}
    allowed = SEAM | ({f"{PACKAGE}.backends.local"} if importer == "session" else set())
    assert direct <= allowed, f"{importer} imports {sorted(direct - allowed)} directly"


def test_registry_imports_no_backend_at_import_time() -> None:
    """The registry names the built-in backends; their modules (docker, kubernetes) load only when made."""
    import ast

    tree = ast.parse((ROOT / "backends" / "registry.py").read_text())
    top = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert not any(m and m.startswith(f"{PACKAGE}.backends.") and m.split(".")[-1] in ("sim", "local", "docker", "ome")
                   for m in top)


def test_modules_stay_readable() -> None:
    too_long = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES and rel not in LONG_MODULES:
            too_long[rel] = n
    assert too_long == {}, f"modules over {MAX_LINES} lines (split them, or add them to LONG_MODULES with a reason)"


def test_allowlist_has_no_stale_entries() -> None:
    for rel in LONG_MODULES:
        assert (ROOT / rel).is_file(), f"LONG_MODULES names {rel}, which does not exist"
        assert len((ROOT / rel).read_text(encoding="utf-8").splitlines()) > MAX_LINES, f"{rel} is short now"
