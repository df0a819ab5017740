"""The package's shape, held by tests: imports run one way (entry points -> pipeline -> parts ->
components), nothing below the pipeline imports it, and the tables that must agree do."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import musicldm_core

PACKAGE = Path(musicldm_core.__file__).parent
ENTRY_POINTS = {"__init__", "__main__", "cli", "batch", "serve"}


def _imports() -> dict:
    """module -> the package modules it imports anywhere (top level, inside functions, TYPE_CHECKING)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        package = name.rsplit(".", 1)[0] if "." in name else ""
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if package else []
                stem = ".".join([p for p in base if p] + ([node.module] if node.module else []))
                targets.update([stem] if node.module else [f"{stem}.{a.name}".lstrip(".") for a in node.names])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("musicldm_core."):
                targets.add(node.module[len("musicldm_core."):])
        graph[name.removesuffix(".__init__")] = {t.removesuffix(".__init__") for t in targets if t}
    return graph


def test_nothing_below_the_pipeline_imports_it():
    importers = sorted(m for m, targets in _imports().items() if "pipeline" in targets)
    assert set(importers) <= ENTRY_POINTS, f"modules below the pipeline import it: {importers}"


def test_no_import_circles():
    graph = _imports()
    state: dict = {}

    def visit(module, path):
        if state.get(module) == "open":
            raise AssertionError(f"import circle: {' -> '.join(path + [module])}")
        if state.get(module) != "done":
            state[module] = "open"
            for target in graph.get(module, ()):
                visit(target, path + [module])
            state[module] = "done"

    for module in graph:
        visit(module, [])


def test_call_signature_is_the_options_order():
    """__call__ hands diffusers' arguments to Options by position: the orders must agree."""
    from musicldm_core.options import Options
    from musicldm_core.pipeline import MusicLDMPipeline

    params = [p for p in inspect.signature(MusicLDMPipeline.__call__).parameters if p not in ("self", "beyond")]
    fields = [f.name for f in dataclasses.fields(Options)]
    assert fields[:len(params)] == params
    defaults = {f.name: f.default for f in dataclasses.fields(Options)}
    for name, p in inspect.signature(MusicLDMPipeline.__call__).parameters.items():
        if name in defaults:
            assert p.default == defaults[name], name


def test_activation_names_agree():
    from musicldm_core.clap_config import ACTIVATIONS
    from musicldm_core.layers import ACTIVATIONS as FUNCTIONS

    assert set(ACTIVATIONS) == set(FUNCTIONS)
