"""The package's modules import each other without a circle.

A circle (``cli`` ↔ ``cli_plan``, ``importers`` ↔ ``trace`` before) makes the import order
matter and forces imports into function bodies. The graph is read from the source, function-level
imports included (they are circles too, only deferred); imports under ``TYPE_CHECKING`` are
left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "simdisagg"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skipped.update(id(sub) for sub in ast.walk(node))
    return skipped


def import_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports (``from a import b`` counts as ``a.b`` when
    ``b`` is a module, else as ``a``)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skipped = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.append(sub if sub in modules else node.module)
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
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
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_finder_sees_a_circle() -> None:
    """The circle finder reports a two-module circle and ignores a one-way chain."""
    assert circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


#: Modules that must stay out of every circle: the command line, the trace readers and the
#: modules every command goes through.
KEPT_OUT = ("simdisagg", "simdisagg.cli", "simdisagg.trace", "simdisagg.importers", "simdisagg.inputs",
            "simdisagg.errors", "simdisagg.config", "simdisagg.api", "simdisagg.output", "simdisagg.metrics")  # fmt: skip


def test_no_import_circles_through_the_cli_and_the_trace_readers() -> None:
    """No circle runs through the command line, the trace readers or the modules every command
    uses (``cli`` ↔ ``cli_plan`` and ``importers`` ↔ ``trace`` were two)."""
    graph = import_graph()
    assert "simdisagg.cli.plan" in graph and "simdisagg.importers" in graph
    for circle in circles(graph):
        inside = [m for m in circle if m in KEPT_OUT or m.startswith("simdisagg.cli.")]
        assert not inside, f"import circle through {inside}: {circle}"


def test_cli_modules_import_only_common() -> None:
    """The command modules share code through ``simdisagg.cli.common`` alone."""
    graph = import_graph()
    for name in ("simdisagg.cli.plan", "simdisagg.cli.trace", "simdisagg.cli.calibrate", "simdisagg.cli.common"):
        assert "simdisagg.cli" not in graph[name], name
