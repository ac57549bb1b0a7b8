"""The house rules, checked from the code's own imports (read as text, nothing is run).

- No import circles between modules: a circle means two modules that can only be understood
  (and changed) together. Imports under ``if TYPE_CHECKING:`` are annotations, not
  dependencies, and are left out; imports inside functions count.
- Floors: ``protos`` (the contracts and the shared mechanisms) imports no tier; a tier
  imports another tier only through that tier's contract modules; only ``serving`` (the
  composition root) reaches into the other tiers' runtimes. The one exception is named:
  ``python -m base_model.train``, the Ray job entry point, is a shim that runs
  ``freshrank train`` from the composition root.
- One job per file: no module of the packages is longer than ``MAX_LINES``.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("protos", "base_model", "online_layer", "feature_store", "serving")
TIERS = ("base_model", "online_layer", "feature_store")
# The modules a tier may import from another tier: contracts, not runtimes.
CONTRACTS = {"feature_store.catalog"}
# ``python -m`` shims that only hand their arguments to the composition root's command
# (the Ray job entry point that manifests and ``ray job submit`` name).
ENTRY_POINTS = {"base_model.train": {"serving.cli"}}
MAX_LINES = 450


def _modules() -> dict[str, pathlib.Path]:
    found: dict[str, pathlib.Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name.endswith("_pb2.py") or path.name.endswith("_pb2_grpc.py"):
                continue
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(module: str, path: pathlib.Path) -> set[str]:
    """Every module name ``module`` imports (absolute or relative), TYPE_CHECKING left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        targets = set()
        for name in _imported_names(module, path):
            # An import of ``a.b.c`` depends on the deepest known module it names.
            parts = name.split(".")
            while parts and ".".join(parts) not in MODULES:
                parts.pop()
            if parts:
                target = ".".join(parts)
                if target != module:
                    targets.add(target)
        graph[module] = targets
    return graph


GRAPH = _graph()


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm).

    A package's ``__init__`` importing its own submodules, which import the package for
    nothing but to reach a sibling, is not counted: edges into a package ``__init__`` from
    its own submodules are dropped first.
    """
    edges = {
        m: {t for t in ts if not (m.startswith(t + ".") and MODULES[t].name == "__init__.py")}
        for m, ts in graph.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def connect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def test_the_checker_finds_a_circle_it_is_shown() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    saved = dict(MODULES)
    try:
        for name in graph:
            MODULES[name] = pathlib.Path(f"{name}.py")
        assert _circles(graph) == [["a", "b", "c"]]
    finally:
        MODULES.clear()
        MODULES.update(saved)


def test_no_module_imports_itself_in_a_circle() -> None:
    assert _circles(GRAPH) == []


def test_the_ground_floor_imports_no_tier() -> None:
    offenders = {
        m: sorted(t for t in ts if t.split(".")[0] in TIERS + ("serving",))
        for m, ts in GRAPH.items()
        if m.split(".")[0] == "protos"
    }
    assert {m: ts for m, ts in offenders.items() if ts} == {}


@pytest.mark.parametrize("tier", TIERS)
def test_a_tier_reaches_other_tiers_only_through_their_contracts(tier: str) -> None:
    offenders = {}
    for module, targets in GRAPH.items():
        if module.split(".")[0] != tier:
            continue
        allowed = ENTRY_POINTS.get(module, set())
        bad = sorted(
            t
            for t in targets
            if t.split(".")[0] not in (tier, "protos") and t not in CONTRACTS and t not in allowed
        )
        if bad:
            offenders[module] = bad
    assert offenders == {}


def test_every_module_does_one_job_in_under_the_line_limit() -> None:
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}
