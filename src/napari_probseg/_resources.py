"""Locate the bundled ``resources/`` folder (models, sample files).

In a wheel the folder is installed as ``napari_probseg/resources``; in a source checkout (editable
install) it sits at the repository root, two levels above this package.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def resources_root() -> Path:
    """Return the directory holding the bundled resources.

    Raises
    ------
    FileNotFoundError
        If neither the installed nor the source-checkout location exists.
    """
    candidates = (_PACKAGE_DIR / "resources", _PACKAGE_DIR.parents[1] / "resources")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        "napari-probseg resources not found; looked in " + ", ".join(str(c) for c in candidates)
    )


def resource_path(*parts: str) -> Path:
    """Return the path of a bundled resource, e.g. ``resource_path("models", "unet2d.json")``."""
    return resources_root().joinpath(*parts)
