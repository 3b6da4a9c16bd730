"""Enforce the layer rule `ui -> graph -> nodes -> engine` (DESIGN.md section 1) with an AST scan.

Checked for every package .py file (tests/, training/, bench/, examples/ and build dirs excluded), including
imports inside functions:
- engine imports nothing from nodes/graph/ui; nodes nothing from graph/ui; graph nothing from ui;
- graph never imports torch; nothing but ui imports gradio;
- intra-package imports are relative (no `import arnodes` / `from arnodes ...` inside the package).
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
EXCLUDED_DIRS = {"tests", "training", "bench", "examples", ".venv", "venv", "build", "dist", "__pycache__", "node_modules"}
LAYERS = ("engine", "nodes", "graph", "ui")  # each may import only itself and the layers before it
FORBIDDEN_THIRD_PARTY = {"graph": {"torch"}}
UI_ONLY = {"gradio"}


def package_files(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p in EXCLUDED_DIRS or p.startswith(".") or p.endswith(".egg-info") for p in parts[:-1]):
            continue
        out.append(path)
    return out


def _imports(tree: ast.AST, package: tuple[str, ...]):
    """Yield (line, kind, target): kind "absolute" with the top-level module, or "relative" with the
    in-package path (a tuple; None when it climbs above the package root)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, "absolute", alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.lineno, "absolute", (node.module or "").split(".")[0]
                continue
            if node.level - 1 > len(package):
                yield node.lineno, "relative", None
                continue
            base = package[:len(package) - (node.level - 1)]
            mod = tuple(node.module.split(".")) if node.module else ()
            if base + mod:
                yield node.lineno, "relative", base + mod
            else:  # `from .. import x` at the package root: each name is a module or attribute of the root
                for alias in node.names:
                    yield node.lineno, "relative", (alias.name,)


def check_source(rel_path: str, source: str) -> list[str]:
    """Layer violations of one file given by its path relative to the package root."""
    parts = tuple(Path(rel_path).parts)
    package, layer = parts[:-1], (parts[0] if len(parts) > 1 else None)
    problems = []
    for line, kind, target in _imports(ast.parse(source, filename=rel_path), package):
        where = f"{rel_path}:{line}"
        if kind == "absolute":
            if target == "arnodes":
                problems.append(f"{where}: absolute import of arnodes inside the package; use a relative import")
            if target in FORBIDDEN_THIRD_PARTY.get(layer, ()):
                problems.append(f"{where}: {layer}/ must not import {target}")
            if target in UI_ONLY and layer != "ui":
                problems.append(f"{where}: only ui/ may import {target}")
        elif target is None:
            problems.append(f"{where}: relative import climbs above the package root")
        elif layer in LAYERS and target[0] in LAYERS:
            if LAYERS.index(target[0]) > LAYERS.index(layer):
                problems.append(f"{where}: {layer}/ must not import from {target[0]}/ "
                                f"(layers: ui -> graph -> nodes -> engine)")
        elif layer in LAYERS and target[0] not in LAYERS and len(target) == 1:
            problems.append(f"{where}: {layer}/ imports {target[0]!r} from the package root, "
                            f"which sits above every layer")
    return problems


def find_violations(root: Path = REPO_ROOT) -> list[str]:
    problems = []
    for path in package_files(root):
        rel = path.relative_to(root).as_posix()
        problems += check_source(rel, path.read_text(encoding="utf-8"))
    return problems


def test_current_tree_respects_layers():
    files = package_files(REPO_ROOT)
    assert any(f.parts[-2:] == ("graph", "executor.py") for f in files)
    assert not any("tests" in f.relative_to(REPO_ROOT).parts for f in files)
    assert find_violations() == []


def test_checker_catches_violations():
    cases = {
        ("engine/x.py", "from ..nodes.base import Node"): "engine/ must not import from nodes/",
        ("engine/models/x.py", "from ...graph import validate"): "engine/ must not import from graph/",
        ("nodes/x.py", "def f():\n    from ..ui import app"): "nodes/ must not import from ui/",
        ("graph/x.py", "from ..ui.app import build_app"): "graph/ must not import from ui/",
        ("graph/x.py", "import torch.nn as nn"): "graph/ must not import torch",
        ("graph/x.py", "from torch import Tensor"): "graph/ must not import torch",
        ("nodes/x.py", "import gradio as gr"): "only ui/ may import gradio",
        ("engine/x.py", "from arnodes.engine import errors"): "absolute import of arnodes",
        ("nodes/x.py", "import arnodes.engine"): "absolute import of arnodes",
        ("engine/x.py", "from .... import y"): "climbs above the package root",
        ("engine/x.py", "from .. import ui"): "engine/ must not import from ui/",
        ("graph/x.py", "from .. import __version__"): "from the package root",
    }
    for (path, source), expected in cases.items():
        found = check_source(path, source)
        assert len(found) == 1 and expected in found[0], (path, source, found)


def test_checker_allows_the_right_direction():
    ok = {
        "ui/app.py": "import gradio as gr\nfrom ..graph import run_workflow\nfrom ..nodes.base import Node",
        "graph/x.py": "from ..nodes.base import Node\nfrom ..engine.errors import ArnodesError\nfrom . import cache",
        "nodes/x.py": "import torch\nfrom ..engine.models import var\nfrom .base import Node",
        "engine/models/x.py": "import torch\nfrom .. import layers\nfrom ..errors import ArnodesError",
        "__init__.py": "from .nodes import NODE_CLASS_MAPPINGS",
        "__main__.py": "from .graph import run_workflow\nfrom .ui.app import launch",
    }
    for path, source in ok.items():
        assert check_source(path, source) == [], path
