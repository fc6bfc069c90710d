"""The architecture, checked: stages stand side by side on shared modules, and nothing imports in a circle.

Imports are read from the source (module level and inside functions alike), so a lazy import cannot hide a
dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pipeline
from pipeline.run import STAGES

PACKAGE = Path(pipeline.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """The pipeline modules a source file imports (`from pipeline import x` counts as pipeline.x when x is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in MODULES and name != "pipeline"}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
STAGE_MODULES = {stage.fn.__module__ for stage in STAGES}


def test_every_stage_is_a_module_named_after_it():
    assert {s.name: s.fn.__module__ for s in STAGES} == {
        "seeds": "pipeline.seeds", "adapters": "pipeline.adapters", "synthesize": "pipeline.synthesize",
        "filter": "pipeline.filtering",  # not pipeline.filter: a module named like the builtin confuses readers
        "train": "pipeline.train", "evaluate": "pipeline.evaluate"}


def test_no_stage_module_imports_another_stage_module():
    crossings = {stage: sorted(imported_modules(MODULES[stage]) & (STAGE_MODULES - {stage})) for stage in STAGE_MODULES}
    assert not {s: c for s, c in crossings.items() if c}, "a stage imports another stage: move what they share below both"


def test_shared_modules_import_no_stage():
    shared = set(MODULES) - STAGE_MODULES - {"pipeline.run", "pipeline.cli", "pipeline.jobs", "pipeline"}
    reaching_up = {m: sorted(imported_modules(MODULES[m]) & STAGE_MODULES) for m in shared}
    assert not {m: s for m, s in reaching_up.items() if s}


def test_the_pipeline_imports_in_no_circle():
    graph = {m: imported_modules(p) - {m} for m, p in MODULES.items()}
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return path + [m, n]
            if n not in state and (circle := visit(n, path + [m])):
                return circle
        state[m] = "done"
        return None

    circles = [c for m in sorted(graph) if m not in state and (c := visit(m, []))]
    assert not circles, f"import circle: {' -> '.join(circles[0])}"
