"""pyproject.toml: every third-party module the package imports at run time is a dependency of the install
that runs that code (core, or the extra of the backend/feature the module belongs to).

An import inside ``try: ... except ImportError`` (or a broader handler) is optional and exempt: the code runs
without it. Everything else must be installable with ``pip install 'pytest-sglang-tune[<extra>]'``.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pytest_sglang_tune"

# Which extra installs the code of each module (path relative to the package, fnmatch-free prefix match).
EXTRA_OF = [
    ("backends/ome", "kube"),
    ("backends/docker", "docker"),
    ("sim/", "sim"),
]
# Modules of distributions not installed here (so ``packages_distributions`` cannot name them).
KNOWN_DISTRIBUTIONS = {"pynvml": "nvidia-ml-py", "uvloop": "uvloop", "orjson": "orjson"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(reqs: list[str]) -> set[str]:
    out = set()
    for req in reqs:
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        assert m, f"cannot read the requirement {req!r}"
        out.add(_norm(m[1]))
    return out


def _project() -> dict[str, set[str]]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {"": _requirement_names(data["dependencies"])}
    for extra, reqs in data.get("optional-dependencies", {}).items():
        deps[extra] = _requirement_names(reqs)
    return deps


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a ``try`` whose handlers catch ImportError (or anything broader)."""
    child, cur = node, parents.get(node)
    while cur is not None:
        if isinstance(cur, ast.Try) and child in cur.body:
            for h in cur.handlers:
                names = [h.type] if not isinstance(h.type, ast.Tuple) else list(h.type.elts)
                if h.type is None or any(isinstance(n, ast.Name) and n.id in
                                         ("ImportError", "ModuleNotFoundError", "Exception", "BaseException")
                                         for n in names):
                    return True
        child, cur = cur, parents.get(cur)
    return False


def runtime_imports(path: Path) -> set[str]:
    """Top-level names of the third-party modules ``path`` imports outside an ImportError guard."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in ("pytest_sglang_tune", "__future__"):
                continue
            if not _guarded(node, parents):
                found.add(top)
    return found


@functools.cache
def _installed() -> dict[str, list[str]]:
    return dict(packages_distributions())


def _distribution(module: str) -> str:
    dists = _installed().get(module)
    if dists:
        return _norm(dists[0])
    if module in KNOWN_DISTRIBUTIONS:
        return _norm(KNOWN_DISTRIBUTIONS[module])
    raise AssertionError(f"cannot tell which distribution provides {module!r}; add it to KNOWN_DISTRIBUTIONS")


MODULES = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_runtime_imports_are_dependencies_of_the_install_that_runs_them(module: str) -> None:
    deps = _project()
    extra = next((e for prefix, e in EXTRA_OF if module.startswith(prefix)), "")
    allowed = deps[""] | deps.get(extra, set())
    where = f"[{extra}]" if extra else "the core dependencies"
    for name in sorted(runtime_imports(PACKAGE / module)):
        dist = _distribution(name)
        assert dist in allowed, (f"pytest_sglang_tune/{module} imports {name!r} (distribution {dist!r}) at run time, "
                                 f"but pyproject.toml does not list it in {where}")


def test_the_checker_sees_guarded_and_unguarded_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import os\nimport yaml\ndef f():\n    import jsonschema\n"
                   "try:\n    import uvloop\nexcept ImportError:\n    pass\n")
    assert runtime_imports(src) == {"yaml", "jsonschema"}
