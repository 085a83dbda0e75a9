"""MONAI bundles as sampling methods (placeholder, filled below)."""

from __future__ import annotations

from pathlib import Path


def is_monai_bundle(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "configs" / "metadata.json").is_file()
