"""The house's floors: every import inside keras_ebm (also those inside
functions) goes from a higher floor to a lower one, and no module imports
itself back through others. BUILD_NOTES "Layout" draws the same table."""

import ast
import pathlib

import keras_ebm

PACKAGE = pathlib.Path(keras_ebm.__file__).parent

# Each top-level module or package of keras_ebm and its floor: a unit may
# import units of lower floors only (and its own modules).
FLOORS = {
    "errors": 0,
    "distribute": 0,
    "configs": 0,
    "networks": 0,
    "sampling": 1,
    "data": 1,
    "models": 2,
    "export": 2,
    "runs": 3,
    "classify": 4,
    "evaluation": 5,
    "defense": 5,
    "regimes": 6,
    "run": 7,
    "cli": 7,
    "convert": 8,
}


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph():
    """`{module: {module it imports}}` over keras_ebm, every import
    statement included (module level or inside a function)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{name}: relative import")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "keras_ebm"
            ):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("keras_ebm")}
        graph[name] = deps - {name}
    return graph


def unit(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the package facade


def upward_imports(graph, floors):
    return sorted(
        (a, b)
        for a, deps in graph.items()
        for b in deps
        if unit(a) is not None
        and unit(b) is not None
        and unit(a) != unit(b)
        and floors[unit(a)] <= floors[unit(b)]
    )


def cycles(graph):
    """One cycle through each strongly connected part (Tarjan), as lists."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_unit_has_a_floor():
    graph = import_graph()
    assert {unit(m) for m in graph} - {None} == set(FLOORS)


def test_no_import_goes_up_a_floor_or_round_a_cycle():
    graph = import_graph()
    assert upward_imports(graph, FLOORS) == []
    assert cycles(graph) == []


def test_the_walk_sees_a_function_level_upward_import_and_a_cycle():
    graph = import_graph()
    # runs.checkpoints importing a regime inside a function: found.
    graph["keras_ebm.runs.checkpoints"] = graph["keras_ebm.runs.checkpoints"] | {
        "keras_ebm.regimes.midrun"
    }
    assert ("keras_ebm.runs.checkpoints", "keras_ebm.regimes.midrun") in (
        upward_imports(graph, FLOORS)
    )
    assert any("keras_ebm.runs.checkpoints" in c for c in cycles(graph))
    # Two units on one floor importing each other: both edges are upward.
    same = dict(FLOORS, classify=FLOORS["runs"])
    assert ("keras_ebm.classify", "keras_ebm.runs.checkpoints") in (
        upward_imports(import_graph(), same)
    )


def test_the_root_holds_only_what_a_library_user_imports():
    assert sorted(p.stem for p in PACKAGE.glob("*.py")) == [
        "__init__",
        "classify",
        "convert",
        "data",
        "distribute",
        "errors",
        "export",
        "run",
    ]
