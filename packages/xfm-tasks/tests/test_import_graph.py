"""The import graph of every ``xfm.*`` module: no upward import between packages, no cycle.

Every module under ``packages/*/src/xfm/`` is parsed (``ast``, nothing is imported) and every
import it makes is collected: module-level ones, function-level (lazy) ones, and
``importlib.import_module("xfm....")`` with a literal string. Imports inside
``if TYPE_CHECKING:`` blocks are ignored (they never run).

Rules:

* **layers**: a package imports only packages below it in ``xfm-core < xfm-text, xfm-vision <
  xfm-fusion < xfm-train < xfm-tasks`` (xfm-text and xfm-vision never import each other), lazy
  imports included;
* **cycles**: the imports inside one package form no cycle, lazy imports included (a cycle
  that only a function-level import closes still ties the modules together; registries are
  the way to look a component up without importing its module). (Edges go to the imported
  module itself, not to the ``__init__`` of the packages above it, as import-linter does.)
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PACKAGES = REPO / "packages"

#: Layer of each distribution (lower imports nothing above it; same layer: no import at all).
LAYER: dict[str, int] = {"core": 0, "text": 1, "vision": 1, "fusion": 2, "train": 3, "tasks": 4}


@dataclass(frozen=True)
class Import:
    """One import statement: ``importer`` imports ``target`` (a module name)."""

    importer: str
    target: str
    line: int
    lazy: bool


def module_name(path: Path, src: Path) -> str:
    """``src/xfm/tasks/base.py`` -> ``xfm.tasks.base`` (``__init__`` -> the package)."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover(root: Path = PACKAGES) -> dict[str, Path]:
    """``{module name: file}`` of every module of every package under ``root``."""
    out: dict[str, Path] = {}
    for src in sorted(root.glob("*/src")):
        for path in sorted(src.rglob("*.py")):
            out[module_name(path, src)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, name] if name else base)


def imports_of(module: str, source: str, *, is_package: bool, known: set[str]) -> list[Import]:
    """Every import of ``module`` (its source text) that targets an ``xfm`` module."""
    tree = ast.parse(source)
    found: list[Import] = []

    def add(target: str, node: ast.AST, lazy: bool) -> None:
        if target == "xfm" or target.startswith("xfm."):
            found.append(Import(module, target, getattr(node, "lineno", 0), lazy))

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, lazy)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, lazy)
        elif isinstance(node, ast.ImportFrom):
            base = (
                _resolve_relative(module, is_package, node.level, node.module)
                if node.level
                else node.module or ""
            )
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else base, node, lazy)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (getattr(node.func, "attr", None) or getattr(node.func, "id", None))
            == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            add(node.args[0].value, node, lazy)
        inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    for stmt in tree.body:
        visit(stmt, False)
    return found


def collect(modules: dict[str, Path]) -> list[Import]:
    """Every xfm import of every module in ``modules``."""
    known = set(modules)
    out: list[Import] = []
    for name, path in modules.items():
        out += imports_of(
            name, path.read_text(), is_package=path.name == "__init__.py", known=known
        )
    return out


def package_of(module: str) -> str:
    """``xfm.tasks.official.pretrain`` -> ``tasks``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_violations(imports: Iterable[Import]) -> list[str]:
    """Readable lines for every import of a package that is not below the importer's."""
    bad = []
    for imp in imports:
        src, dst = package_of(imp.importer), package_of(imp.target)
        if src == dst or src not in LAYER or dst not in LAYER:
            continue
        if LAYER[dst] >= LAYER[src]:
            how = "lazy import" if imp.lazy else "import"
            bad.append(
                f"{imp.importer}:{imp.line}: {how} of {imp.target} (xfm-{src} may not import "
                f"xfm-{dst})"
            )
    return sorted(bad)


def cycles(imports: Iterable[Import]) -> list[list[str]]:
    """Strongly connected components (size > 1, or self-loops) of the module-level import
    graph restricted to edges inside one package; each as a sorted module list."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.lazy or package_of(imp.importer) != package_of(imp.target):
            continue
        graph.setdefault(imp.importer, set()).add(imp.target)
        graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> Iterator[None]:  # iterative Tarjan via generators
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                yield from strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            for _ in strongconnect(v):
                pass
    return sorted(out)


@pytest.fixture(scope="module")
def all_imports() -> list[Import]:
    modules = discover()
    assert len(modules) > 100, f"found only {len(modules)} modules under {PACKAGES}"
    assert {package_of(m) for m in modules} >= set(LAYER)
    return collect(modules)


def test_no_upward_imports(all_imports: list[Import]) -> None:
    bad = layer_violations(all_imports)
    assert not bad, "imports of a package above the importer:\n  " + "\n  ".join(bad)


def test_no_import_cycles_inside_a_package(all_imports: list[Import]) -> None:
    """No cycle between the modules of a package, lazy (function-level) imports included: a
    cycle that only a lazy import closes is still a circle in the design."""
    found = cycles(_eager(all_imports))
    assert not found, "import cycles (lazy imports counted):\n  " + "\n  ".join(
        " <-> ".join(c) for c in found
    )


def _eager(imports: Iterable[Import]) -> list[Import]:
    """Every import as if it ran at module level."""
    return [Import(i.importer, i.target, i.line, False) for i in imports]


# ------------------------------------------------------------------- the checker can fail


def _synthetic(tmp_path: Path, files: dict[str, str]) -> list[Import]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return collect(discover(tmp_path))


def test_checker_flags_upward_and_sideways_imports(tmp_path: Path) -> None:
    imports = _synthetic(
        tmp_path,
        {
            "xfm-core/src/xfm/core/__init__.py": "",
            "xfm-core/src/xfm/core/a.py": "def f():\n    import xfm.tasks.x\n",
            "xfm-text/src/xfm/text/__init__.py": "from xfm.vision import y\n",
            "xfm-vision/src/xfm/vision/__init__.py": "",
            "xfm-fusion/src/xfm/fusion/m.py": (
                "import importlib\nimportlib.import_module('xfm.train.z')\nfrom xfm.core import a\n"
            ),
            "xfm-tasks/src/xfm/tasks/x.py": "from xfm.fusion import m\n",
        },
    )
    bad = layer_violations(imports)
    assert len(bad) == 3, bad
    assert any(b.startswith("xfm.core.a:2: lazy import of xfm.tasks.x") for b in bad)
    assert any("xfm.text:1: import of xfm.vision" in b for b in bad)
    assert any("xfm.fusion.m:2: import of xfm.train.z" in b for b in bad)


def test_checker_flags_cycles_not_lazy_ones(tmp_path: Path) -> None:
    imports = _synthetic(
        tmp_path,
        {
            "xfm-tasks/src/xfm/tasks/__init__.py": "",
            "xfm-tasks/src/xfm/tasks/a.py": "from xfm.tasks import b\n",
            "xfm-tasks/src/xfm/tasks/b.py": "from . import c\n",
            "xfm-tasks/src/xfm/tasks/c.py": "from .a import thing\n",
            "xfm-tasks/src/xfm/tasks/d.py": "def f():\n    from xfm.tasks import e\n",
            "xfm-tasks/src/xfm/tasks/e.py": (
                "from typing import TYPE_CHECKING\nimport xfm.tasks.d\n"
                "if TYPE_CHECKING:\n    from xfm.tasks import a\n"
            ),
        },
    )
    assert cycles(imports) == [["xfm.tasks.a", "xfm.tasks.b", "xfm.tasks.c"]]
