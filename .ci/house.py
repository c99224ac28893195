"""The house rules of fmnist/ and scripts/ (make lint runs this): no module over 400 lines of code
or 500 lines in all, no function over 80 lines, no import cycle.

Lines of code are the lines that are not blank, not a comment and not part of a docstring. An
import anywhere in a module counts (one inside a function is a dependency all the same).

    python .ci/house.py     prints each broken rule; exit status 1 if there is one
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_CODE_LINES, MAX_LINES, MAX_FUNCTION_LINES = 400, 500, 80


def sources() -> list[Path]:
    return sorted([*(ROOT / "fmnist").rglob("*.py"), *(ROOT / "scripts").glob("*.py")])


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def docstring_lines(tree: ast.Module) -> set[int]:
    """The lines of the module's, classes' and functions' docstrings."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                found.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return found


def code_lines(text: str, tree: ast.Module) -> int:
    """Lines holding code: not blank, not only a comment, not a docstring."""
    with_code: set[int] = set()
    skipped = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type not in skipped and token.type != tokenize.ENDMARKER:
            with_code.update(range(token.start[0], token.end[0] + 1))
    return len(with_code - docstring_lines(tree))


def imports(tree: ast.Module, name: str, known: set[str]) -> set[str]:
    """The project's modules `name` imports (a package's submodule when named: `from fmnist
    import data` is fmnist.data)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            package = node.module or ""
            if node.level:  # relative: from the package `name` is in
                base = name.split(".")[: len(name.split(".")) - node.level]
                package = ".".join([*base, *([package] if package else [])])
            for alias in node.names:
                submodule = f"{package}.{alias.name}"
                found.add(submodule if submodule in known else package)
    return {module for module in found if module in known and module != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, once each (Tarjan's strongly connected components of 2 or more)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def problems() -> list[str]:
    trees = {path: ast.parse(path.read_text()) for path in sources()}
    known = {module_name(path) for path in trees}
    found, graph = [], {}
    for path, tree in trees.items():
        where, text = path.relative_to(ROOT), path.read_text()
        code, total = code_lines(text, tree), len(text.splitlines())
        if code > MAX_CODE_LINES or total > MAX_LINES:
            found.append(
                f"{where}: {code} lines of code, {total} in all (at most {MAX_CODE_LINES} and "
                f"{MAX_LINES}): split it along its seams"
            )
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(
                        f"{where}:{node.lineno}: {node.name}() is {length} lines long (at most "
                        f"{MAX_FUNCTION_LINES})"
                    )
        graph[module_name(path)] = imports(tree, module_name(path), known)
    found += [f"import cycle: {' <-> '.join(cycle)}" for cycle in cycles(graph)]
    return found


def main() -> int:
    found = problems()
    for problem in found:
        print(problem)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
