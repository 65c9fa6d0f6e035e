"""Static checks of the package layout: the run-time import graph, layers and sizes.

``trioq`` is split by side (wire, scheduler, client, worker, taskqueue) so
that, for instance, the scheduler process never loads a pickler.  These
tests read every module under ``trioq/`` with ``ast`` (nothing is imported)
and build the graph of run-time imports between trioq modules: every
``import`` anywhere in a file, lazy ones inside functions included, except
those under ``if TYPE_CHECKING:``.  A module's edge goes to the module it
names (``from pkg import sub`` is an edge to ``pkg.sub``; ``from pkg import
attr`` one to ``pkg``'s ``__init__``), not to the parent packages that
Python loads on the way (only the pickler check follows those too, since
they run as well).  The compiled core ``_core.pyx`` is a leaf named
``trioq._core``.  On that graph the tests check that there is no import
cycle, that imports only point down the layers, that the scheduler cannot
reach a pickler, and some size and tidiness limits.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "trioq"
COMPILED_CORE = "trioq._core"
PICKLER = "trioq._wire.pickling"
PICKLE_MODULES = frozenset({"pickle", "_pickle", "cloudpickle", "dill", "marshal"})
MAX_MODULE_LINES = 610  # "about 600": split by concept beyond that
LINE_LIMIT_EXEMPT = frozenset({"_core_py.py"})
MAX_TOP_LEVEL_MODULES = 10

CORE = frozenset({"trioq._exceptions", "trioq._impl", "trioq._core_py", COMPILED_CORE})
SIDES = ("wire", "scheduler", "client", "worker", "taskqueue")
SUBPACKAGE_LAYERS = {f"trioq._{side}": side for side in SIDES} | {"trioq._demo": "launchers"}
FIXED_LAYERS = {"trioq": "face", "trioq.__main__": "cli", "trioq.streams": "streams"}
FIXED_LAYERS |= {"trioq._cluster": "launchers"} | dict.fromkeys(CORE, "core")
LAYERS = frozenset(SUBPACKAGE_LAYERS.values()) | set(FIXED_LAYERS.values())
ALLOWED_LAYERS = {
    "core": {"core"},
    "wire": {"wire", "core"},
    "scheduler": {"scheduler", "wire", "core"},
    "client": {"client", "wire", "core"},
    "worker": {"worker", "client", "wire", "core"},
    "taskqueue": {"taskqueue", "worker", "client", "wire", "core"},
    "streams": {"streams", "client", "wire", "core"},
    "launchers": LAYERS - {"cli"},
    "cli": LAYERS,
    "face": {"face", "core"},  # its lazy names are importlib strings, not imports
}


@dataclass(frozen=True)
class Import:
    source: str  # importing trioq module
    target: str  # imported module (a trioq module, or any other dotted name)
    path: str  # file of the import, relative to the repository
    line: int


@dataclass(frozen=True)
class ImportGraph:
    modules: frozenset[str]
    edges: tuple[Import, ...]  # run-time imports of trioq modules
    externals: tuple[Import, ...]  # run-time imports of everything else


def adjacency(edges: Iterable[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
    return graph


def module_name(path: Path) -> str:
    parts = ["trioq", *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_trioq(name: str) -> bool:
    return name == "trioq" or name.startswith("trioq.")


def is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING``, ``typing.TYPE_CHECKING`` or ``_typing.TYPE_CHECKING`` (an alias)."""
    if isinstance(test, ast.Attribute) and isinstance(test.value, ast.Name):
        return test.value.id in {"typing", "_typing"} and test.attr == "TYPE_CHECKING"
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def runtime_import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree`` except those under ``if TYPE_CHECKING:``."""
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and is_type_checking(node.test):
            pending.extend(node.orelse)  # an ``else:`` branch does run
        else:
            pending.extend(ast.iter_child_nodes(node))


def imported_modules(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: frozenset[str]
) -> list[str]:
    """The dotted module names one import statement in ``module`` loads."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = ".".join(package[: len(package) - (node.level - 1)])
        base = f"{anchor}.{base}" if base else anchor
    return [
        f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
    ]


def imports_of(
    source: str, module: str, is_package: bool, known: frozenset[str], path: str
) -> Iterator[Import]:
    """The run-time imports in ``source`` (module ``module``, in file ``path``)."""
    for node in runtime_import_nodes(ast.parse(source, filename=path)):
        for target in dict.fromkeys(imported_modules(node, module, is_package, known)):
            if target != module:
                yield Import(module, target, path, node.lineno)


def python_files() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


@functools.cache
def build_graph() -> ImportGraph:
    files = {module_name(path): path for path in python_files()}
    known = frozenset(files) | {COMPILED_CORE}  # the .pyx is a leaf: its imports are not read
    edges: list[Import] = []
    externals: list[Import] = []
    for module, path in sorted(files.items()):
        where = str(path.relative_to(PACKAGE_DIR.parent))
        found = imports_of(path.read_text(), module, path.name == "__init__.py", known, where)
        for edge in found:
            (edges if is_trioq(edge.target) else externals).append(edge)
    key = lambda edge: (edge.source, edge.line, edge.target)  # noqa: E731
    return ImportGraph(known, tuple(sorted(edges, key=key)), tuple(sorted(externals, key=key)))


