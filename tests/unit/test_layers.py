"""The layering of ``orchestrator`` (docs/architecture.md), checked from the source: every
import, also those inside functions (but not ``if TYPE_CHECKING:`` blocks, which never run),
points down or sideways within a layer, and no import cycle exists."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "orchestrator"

LAYERS: dict[str, int] = {
    # 0: plain facts
    "orchestrator": 0,
    "orchestrator.errors": 0,
    "orchestrator.units": 0,
    "orchestrator.languages": 0,
    "orchestrator.paths": 0,
    "orchestrator.fsafe": 0,
    # 1: the sandbox and the model client, each knowing nothing above it
    "orchestrator.sandbox": 1,
    "orchestrator.llm": 1,
    # 2: settings, the policy and what they need; event types
    "orchestrator.presets": 2,
    "orchestrator.trust": 2,
    "orchestrator.policy": 2,
    "orchestrator.settings": 2,
    "orchestrator.events": 2,
    "orchestrator.approval": 2,
    "orchestrator.vision": 2,
    # 3: loading settings; records
    "orchestrator.loading": 3,
    "orchestrator.transcript": 3,
    "orchestrator.records": 3,
    "orchestrator.context": 3,
    "orchestrator.instruction_sources": 3,
    # 4: the loop
    "orchestrator.protocols": 4,
    "orchestrator.session": 4,
    "orchestrator.session_parts": 4,
    "orchestrator.drive": 4,
    # 5: adapters' cores
    "orchestrator.wiring": 5,
    "orchestrator.render": 5,
    "orchestrator.code_hider": 5,
    "orchestrator.replay": 5,
    "orchestrator.batch": 5,
    "orchestrator.instruction_view": 5,
    "orchestrator.chat": 6,
    # 6: the command line
    "orchestrator.cli_options": 6,
    "orchestrator.cli_common": 6,
    "orchestrator.cli": 6,
    "orchestrator.cli_batch": 6,
    "orchestrator.cli_replay": 6,
    "orchestrator.cli_doctor": 6,
    "orchestrator.cli_serve": 6,
    # 6: the HTTP server and MCP (adapters like the command line)
    "orchestrator.server": 6,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    while module not in LAYERS:
        if "." not in module:
            raise AssertionError(f"{module} has no layer in LAYERS: add it")
        module = module.rsplit(".", 1)[0]
    return LAYERS[module]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def run_time_imports(path: Path) -> set[str]:
    """The orchestrator modules ``path`` imports when it runs (any depth, any function)."""
    found: set[str] = set()
    inside = PACKAGE in path.parents
    package = module_name(path) if inside else "orchestrator"
    if inside and path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("orchestrator"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            if base.startswith("orchestrator"):
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    found.add(candidate if candidate in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if m in MODULES}


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}
GRAPH = {module_name(p): run_time_imports(p) for p in PACKAGE.rglob("*.py")}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_down(module: str) -> None:
    mine = layer_of(module)
    upward = sorted(other for other in GRAPH[module] if layer_of(other) > mine)
    assert not upward, f"{module} (layer {mine}) imports {upward} from above"


def test_the_sandbox_imports_nothing_above_it() -> None:
    for module, imports in GRAPH.items():
        if module.startswith("orchestrator.sandbox"):
            outside = {
                m for m in imports if not m.startswith("orchestrator.sandbox") and layer_of(m) != 0
            }
            assert not outside, f"{module} imports {sorted(outside)}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in ``graph`` (a package's own ``__init__`` and its modules do not count)."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def walk(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for other in sorted(graph.get(module, ())):
            if other == module or module.startswith(other + "."):
                continue
            if state.get(other) == 1:
                return [*path[path.index(other) :], other]
            if other not in state and (cycle := walk(other)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := walk(module)):
            return cycle
    return None


def test_no_import_cycles() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # control


def test_the_checker_finds_what_it_looks_for(tmp_path: Path) -> None:
    """Positive control: a function-local upward import and a TYPE_CHECKING one."""
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from orchestrator.cli import app\n"
        "def f():\n    from orchestrator.session import Session\n"
    )
    assert run_time_imports(source) == {"orchestrator.session"}


def test_no_module_is_over_700_lines() -> None:
    long = {
        module_name(p): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 700
    }
    assert not long, long
