"""Measure the shape of ``src/``: module, class and function sizes, and import cycles.

``python scripts/shape.py`` prints every module, class and function over its limit and every
import cycle between the package's modules, and exits 1 when there is any. ``make lint`` runs
it. Limits: a module 700 lines, a class 500, a function 80 (the aims are 500, 400 and a
screen). Every import counts, also one inside a function or under ``TYPE_CHECKING``: a cycle
hidden in a function is still a cycle for a reader.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

MODULE_LIMIT = 700
CLASS_LIMIT = 500
FUNCTION_LIMIT = 80
PACKAGE = "AgentOperatingSystem"


def module_name(root: Path, path: Path) -> str:
    """The dotted name of the module at ``path`` under ``root`` (``src/``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(name: str, is_package: bool, tree: ast.AST, known: set[str]) -> set[str]:
    """The package's own modules that the module ``name`` imports (any depth, any place)."""
    found: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts)
                stem = f"{base}.{node.module}" if node.module else base
            else:
                stem = node.module or ""
            targets = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # the deepest known module the target names
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def is_parent_import(a: str, b: str) -> bool:
    """A package importing its own submodule (``__init__`` re-exports) is not a cycle edge."""
    return b.startswith(a + ".")


def measure(root: Path) -> list[str]:
    """Every finding under ``root`` as one line of text."""
    findings: list[str] = []
    files = sorted((root / PACKAGE).rglob("*.py"))
    trees: dict[str, tuple[ast.AST, bool]] = {}
    for path in files:
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n") + 1
        rel = path.relative_to(root)
        if lines > MODULE_LIMIT:
            findings.append(f"module   {lines:5d} lines  {rel}")
        tree = ast.parse(text, str(path))
        trees[module_name(root, path)] = (tree, path.name == "__init__.py")
        for node in ast.walk(tree):
            if not hasattr(node, "end_lineno"):
                continue
            size = (node.end_lineno or node.lineno) - node.lineno + 1  # type: ignore[attr-defined]
            if isinstance(node, ast.ClassDef) and size > CLASS_LIMIT:
                findings.append(f"class    {size:5d} lines  {rel}:{node.lineno} {node.name}")
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and size > FUNCTION_LIMIT:
                findings.append(f"function {size:5d} lines  {rel}:{node.lineno} {node.name}")
    known = set(trees)
    graph = {
        name: {
            dep
            for dep in imported_modules(name, is_pkg, tree, known)
            if not is_parent_import(name, dep) and not is_parent_import(dep, name)
        }
        for name, (tree, is_pkg) in trees.items()
    }
    for cycle in find_cycles(graph):
        findings.append("cycle    " + " <-> ".join(cycle))
    return findings


def main(argv: list[str] | None = None) -> int:
    """Print the findings; exit 1 when there is any."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="src", type=Path)
    parser.add_argument("--report-only", action="store_true", help="print, but exit 0")
    args = parser.parse_args(argv)
    findings = measure(args.root)
    for line in findings:
        print(line)
    print(
        f"shape: {len(findings)} finding(s) over the limits "
        f"(module {MODULE_LIMIT}, class {CLASS_LIMIT}, function {FUNCTION_LIMIT}) or cycles"
    )
    return 1 if findings and not args.report_only else 0


if __name__ == "__main__":
    sys.exit(main())
