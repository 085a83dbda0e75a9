"""Exceptions raised by the project store."""

from __future__ import annotations

from pathlib import Path


class StoreError(Exception):
    """Base class of project-store errors (bad store path, read-only store, lock timeout...)."""


class StoreVersionError(StoreError):
    """The store was written by a newer ``probseg`` schema than this version understands."""


class StoreCorruptionError(StoreError):
    """Stored data or metadata is damaged; ``path`` names the damaged file or directory."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class InvalidIdentifierError(ValueError):
    """An image, rater or run identifier is not a safe identifier (never used as a raw path)."""


class StoreLinkError(StoreError):
    """A store path is, or passes through, a symbolic link (or resolves outside the store).

    The store never follows links: every write and delete checks its target first, and opening a
    store that holds a link fails (``probseg store verify`` lists the links). ``path`` names it.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
