"""Registry of the bundled model cards (``resources/models/*.json``)."""

from __future__ import annotations

from pathlib import Path

from napari_probseg._resources import resource_path
from napari_probseg.models.cards import ModelCard, load_card

__all__ = ["bundled_model_dir", "bundled_models"]


def bundled_model_dir() -> Path:
    """Folder of the bundled cards and weights."""
    return resource_path("models")


def bundled_models() -> dict[str, ModelCard]:
    """Return the bundled model cards by name (sorted), read fresh from ``resources/models``.

    Returns
    -------
    dict of str to ModelCard
        Empty when no card is bundled (or the resources folder is missing).
    """
    try:
        folder = bundled_model_dir()
    except FileNotFoundError:
        return {}
    if not folder.is_dir():
        return {}
    cards = [load_card(p) for p in sorted(folder.glob("*.json")) + sorted(folder.glob("*.yaml"))]
    return {c.name: c for c in sorted(cards, key=lambda c: c.name)}
