"""The layers contract: no import cycle among ``custos`` modules, and no import up the layers.

The layers are one list, ``layers`` in pyproject.toml's ``[tool.importlinter]`` contract; this
test reads it from there, and ``make test`` also runs ``lint-imports`` over it. How to read it:

- the first entry is the top (the command line), the last the bottom (modules that import nothing
  from ``custos``);
- an entry names packages or modules relative to ``custos``; ``a | b`` are siblings in one layer,
  which must not import each other;
- a module belongs to the entry that names it or a package above it (``audit`` covers
  ``custos.audit`` and every module under it), and may import modules of its own package and of
  any lower layer, never of a higher one;
- every module is in some layer: a new package or top-level module gets a place in the list.

``ignore_imports`` beside the list names the imports the contract lets through, each with its
reason in a comment. Keep it short: an import up the layers is fixed by moving what is imported
down to where it belongs, not by adding it there (nor by hiding it inside a function: every
import counts, at module level or in a function).

``if TYPE_CHECKING:`` imports count too, with one exception: ``custos.context`` may import, for
type checking only, the types its ``RequestContext`` fields hold (the stages that fill them take
the context, so these names point up). Those imports are in ``ignore_imports`` for
``lint-imports``, which cannot tell them apart; ``test_context_imports_upward_only_for_types``
checks that they stay type-checking only.

Cycles are never let through, whatever ``ignore_imports`` says.

Imports by name (``importlib.import_module``) are not seen; the two there are (the provider
adapters in ``custos.providers.registry``, the migrations in ``custos.state.migrations``) stay
inside their own package.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import grimp

PACKAGE = "custos"
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
#: Modules that may import from higher layers under ``if TYPE_CHECKING:`` (and only there).
TYPES_ONLY_UPWARD = frozenset({"custos.context"})

Edge = tuple[str, str]


@cache
def contract() -> dict[str, Any]:
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    (layers,) = [c for c in config["contracts"] if c["id"] == "layers"]
    assert layers["containers"] == [PACKAGE]
    return layers


@cache
def graph(type_checking: bool = True) -> grimp.ImportGraph:
    return grimp.build_graph(
        PACKAGE, cache_dir=None, exclude_type_checking_imports=not type_checking
    )


def _edges(graph: grimp.ImportGraph) -> frozenset[Edge]:
    return frozenset(
        (importer, imported)
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
    )


@cache
def all_imports() -> frozenset[Edge]:
    """Every import grimp finds, at module level, in functions and under ``TYPE_CHECKING``."""
    return _edges(graph())


@cache
def run_time_imports() -> frozenset[Edge]:
    return _edges(graph(type_checking=False))


def counted_imports() -> set[Edge]:
    """All imports, less the type-checking-only ones of ``TYPES_ONLY_UPWARD``."""
    run_time = run_time_imports()
    return {edge for edge in all_imports() if edge[0] not in TYPES_ONLY_UPWARD or edge in run_time}


def ignored_imports() -> set[Edge]:
    ignored = set()
    for entry in contract().get("ignore_imports", []):
        importer, _, imported = (part.strip() for part in entry.partition("->"))
        assert "*" not in entry, f"{entry}: name the modules (this test takes no wildcards)"
        ignored.add((importer, imported))
    return ignored


# -- cycles ------------------------------------------------------------------------------------


def cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iteratively)."""
    succ: dict[str, list[str]] = {}
    for importer, imported in edges:
        succ.setdefault(importer, []).append(imported)
        succ.setdefault(imported, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(succ):
        if root in index:
            continue
        work = [(root, iter(sorted(succ[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
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
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(succ[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def a_loop(component: list[str], edges: Iterable[Edge]) -> list[str]:
    """One shortest loop through the component's first module: ``[a, b, …, a]``."""
    members = set(component)
    succ: dict[str, list[str]] = {}
    for importer, imported in sorted(edges):
        if importer in members and imported in members:
            succ.setdefault(importer, []).append(imported)
    start = component[0]
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in succ.get(node, ()):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in came_from:
                    came_from[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no loop through {start}")


def test_no_import_cycle() -> None:
    edges = counted_imports()
    found = cycles(edges)
    report = [
        f"{len(component)} modules: {', '.join(component)}\n"
        f"    for example {' -> '.join(a_loop(component, edges))}"
        for component in found
    ]
    assert not found, "import cycles among custos modules:\n" + "\n".join(report)


def test_cycle_finder_finds_a_cycle() -> None:
    edges = {("a", "b"), ("b", "c"), ("c", "a"), ("a", "c"), ("c", "d"), ("d", "e"), ("e", "d")}
    assert sorted(cycles(edges)) == [["a", "b", "c"], ["d", "e"]]
    assert a_loop(["a", "b", "c"], edges) == ["a", "c", "a"]
    assert a_loop(["d", "e"], edges) == ["d", "e", "d"]


# -- layers ------------------------------------------------------------------------------------


def layers() -> list[list[str]]:
    """The contract's layers, top first, each a list of sibling names under ``custos``."""
    return [[name.strip() for name in entry.split("|")] for entry in contract()["layers"]]


def place(module: str) -> tuple[int, str] | None:
    """The module's layer (0 is the top) and the sibling that holds it; ``None`` for the
    ``custos`` package itself, which holds only ``__version__``."""
    if module == PACKAGE:
        return None
    holders = [
        (number, sibling)
        for number, siblings in enumerate(layers())
        for sibling in siblings
        if module == f"{PACKAGE}.{sibling}" or module.startswith(f"{PACKAGE}.{sibling}.")
    ]
    assert holders, f"{module} is in no layer: give it a place in pyproject.toml's list"
    return max(holders, key=lambda holder: len(holder[1]))  # the most specific name


def test_every_module_has_a_layer() -> None:
    unplaced = []
    for module in sorted(graph().modules):
        try:
            place(module)
        except AssertionError as exc:
            unplaced.append(str(exc))
    assert not unplaced, "\n".join(unplaced)


def test_no_import_up_the_layers() -> None:
    names = [" | ".join(siblings) for siblings in layers()]
    ignored = ignored_imports()
    wrong = []
    for importer, imported in sorted(counted_imports()):
        if (importer, imported) in ignored:
            continue
        low, high = place(importer), place(imported)
        if low is None or high is None or low[1] == high[1]:
            continue
        if high[0] < low[0]:
            wrong.append(
                f"{importer} -> {imported}: up from '{names[low[0]]}' to '{names[high[0]]}'"
            )
        elif high[0] == low[0]:
            wrong.append(f"{importer} -> {imported}: between siblings of '{names[low[0]]}'")
    assert not wrong, "imports against the layers contract:\n" + "\n".join(wrong)


def test_context_imports_upward_only_for_types() -> None:
    """The ignored imports of ``TYPES_ONLY_UPWARD`` modules are type-checking only, and every
    ignored import still exists (a stale entry would hide the next real one)."""
    every, run_time = all_imports(), run_time_imports()
    for edge in ignored_imports():
        assert edge in every, f"{edge[0]} -> {edge[1]} is ignored but not imported: drop it"
        if edge[0] in TYPES_ONLY_UPWARD:
            assert edge not in run_time, (
                f"{edge[0]} imports {edge[1]} at run time: only type-checking imports may "
                "point up from it"
            )
