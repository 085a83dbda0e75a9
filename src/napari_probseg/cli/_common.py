"""What the store sub-commands share (``evaluate``, ``calibrate``, ``rank``): one-line store
errors and opening a project store."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any


def store_errors(func: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """Report store errors (corruption, newer schema) as one line, exit code 1."""

    def wrapped(args: argparse.Namespace) -> int:
        from napari_probseg.cli import CLIError
        from napari_probseg.store import StoreError

        try:
            return func(args)
        except StoreError as exc:
            raise CLIError(f"store: {exc}", code=1) from None

    return wrapped


def open_store(path: Path, mode: str) -> Any:
    """Open the project store at ``path`` (``"r"`` or ``"r+"``); a folder that is not one is a
    ``FileNotFoundError`` naming it."""
    from napari_probseg.store import ProjectStore

    if not (Path(path) / "zarr.json").is_file():
        raise FileNotFoundError(f"store: {path} is not a project store")
    return ProjectStore.open(path, mode=mode)
