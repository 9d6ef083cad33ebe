"""The import direction between the layers of cnnlens, read from the source with ``ast``.

``LAYERS`` is the table: each layer (a subpackage or top-level module of ``cnnlens``) and
the layers it may import. ``EXCEPTIONS`` lists imports that break the table today, each
with its reason, to be removed when the code is moved; an exception that is no longer
needed fails the test, so the list only shrinks. A new package gets a row in ``LAYERS``.
Keep docs/architecture.md (the same rules in words) in step with this table.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnlens"

BASE = {"errors", "_version"}  # what every layer may import
LIBRARY = {"core", "methods", "models", "data", "metrics", "prototypes", "viz", "report", "targets"}
# what sits on top: command line, end-to-end pipelines and the package's public face
TOP = {"cli", "pipelines", "assess", "dataset", "serve", "cnnlens"}

LAYERS: dict[str, set[str]] = {
    "errors": set(),
    "_version": set(),
    "core": {"core"},
    "methods": {"core", "methods"},
    "targets": {"core", "targets"},  # the engine asks target objects by duck type
    "summary": {"core"},
    "api": {"core", "methods"},
    "data": {"core", "data"},
    "models": {"core", "models", "data"},  # checkpoints name their preprocessing
    "training": {"core", "models", "data"},
    "metrics": {"core", "methods", "data", "metrics", "api", "training"},
    "viz": {"core", "data", "viz"},
    "prototypes": {"core", "data", "prototypes", "viz", "report"},
    "report": {"core", "viz", "report"},
    # the top may use every layer; dataset (the store and engines) sits under assess, which
    # runs on it, so it imports no pipeline (its option parsers live in core)
    "dataset": LIBRARY | {"api", "summary", "training", "dataset"},
    "assess": LIBRARY | {"api", "summary", "training", "dataset", "assess"},
    "pipelines": LIBRARY
    | {"api", "summary", "training", "pipelines", "dataset", "assess", "cnnlens"},
    "serve": LIBRARY | {"api", "summary", "pipelines", "serve", "cnnlens"},
    "cli": LIBRARY | TOP | {"api", "summary", "training"},
    "cnnlens": {"api", "core", "methods", "summary"},
}

#: A method file imports the bases and the engine, never another family's file.
METHOD_SHARED = {"cnnlens.methods.base", "cnnlens.methods.engine"}

#: (importing module, imported module): reason. Each entry is a known violation to remove.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("cnnlens.viz.results", "cnnlens"): (
        "viz.compare explains (methods x images in one call); move it to the package face"
    ),
    ("cnnlens.report.render", "cnnlens"): (
        "report reads the package face (version/methods) through `import cnnlens`; "
        "import cnnlens._version / cnnlens.core.registry instead"
    ),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cnnlens"


def _imports(path: Path) -> set[str]:
    """The cnnlens modules ``path`` imports (at any depth of the file, lazy ones included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "cnnlens" and not node.level:
            # `from cnnlens import models` imports the subpackage; `import __version__` the face
            for alias in node.names:
                sub = SRC / alias.name
                is_module = sub.is_dir() or sub.with_suffix(".py").exists()
                found.add(f"cnnlens.{alias.name}" if is_module else "cnnlens")
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: use absolute imports (cnnlens.x), not relative ones")
    return {m for m in found if m == "cnnlens" or m.startswith("cnnlens.")}


def _edges() -> list[tuple[str, str]]:
    edges = []
    for path in sorted(SRC.rglob("*.py")):
        here = _module_name(path)
        edges.extend((here, target) for target in sorted(_imports(path)))
    return edges


EDGES = _edges()


def test_every_layer_is_in_the_table() -> None:
    layers = {_layer(m) for m, _ in EDGES} | {_layer(t) for _, t in EDGES}
    assert layers <= set(LAYERS), f"add these layers to LAYERS: {sorted(layers - set(LAYERS))}"


def test_layers_import_only_what_the_table_allows() -> None:
    wrong = []
    for here, target in EDGES:
        src, dst = _layer(here), _layer(target)
        if dst in BASE or dst in LAYERS[src] or (here, target) in EXCEPTIONS:
            continue
        wrong.append(f"{here} imports {target} ({src} may import {sorted(LAYERS[src])})")
    assert not wrong, "\n".join(wrong)


def test_core_imports_nothing_above_it() -> None:
    above = [(h, t) for h, t in EDGES if _layer(h) == "core" and _layer(t) not in {"core", *BASE}]
    assert not above


def test_library_layers_never_import_the_top() -> None:
    for here, target in EDGES:
        if _layer(here) in LIBRARY and (here, target) not in EXCEPTIONS:
            assert _layer(target) not in TOP, f"{here} imports {target}"


def test_a_method_file_imports_no_other_method_family() -> None:
    wrong = []
    for here, target in EDGES:
        if not here.startswith("cnnlens.methods.") or not target.startswith("cnnlens.methods"):
            continue
        if here in METHOD_SHARED and target in METHOD_SHARED:
            continue  # base stands on the engine
        if target.startswith(here + "_"):
            continue  # a family's own helper module (lrp -> lrp_rules)
        if target not in METHOD_SHARED:
            wrong.append(f"{here} imports {target}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("edge", sorted(EXCEPTIONS))
def test_every_exception_is_still_needed(edge: tuple[str, str]) -> None:
    assert edge in EDGES, f"{edge} no longer happens: remove it from EXCEPTIONS"
