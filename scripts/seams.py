#!/usr/bin/env python3
"""Figures about the seams of src/swapyard (issue 9): modules over 400 lines,
functions over 60 lines, private names reached across modules, import cycles.

    python3 scripts/seams.py [SRC_DIR]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

STDLIB_PRIVATE = {"os._exit", "sys._getframe"}  # the standard library's own API


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "src/swapyard")
    files = sorted(root.rglob("*.py"))
    mods = {module_name(root, f): f for f in files}
    big, long_fns, private, edges = [], [], [], {}
    for name, path in mods.items():
        text = path.read_text()
        tree = ast.parse(text)
        n = len(text.splitlines())
        if n > 400:
            big.append((n, name))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 60:
                    long_fns.append((length, f"{name}.{node.name}"))
            # obj._private where obj is not self/cls: reaching into another object
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                and ast.unparse(node) not in STDLIB_PRIVATE
            ):
                private.append(f"{name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.level:
                    continue
                for alias in node.names:
                    if (
                        alias.name.startswith("_")
                        and not alias.name.startswith("__")
                        and node.module.startswith("swapyard")
                    ):
                        private.append(f"{name}:{node.lineno} import {node.module}.{alias.name}")
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("swapyard")
            ):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    deps.add(sub if sub in mods else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("swapyard"))
        edges[name] = {d for d in deps if d in mods and d != name}
    # type-checking-only imports count too: an import cycle is a cycle in the design
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in mods and node.module != name:
                edges[name].add(node.module)
    cycles = strongly_connected(edges)
    print(f"modules over 400 lines: {len(big)}")
    for n, name in sorted(big, reverse=True):
        print(f"  {n:5d}  {name}")
    print(f"functions over 60 lines: {len(long_fns)}")
    for n, name in sorted(long_fns, reverse=True):
        print(f"  {n:5d}  {name}")
    print(f"private names reached from outside their object: {len(private)}")
    for p in private:
        print(f"  {p}")
    print(f"import cycles (package __init__ re-exports excluded): {len(cycles)}")
    for c in cycles:
        print("  " + " -> ".join(sorted(c)))
    return 0


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            # a package importing its own submodules (re-exports) is not a design cycle
            pkg_only = all(
                c == min(comp, key=len) or c.startswith(min(comp, key=len) + ".") for c in comp
            )
            if len(comp) > 1 and not pkg_only:
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
