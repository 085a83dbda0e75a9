"""What the run panel offers (models, methods, devices) and how errors are worded. No Qt here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The model-list entry that opens a file dialog.
LOAD_CARD = "load model card…"


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model list.

    Attributes
    ----------
    label : str
        Shown in the list, e.g. ``"lesions2d (2D)"``.
    key : str
        What ``models.load_method`` is given: a bundled model's name or a card's path.
    methods : tuple of str
        Methods the model supports, its default first.
    spatial_dims : int
    """

    label: str
    key: str
    methods: tuple[str, ...]
    spatial_dims: int


def _choice(card: Any, key: str) -> ModelChoice:
    methods = list(getattr(card, "available_methods", None) or card.methods)
    default = getattr(card, "default_method", None)
    if default in methods:
        methods.remove(default)
        methods.insert(0, default)
    return ModelChoice(
        label=f"{card.name} ({card.spatial_dims}D)",
        key=key,
        methods=tuple(methods),
        spatial_dims=int(card.spatial_dims),
    )


def bundled_choices() -> list[ModelChoice]:
    """Return the bundled models (empty when none are installed)."""
    from napari_probseg import models
    from napari_probseg.models.cards import ModelCard, load_card

    if not hasattr(models, "bundled_models"):
        return []
    found = models.bundled_models()
    items = found.values() if isinstance(found, Mapping) else found
    choices = []
    for item in items:
        card = item if isinstance(item, ModelCard) else load_card(item)
        choices.append(_choice(card, card.name))
    return choices


def card_choice(path: str | Path) -> ModelChoice:
    """Read and validate a model card file and return its list entry.

    Raises
    ------
    ValueError, OSError
        The card is invalid or cannot be read (message says why).
    """
    from napari_probseg.models.cards import load_card

    card = load_card(path)
    choice = _choice(card, str(Path(path).resolve()))
    return ModelChoice(
        f"{card.name} ({card.spatial_dims}D, {Path(path).name})",
        choice.key,
        choice.methods,
        choice.spatial_dims,
    )


def available_devices() -> list[str]:
    """Return ``"auto"`` and the devices present: ``"cuda"``, ``"mps"``, ``"cpu"``."""
    import torch

    devices = ["auto"]
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def describe_error(exc: BaseException) -> str:
    """Return a one-line cause for a failed run, with what to do where it is clear.

    Out-of-memory errors suggest fewer samples or the CPU; other errors keep their message, which
    in this package starts with the name of the bad argument.
    """
    from napari_probseg._napari._runner import JobError
    from napari_probseg.engine._device import is_out_of_memory

    if isinstance(exc, JobError) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if is_out_of_memory(exc):
        return (
            f"out of memory on the device ({text[:120]}): lower the number of samples, "
            "or choose the CPU"
        )
    if isinstance(exc, FileNotFoundError):
        return f"file not found: {text}"
    if isinstance(exc, ValueError | OSError | MemoryError):
        return text
    return f"{type(exc).__name__}: {text}"
