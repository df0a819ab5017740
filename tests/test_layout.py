"""The package's shape, held by tests: imports run one way (entry points -> pipeline -> parts ->
components), nothing below the pipeline imports it, and the tables that must agree do."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import musicldm_core

PACKAGE = Path(musicldm_core.__file__).parent
ROOT = PACKAGE.parent
PACKAGES = ("musicldm_core", "weights_convert")


def _graph() -> dict:
    """module -> the modules of either package it imports anywhere (top level, inside functions,
    TYPE_CHECKING), as dotted names from the repository root ("musicldm_core.unet", "weights_convert.original")."""
    graph = {}
    for top in PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            package = name.rsplit(".", 1)[0]
            targets = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    stem = ".".join(base + ([node.module] if node.module else []))
                    targets.update([stem] if node.module else [f"{stem}.{a.name}" for a in node.names])
                elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                    targets.update([node.module] + [f"{node.module}.{a.name}" for a in node.names])
                elif isinstance(node, ast.Import):
                    targets.update(a.name for a in node.names if a.name.split(".")[0] in PACKAGES)
            graph[name.removesuffix(".__init__")] = {t.removesuffix(".__init__") for t in targets}
    modules = set(graph)
    return {m: {t for t in targets if t in modules and t != m} for m, targets in graph.items()}


def _imports() -> dict:
    """musicldm_core's modules -> the musicldm_core modules each imports (names relative to the package)."""
    prefix = "musicldm_core."
    return {m[len(prefix):] if m != "musicldm_core" else "__init__": {t[len(prefix):] for t in targets
                                                                   if t.startswith(prefix)}
            for m, targets in _graph().items() if m.startswith("musicldm_core")}


def test_the_converters_depend_on_the_package_never_the_reverse():
    """weights_convert holds offline tools over musicldm_core; no module of musicldm_core imports them (the
    loader's name tables live in musicldm_core/names), and no model file imports a name table."""
    graph = _graph()
    back = sorted((m, t) for m, targets in graph.items() if m.startswith("musicldm_core")
                  for t in targets if t.startswith("weights_convert"))
    assert back == [], f"musicldm_core imports weights_convert: {back}"
    models = ("unet", "vae", "vocoder", "clap", "clap_text", "clap_audio", "layers")
    naming = sorted((m, t) for m in (f"musicldm_core.{x}" for x in models) for t in graph.get(m, ())
                    if t.startswith("musicldm_core.names"))
    assert naming == [], f"model files import name tables: {naming}"
    assert any(t.startswith("musicldm_core") for t in graph["weights_convert.original"])  # the scan sees imports


def _app(module: str) -> bool:
    """The entry points that face people: musicldm_core/app/ (and the package's own __init__, __main__)."""
    return module in ("__init__", "__main__", "app") or module.startswith("app.")


def test_nothing_below_the_pipeline_imports_it():
    importers = sorted(m for m, targets in _imports().items() if "pipeline" in targets)
    assert all(_app(m) for m in importers), f"modules below the pipeline import it: {importers}"


def test_the_model_never_imports_the_app():
    """The app (command line, batch mode, the page) sits in musicldm_core/app/ and depends on the model;
    no model module imports it back."""
    imports = _imports()
    back = sorted((m, t) for m, targets in imports.items() if not _app(m) for t in targets if _app(t))
    assert back == [], f"model modules import the app: {back}"
    assert any(t.startswith("app.") for t in imports["app.cli"])  # the scan sees the app's own imports


def test_no_import_circles():
    """Over both packages together (a circle through weights_convert counts too)."""
    graph = _graph()
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


def test_a_batch_item_holds_the_line_fields_of_the_one_request_table():
    """The request's fields are defined once (app/request.py); a batch item keeps its own field order (its
    manifest record's keys, unchanged for older folders), so its names and defaults are held to the table."""
    from musicldm_core.app.prompt_file import FIELDS, Item
    from musicldm_core.app.request import BY_NAME, fields_of

    fields = {f.name: f for f in dataclasses.fields(Item)}
    assert set(fields) - {"line", "id"} == set(fields_of("line")) == set(FIELDS) - {"id"}
    for name, f in fields.items():
        if f.default is not dataclasses.MISSING:
            assert f.default == BY_NAME[name].default, name
