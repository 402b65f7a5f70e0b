#!/usr/bin/env python3
"""Check that PocketTune's packages import one way only, and that coordinator/services has no import cycle.

The packages are layers, each allowed to import only the ones below it::

    models  <  export  <  fleet  <  coordinator  <  pockettune

(``models`` imports nothing of the project above itself; ``export`` may import ``models``;
``fleet`` may import ``models`` and ``export``; the coordinator those three; the command line
anything). An import the other way is how a cycle between packages starts, however lazily it
is written. Inside ``coordinator/services`` the modules import each other freely, so there the
check is for cycles.

Every ``import`` statement counts, wherever it sits: at module level, inside a function (a lazy
import hides a cycle from Python, not from the design), under ``if TYPE_CHECKING``; and so does
``importlib.import_module`` with a literal module name. Only the standard library's ``ast`` is
used: nothing is imported or run.

Usage (from the repository root; exit status 1 when something is found)::

    python scripts/check_imports.py
    python scripts/check_imports.py --allow accepted_findings.txt

``--allow`` names a file of findings to accept for now, one per line as this script prints them
(``#`` comments allowed); a listed finding that no longer occurs is reported, so the list only
shrinks.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The project's packages, lowest layer first.
LAYERS = ("models", "export", "fleet", "coordinator", "pockettune")
#: The package whose modules must not import each other in a cycle.
CYCLE_FREE_PACKAGE = "coordinator.services"


@dataclass(frozen=True)
class Import:
    """One import of a project module: who imports what, and where."""

    importer: str        # dotted module name of the importing file
    imported: str        # dotted name of the imported module (or of the name's module, best effort)
    path: Path
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([module] if module else []))


def _is_project(name: str) -> bool:
    return name.split(".")[0] in LAYERS


def imports_of(path: Path, root: Path, modules: set[str]) -> Iterator[Import]:
    """Every project module ``path`` imports. ``from package import name`` counts as importing
    ``package.name`` when that is a module of the project, else ``package``."""
    importer = module_name(path, root)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_project(alias.name):
                    yield Import(importer, alias.name, path, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(importer, is_package, node.level, node.module) if node.level
                    else node.module or "")
            if not _is_project(base):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield Import(importer, candidate if candidate in modules else base, path, node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and _is_project(node.args[0].value)):
            yield Import(importer, node.args[0].value, path, node.lineno)


def layer_violations(found: list[Import], root: Path) -> list[str]:
    """Imports from a lower layer of a higher one."""
    problems = []
    for item in found:
        low, high = LAYERS.index(item.importer.split(".")[0]), LAYERS.index(item.imported.split(".")[0])
        if high > low:
            allowed = ", ".join(LAYERS[:low + 1])
            problems.append(f"layer: {item.path.relative_to(root)}:{item.line}: {item.importer} imports {item.imported} "
                            f"({LAYERS[low]} may import only {allowed})")
    return problems


def cycles(found: list[Import], package: str) -> list[list[str]]:
    """Import cycles among the modules of ``package`` (each a list of modules, closed: first == last)."""
    inside = lambda name: name == package or name.startswith(package + ".")  # noqa: E731
    graph: dict[str, set[str]] = {}
    for item in found:
        if inside(item.importer) and inside(item.imported) and item.importer != item.imported:
            graph.setdefault(item.importer, set()).add(item.imported)
            graph.setdefault(item.imported, set())
    # Tarjan's strongly connected components; a component of two or more modules holds a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_one_cycle(graph, component) for component in components]


def _one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected component."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & members):
                if target == start:
                    return paths[node] + [start]
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    following.append(target)
        frontier = following
    return component


def where(found: list[Import], importer: str, imported: str, root: Path) -> str:
    lines = sorted(f"{i.path.relative_to(root)}:{i.line}" for i in found if i.importer == importer and i.imported == imported)
    return lines[0] if lines else "?"


def check(root: Path) -> list[str]:
    """Every finding, as the lines this script prints (sorted)."""
    files = sorted(p for layer in LAYERS for p in (root / layer).rglob("*.py") if "__pycache__" not in p.parts)
    modules = {module_name(p, root) for p in files}
    found = [item for path in files for item in imports_of(path, root, modules)]
    problems = layer_violations(found, root)
    for cycle in cycles(found, CYCLE_FREE_PACKAGE):
        steps = ", ".join(f"{a} -> {b} ({where(found, a, b, root)})" for a, b in zip(cycle, cycle[1:]))
        problems.append(f"cycle: {' -> '.join(cycle)}: {steps}")
    return sorted(set(problems))


def _allowed(path: Path) -> set[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return {line for line in lines if line}


def _key(finding: str) -> str:
    """A finding without its line numbers, so that an edit elsewhere in a file keeps it allowed."""
    return re.sub(r"(\.py):\d+", r"\1", finding)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO, help="repository root (default: this script's)")
    parser.add_argument("--allow", type=Path, help="file of findings accepted for now (see the module docstring)")
    args = parser.parse_args(argv)
    findings = check(args.root)
    allowed = {_key(line) for line in _allowed(args.allow)} if args.allow else set()
    new = [finding for finding in findings if _key(finding) not in allowed]
    gone = sorted(allowed - {_key(finding) for finding in findings})
    for finding in findings:
        print(("allowed  " if _key(finding) in allowed else "") + finding)
    for entry in gone:
        print(f"no longer found (remove it from {args.allow}): {entry}")
    print(f"{len(new)} import problem(s)" + (f", {len(findings) - len(new)} allowed" if allowed else "")
          + (f", {len(gone)} stale allowance(s)" if gone else ""), file=sys.stderr)
    return 1 if new or gone else 0


if __name__ == "__main__":
    sys.exit(main())
