"""The package's layering: no import cycles, and no module imports one above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest_composable

PACKAGE = Path(pytest_composable.__file__).parent

# Top to bottom; a module may import only modules after it in this list (and the
# standard library, pytest, torch). The core plugin registers the distributed one.
DISTRIBUTED_LAYERS = [
    "distributed.plugin",
    "distributed._pool",
    "distributed._lockstep",
    "distributed._warm",
    "distributed._supervise",
    "distributed._fork_safety",
    "distributed._launched",
    "distributed._launched_world",
    "distributed._launched_faults",
    "distributed._launched_groups",
    "distributed._rank",
    "distributed._outcome",
    "distributed._fake",
    "distributed._hygiene",
    "distributed._protocol",
    "distributed._rank_args",
    "distributed._reports",
    "distributed._stacks",
    "distributed._policy",
    "distributed._launch_env",
    "distributed._options",
    "distributed.world",
    "distributed._seed",
    "distributed._mesh",
    "distributed._constants",
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports (at any depth of the file), by name."""
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            module = [*base, *(node.module.split(".") if node.module else [])]
            names = [".".join(module)] if node.module else []
            names += [".".join([*module, alias.name]) for alias in node.names]
            found.update(
                n
                for n in names
                if (PACKAGE / n.replace(".", "/")).with_suffix(".py").exists()
                or (PACKAGE / n.replace(".", "/") / "__init__.py").exists()
            )
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "pytest_composable."
        ):
            found.add(node.module.removeprefix("pytest_composable."))  # type: ignore[union-attr]
    found.discard("")
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "visiting"
        for target in sorted(graph.get(name, ())):
            assert state.get(target) != "visiting", " -> ".join([*path, name, target])
            if target not in state:
                visit(target, [*path, name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_distributed_modules_import_only_modules_below_them() -> None:
    graph = _graph()
    assert set(DISTRIBUTED_LAYERS) == {n for n in graph if n.startswith("distributed.")}
    for index, name in enumerate(DISTRIBUTED_LAYERS):
        above = set(DISTRIBUTED_LAYERS[: index + 1])
        wrong = {t for t in graph[name] if t in above and t != name}
        assert not wrong, f"{name} imports {sorted(wrong)}, which stand above it"


def test_only_the_core_plugin_imports_a_plugin_module() -> None:
    graph = _graph()
    importers = {n for n, targets in graph.items() if "distributed.plugin" in targets}
    assert importers == {"plugin"}
    assert not {n for n, targets in graph.items() if "plugin" in targets}
