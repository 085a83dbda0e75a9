"""The layering rules of DESIGN.md, checked on the real modules.

`lint-imports` (make lint) checks the same contracts statically; this test also imports every module
in a fresh interpreter so that lazy imports at import time are caught.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import napari_probseg

PACKAGE_DIR = Path(napari_probseg.__file__).parent
GUI_MODULES = {"napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt"}

# Which top-level parts of the package each part may import (DESIGN.md "Architecture").
ALLOWED = {
    "core": {"core", "_version", "_resources"},
    "data": {"core", "data", "store", "_version", "_resources"},
    "models": {"core", "models", "data", "_version", "_resources"},
    "store": {"core", "store", "data", "_version", "_resources"},
    "engine": {"core", "data", "models", "store", "engine", "_version", "_resources"},
    "training": {
        "core",
        "data",
        "models",
        "store",
        "engine",
        "training",
        "evaluation",
        "_version",
        "_resources",
    },
    "evaluation": {
        "core",
        "data",
        "models",
        "store",
        "engine",
        "training",
        "evaluation",
        "_version",
        "_resources",
    },
}


def _python_files() -> list[Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            rel = path.relative_to(PACKAGE_DIR).parent.parts
            base = rel[: len(rel) - (node.level - 1)] if node.level > 1 else rel
            names.add(
                ".".join(("napari_probseg", *base, *(node.module or "").split("."))).rstrip(".")
            )
    return names


def test_only_napari_layer_imports_gui_packages():
    offenders = []
    for path in _python_files():
        part = path.relative_to(PACKAGE_DIR).parts[0]
        if part == "_napari":
            continue
        for name in _imports(path):
            if name.split(".")[0] in GUI_MODULES or name.startswith(
                "matplotlib.backends.backend_qt"
            ):
                offenders.append(f"{path.relative_to(PACKAGE_DIR)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_lower_layers_never_import_upper_layers():
    offenders = []
    for path in _python_files():
        part = path.relative_to(PACKAGE_DIR).parts[0].removesuffix(".py")
        allowed = ALLOWED.get(part)
        if allowed is None:
            continue
        for name in _imports(path):
            if name.startswith("napari_probseg."):
                target = name.split(".")[1]
                if target not in allowed:
                    offenders.append(f"{part}: {path.name} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_package_import_is_light():
    """``import napari_probseg`` (and the public array APIs) load neither torch nor Qt nor napari."""
    code = (
        "import sys, napari_probseg, importlib\n"
        "for m in ('napari_probseg.uncertainty', 'napari_probseg.metrics', 'napari_probseg.core'):\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except ModuleNotFoundError as e:\n"
        "        if e.name != m: raise\n"
        "heavy = [m for m in ('torch', 'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6', 'magicgui')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported: {out.stdout.strip()}"


def test_every_module_imports():
    """Every module of the package imports in a clean interpreter (catches broken lazy imports)."""
    names = [
        m.name
        for m in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="napari_probseg.")
        if not m.name.endswith("__main__")
    ]
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    result = subprocess.run(
        [sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
