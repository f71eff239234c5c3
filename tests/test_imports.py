"""The import graph of ``msvision`` (read with ``ast``, nothing imported): no cycle, and
inference imports nothing from training or from the command-line modules.

Every ``import`` counts, at module level and inside functions: a function-level import
closes a cycle as surely as a module-level one, only later. An edge goes to the module
named (``from msvision.data import batching`` to ``msvision.data.batching``, ``from
msvision.data.batching import collate`` to ``msvision.data.batching``); the implicit import
of a parent package is not an edge, so a package ``__init__`` that re-exports its
submodules is not a cycle with them.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "msvision"
# Inference imports nothing from training (docs/ARCHITECTURE.md, layering rules). Prefixes of importing modules ->
# prefixes of the modules they must not import: the inference package sits below its two
# command lines and beside training; the commands and the neutral modules inference reads
# checkpoints and class lists with import no training either.
FORBIDDEN = {
    "msvision.inference": ("msvision.train", "msvision.predict", "msvision.export"),
    "msvision.predict": ("msvision.train",),
    "msvision.export": ("msvision.train",),
    "msvision.checkpoint": ("msvision.train",),
    "msvision.data.classes": ("msvision.train",),
    # The section schemas prediction and export resolve their configs with.
    "msvision.config_sections": ("msvision.train",),
}
# The ground floor of configs knows no section: the schemas are passed in (msvision.config_sections).
CONFIG_GROUND_FLOOR = ("msvision.config", "msvision.config_schema")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: pathlib.Path, modules: set[str]) -> set[tuple[str, int]]:
    """``(module, line)`` of every msvision module that ``name`` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package of this module
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            # ``from a import b``: the submodule a.b when there is one, else a.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            # ``import a.b.c`` of a name that is not a module (an attribute): its longest module prefix.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("msvision") and target != name:
                out.add((target, node.lineno))
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported module: line of the first such import}}`` over ``msvision``."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        for target, line in sorted(_imports(name, path, set(modules)), key=lambda e: e[1]):
            edges.setdefault(target, line)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` with more than one module (each holds
    at least one cycle), sorted (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(components)


def test_the_parser_sees_function_level_and_relative_imports(tmp_path):
    modules = {"msvision.a", "msvision.b", "msvision.c", "msvision.pkg", "msvision.pkg.d"}
    source = tmp_path / "a.py"
    source.write_text("import os\nfrom msvision import b\n\ndef f():\n    from msvision.c import thing\n"
                      "    import msvision.pkg.d\n    from .pkg import d\n")
    assert {t for t, _ in _imports("msvision.a", source, modules)} == {"msvision.b", "msvision.c", "msvision.pkg.d"}
    assert import_cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b": 1}, "b": {"a": 1}, "c": {"d": 1}, "d": {"c": 1}}) == [["a", "b"], ["c", "d"]]
    assert import_cycles({"a": {"b": 1}, "b": {}, "c": {"a": 1, "b": 1}}) == []


def test_the_graph_covers_the_package():
    graph = import_graph()
    assert "msvision.inference" in graph and "msvision.train.loop" in graph
    # The CLIs sit on top of the package.
    assert any(m.startswith("msvision.inference") for m in graph["msvision.predict"])
    assert any(m.startswith("msvision.inference") for m in graph["msvision.export"])


def test_no_import_cycle():
    graph = import_graph()
    cycles = import_cycles(graph)
    where = ["; ".join(f"{a} imports {b} (line {graph[a][b]})" for a in c for b in sorted(graph[a]) if b in c)
             for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(where)


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("importer", sorted(FORBIDDEN))
def test_inference_imports_nothing_from_training(importer):
    graph = import_graph()
    assert any(_within(m, importer) for m in graph), f"no module {importer}"
    offending = [f"{module} imports {target} (line {line})"
                 for module, edges in graph.items() if _within(module, importer)
                 for target, line in edges.items() if any(_within(target, f) for f in FORBIDDEN[importer])]
    assert not offending, offending


@pytest.mark.parametrize("module", CONFIG_GROUND_FLOOR)
def test_the_config_ground_floor_imports_no_model_data_or_training_module(module):
    graph = import_graph()
    imported = sorted(graph[module])
    assert not [m for m in imported if any(_within(m, p) for p in ("msvision.models", "msvision.data",
                                                                     "msvision.train"))], imported
    assert set(imported) <= set(CONFIG_GROUND_FLOOR), imported  # nothing else of msvision either
