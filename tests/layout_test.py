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


# Longer than the house's sizes on purpose, each with its reason
# (BUILD_NOTES "The house"): functions over 80 lines of code (docstrings
# not counted), modules over 450 lines.
LONG = {
    "keras_ebm/configs/common.py::get_base_config": "the defaults' table",
    "keras_ebm/configs/midrun.py::_attack": "the attack settings' table",
    "keras_ebm/models/energy_model.py": "one keras.Model class",
    "keras_ebm/networks/biggan.py": "one family of networks (issue 17)",
}


def sizes(max_code=80, max_module=450):
    """Functions with more than `max_code` lines of code and modules with
    more than `max_module` lines, as `path[::function]` names."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        name = str(path.relative_to(PACKAGE.parent))
        if len(source.splitlines()) > max_module:
            found.append(name)
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            lines = node.end_lineno - node.lineno + 1
            if ast.get_docstring(node):
                doc = node.body[0]
                lines -= doc.end_lineno - doc.lineno + 1
            if lines > max_code:
                found.append(f"{name}::{node.name}")
    return found


def test_functions_and_modules_stay_within_the_house_sizes():
    assert set(sizes()) == set(LONG)
    # The walk sees a function that grows: at a lower bound, more are long.
    assert set(sizes(max_code=60)) > set(LONG)