def import_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components that contain a cycle, each sorted."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                lowlink[node] = min(lowlink[node], lowlink[successor])
            elif successor in on_stack:
                lowlink[node] = min(lowlink[node], index[successor])
        if lowlink[node] == index[node]:
            component: list[str] = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1 or node in graph.get(node, ()):
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def layer_of(module: str) -> str | None:
    if module in FIXED_LAYERS:
        return FIXED_LAYERS[module]
    for package, layer in SUBPACKAGE_LAYERS.items():
        if module == package or module.startswith(package + "."):
            return layer
    return None


def runtime_closure(graph: Mapping[str, Iterable[str]], start: str) -> set[str]:
    """Every trioq module loaded with ``start``: its imports, theirs, and their packages."""
    seen: set[str] = set()
    pending = [start]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        parents = [module.rsplit(".", n)[0] for n in range(1, module.count(".") + 1)]
        pending.extend([*graph.get(module, ()), *parents])
    return seen


def test_graph_builder_resolves_relative_lazy_and_type_checking_imports() -> None:
    known = frozenset({"trioq", "trioq.streams", "trioq._wire", "trioq._wire.messages"})
    known |= {"trioq._client", "trioq._client.client", "trioq._client.queue"}
    source = (
        "from typing import TYPE_CHECKING\nimport typing\nimport os\n"
        "from .._wire.messages import Ok\nfrom . import queue\nfrom .. import __version__\n"
        "if TYPE_CHECKING:\n    from .queue import Queue\nif typing.TYPE_CHECKING:\n"
        "    import trioq._wire\nelse:\n    import trioq._wire.messages\n"
        "def lazy():\n    from .. import streams\n"
    )
    found = list(imports_of(source, "trioq._client.client", False, known, "x.py"))
    trioq_targets = sorted({edge.target for edge in found if is_trioq(edge.target)})
    expected = ["trioq", "trioq._client.queue", "trioq._wire.messages", "trioq.streams"]
    assert trioq_targets == expected
    graph = adjacency(build_graph().edges)
    assert "trioq._wire.messages" in graph.get("trioq._client.queue", ())
    assert "trioq._wire.transport" in graph.get("trioq._scheduler.server", ())
    assert COMPILED_CORE in graph.get("trioq._impl", ())  # ``from . import _core``, in a function
    assert "trioq._client.client" not in graph.get("trioq", ())  # only under TYPE_CHECKING there


def test_cycle_finder_reports_a_synthetic_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert import_cycles(graph) == [["a", "b", "c"], ["e"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}}) == []


def test_no_runtime_import_cycle_among_trioq_modules() -> None:
    graph = build_graph()
    report = []
    for cycle in import_cycles(adjacency(graph.edges)):
        inside = [e for e in graph.edges if e.source in cycle and e.target in cycle]
        lines = [f"    {e.path}:{e.line}: {e.source} -> {e.target}" for e in inside]
        report.append(f"cycle among {', '.join(cycle)}:\n" + "\n".join(lines))
    assert not report, "run-time import cycles:\n" + "\n".join(report)


def test_imports_point_only_down_the_layers() -> None:
    violations = []
    for edge in build_graph().edges:
        source, target = layer_of(edge.source), layer_of(edge.target)
        if source is None or target is None or target not in ALLOWED_LAYERS[source]:
            where = f"{edge.path}:{edge.line}: {edge.source} ({source})"
            violations.append(f"{where} imports {edge.target} ({target})")
    assert not violations, "imports against the layer order:\n" + "\n".join(violations)


def test_scheduler_never_reaches_a_pickler() -> None:
    graph = build_graph()
    imports = adjacency(graph.edges)
    pickle_imports = {
        e.source: e for e in graph.externals if e.target.split(".")[0] in PICKLE_MODULES
    }
    scheduler = sorted(m for m in graph.modules if layer_of(m) == "scheduler")
    assert "trioq._scheduler.server" in scheduler
    problems = []
    for module in scheduler:
        reached = runtime_closure(imports, module)
        if PICKLER in reached:
            problems.append(f"{module} reaches {PICKLER}")
        for found in sorted(reached & pickle_imports.keys()):
            edge = pickle_imports[found]
            problems.append(f"{module} reaches {found}, which imports {edge.target} ({edge.path})")
    assert not problems, "\n".join(problems)


def test_modules_stay_under_the_line_limit() -> None:
    offenders = []
    for path in python_files():
        lines = len(path.read_text().splitlines())
        exempt = path.parent == PACKAGE_DIR and path.name in LINE_LIMIT_EXEMPT
        if lines > MAX_MODULE_LINES and not exempt:
            offenders.append(f"{path.relative_to(PACKAGE_DIR.parent)}: {lines} lines")
    assert not offenders, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(offenders)


def test_top_level_package_holds_at_most_ten_modules() -> None:
    modules = sorted(path.name for path in PACKAGE_DIR.glob("*.py"))
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, f"{len(modules)} modules in trioq/: {modules}"


def test_every_subpackage_has_an_init_with_a_docstring() -> None:
    folders = sorted({path.parent for path in python_files()} - {PACKAGE_DIR})
    assert folders, "expected subpackages under trioq/"
    missing = []
    for folder in folders:
        init = folder / "__init__.py"
        if not init.exists() or not ast.get_docstring(ast.parse(init.read_text())):
            missing.append(str(folder.relative_to(PACKAGE_DIR.parent)))
    assert not missing, f"subpackages without a documented __init__.py: {missing}"
