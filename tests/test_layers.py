"""pyergon's modules import only downward, and no module imports itself round a cycle.

The layers, lowest first; a module may import its own layer and those below it:

====================  ==========================================================================
layer                 modules
====================  ==========================================================================
base                  ``_version``, ``errors`` (the exception tree), ``clock``
core                  ``core.*``: value types and the flow state machine, pure, no I/O
storage               ``_hashing``, ``_hashing_data``, ``serialization``, ``storage.*``: payloads,
                      the backends
runtime               ``_context``, ``_interrupts``, ``_output``, ``_progress``, ``decorators``,
                      ``_fingerprint``, ``_code``, ``determinism``, ``executor.*``: running
                      flows, and which records today's code did not make
read and operate      ``history``, ``_history_frames``, ``_history_html``, ``_timeline_layout``,
                      ``_timeline_text``, ``management``, ``_rerun``, ``_values``, ``_replay``,
                      ``_artifact_gc``: records, DataFrames, HTML and text of a history, stored
                      values; cancel, resume, retry, fork, replay, rerun, gc, delete, prune
fronts                ``cli.*``, ``notebook.*``, ``_front`` (``pyergon.run``), ``demo``,
                      ``testing.*``, ``__main__``
façade                ``pyergon`` itself (``__init__``): re-exports; imported by no module
====================  ==========================================================================

Every import counts, including those inside functions (they run, only later); imports under
``if TYPE_CHECKING:`` do not (they never run). Importing a package counts as importing its
``__init__``; ``from package import module`` counts as importing that module too.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pyergon"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("pyergon._version", "pyergon.errors", "pyergon.clock")),
    ("core", ("pyergon.core",)),
    (
        "storage",
        ("pyergon._hashing", "pyergon._hashing_data", "pyergon.serialization", "pyergon.storage"),
    ),
    (
        "runtime",
        (
            "pyergon._context",
            "pyergon._interrupts",
            "pyergon._output",
            "pyergon._progress",
            "pyergon.decorators",
            "pyergon._fingerprint",
            "pyergon._code",
            "pyergon.determinism",
            "pyergon.executor",
        ),
    ),
    (
        "read and operate",
        (
            "pyergon.history",
            "pyergon._history_frames",
            "pyergon._history_html",
            "pyergon._timeline_layout",
            "pyergon._timeline_text",
            "pyergon.management",
            "pyergon._rerun",
            "pyergon._values",
            "pyergon._replay",
            "pyergon._artifact_gc",
        ),
    ),
    (
        "fronts",
        (
            "pyergon.cli",
            "pyergon.notebook",
            "pyergon._front",
            "pyergon._demo",
            "pyergon.testing",
            "pyergon.__main__",
        ),
    ),
    ("façade", ()),  # the root package only: see layer_of
)


@dataclass(frozen=True, slots=True)
class Import:
    """One import statement that runs: ``importer`` (at ``line``) imports ``imported``."""

    importer: str
    imported: str
    line: int

    def where(self) -> str:
        path = PACKAGE.parent / (self.importer.replace(".", "/"))
        source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        return f"{source.relative_to(PACKAGE.parent)}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.is_dir() or path.with_suffix(".py").is_file()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path) -> list[Import]:
    """The pyergon modules ``path`` imports, at any depth, outside ``if TYPE_CHECKING:``."""
    importer = module_name(path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    found: list[Import] = []

    def add(name: str, line: int) -> None:
        if (name == "pyergon" or name.startswith("pyergon.")) and name != importer:
            found.append(Import(importer, name, line))

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for statement in child.orelse:
                    visit(ast.Module(body=[statement], type_ignores=[]))
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, child.lineno)
            elif isinstance(child, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - child.level + 1]
                source = (
                    ".".join([*base, *([child.module] if child.module else [])])
                    if child.level
                    else child.module or ""
                )
                add(source, child.lineno)
                for alias in child.names:
                    if is_module(f"{source}.{alias.name}"):
                        add(f"{source}.{alias.name}", child.lineno)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of the layer ``module`` belongs to."""
    if module == "pyergon":
        return len(LAYERS) - 1
    for index, (_name, prefixes) in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index
    raise AssertionError(
        f"{module} is in no layer: add it to LAYERS in tests/test_layers.py (and its docstring)"
    )


def all_imports() -> dict[str, list[Import]]:
    return {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_belongs_to_a_layer() -> None:
    for module in all_imports():
        layer_of(module)


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{edge.where()} imports {edge.imported}: layer '{LAYERS[layer_of(edge.importer)][0]}' "
        f"may not import layer '{LAYERS[layer_of(edge.imported)][0]}'"
        for edges in all_imports().values()
        for edge in edges
        if layer_of(edge.imported) > layer_of(edge.importer)
    ]
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def find_cycle(graph: dict[str, list[Import]]) -> list[Import] | None:
    """One import cycle in ``graph`` as the imports that close it, or ``None``."""
    done: set[str] = set()
    path: list[Import] = []
    on_path: dict[str, int] = {}

    def walk(module: str) -> list[Import] | None:
        on_path[module] = len(path)
        for edge in graph.get(module, []):
            if edge.imported in on_path:
                return [*path[on_path[edge.imported] :], edge]
            if edge.imported not in done:
                path.append(edge)
                cycle = walk(edge.imported)
                if cycle is not None:
                    return cycle
                path.pop()
        del on_path[module]
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = walk(module)
            if cycle is not None:
                return cycle
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle(all_imports())
    assert cycle is None, "an import cycle:\n" + "\n".join(
        f"{edge.where()} imports {edge.imported}" for edge in cycle or []
    )


def test_the_checks_see_function_level_imports_and_skip_type_checking() -> None:
    graph = {
        "pyergon.a": [Import("pyergon.a", "pyergon.b", 3)],
        "pyergon.b": [Import("pyergon.b", "pyergon.a", 7)],
    }
    assert find_cycle(graph) == [graph["pyergon.a"][0], graph["pyergon.b"][0]]
    history = imports_of(PACKAGE / "history.py")
    assert "pyergon._history_html" in {edge.imported for edge in history}  # inside a method
    heartbeat = imports_of(PACKAGE / "executor" / "_heartbeat.py")
    assert "pyergon.executor._leases" not in {edge.imported for edge in heartbeat}  # TYPE_CHECKING
