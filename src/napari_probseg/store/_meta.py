"""Identifiers and JSON-able metadata records of the project store."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from napari_probseg.core._serialize import to_jsonable as _to_jsonable
from napari_probseg.core._serialize import utc_now  # noqa: F401  (the one timestamp)
from napari_probseg.store._errors import InvalidIdentifierError

#: Schema version written into the root attributes (``attributes.probseg.schema_version``).
SCHEMA_VERSION = 1

#: Rater roles / expertise levels.
ROLES = ("expert", "resident", "trainee", "other")

#: Tools commonly recorded by the annotation panel (other short names are accepted too).
KNOWN_TOOLS = ("brush", "eraser", "polygon", "fill", "accepted_hypothesis", "consensus", "import")

_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TOOL_RE = re.compile(r"[A-Za-z0-9 ._:+-]{1,64}")


def validate_identifier(value: Any, name: str) -> str:
    """Return ``value`` if it is a safe identifier, else raise :class:`InvalidIdentifierError`.

    Identifiers are 1 to 64 characters among letters, digits, ``.``, ``_`` and ``-``, do not start
    with ``.`` or ``-`` and are never ``.`` or ``..``; they are therefore safe as a single path
    component on every platform.
    """
    if not isinstance(value, str):
        raise InvalidIdentifierError(
            f"{name}: expected a string identifier, got {type(value).__name__}"
        )
    if not _ID_RE.fullmatch(value) or value[0] in ".-" or value[-1] == "." or value in (".", ".."):
        raise InvalidIdentifierError(
            f"{name}: {value!r} is not a valid identifier (1-64 letters, digits, '.', '_' or '-', "
            "not starting with '.' or '-', not ending with '.')"
        )
    if value.upper().split(".")[0] in _WINDOWS_RESERVED:
        raise InvalidIdentifierError(
            f"{name}: {value!r} is a reserved device name on Windows (CON, PRN, AUX, NUL, "
            "COM0-9, LPT0-9); choose another identifier"
        )
    return value


def check_case_collision(value: str, existing: Any, name: str) -> str:
    """Refuse ``value`` when an ``existing`` identifier differs from it only in letter case
    (they would be one folder on the case-insensitive file systems of Windows and macOS)."""
    for other in existing:
        if other != value and other.lower() == value.lower():
            raise InvalidIdentifierError(
                f"{name}: {value!r} differs from the existing {other!r} only in letter case; "
                "they collide on Windows and macOS file systems"
            )
    return value


def zarr_children(base: Any, name: str) -> list[str]:
    """Sorted names of the zarr nodes directly under ``base`` whose names are valid identifiers.

    Anything else there (a stray file, a hostile name, a half-written node without ``zarr.json``)
    is skipped; ``name`` only labels the identifier kind.
    """
    from pathlib import Path

    base = Path(base)
    if not base.is_dir():
        return []
    out = []
    for entry in base.iterdir():
        try:
            validate_identifier(entry.name, name)
        except ValueError:
            continue
        if (entry / "zarr.json").is_file():
            out.append(entry.name)
    return sorted(out)


# Device names that cannot be file names on Windows.
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL"] + [f"COM{i}" for i in range(10)] + [f"LPT{i}" for i in range(10)]
)


def to_jsonable(value: Any, name: str = "metadata") -> Any:
    """Return ``value`` as plain JSON types; NaN/Inf raise (stored metadata must round-trip).

    The package's one conversion (:func:`napari_probseg.core._serialize.to_jsonable`) with
    ``nonfinite="raise"``.

    Raises
    ------
    ValueError
        Naming ``name`` if ``value`` cannot be represented as JSON (or holds NaN/Inf).
    """
    return _to_jsonable(value, nonfinite="raise", name=name)


@dataclass(frozen=True)
class AnnotationVersion:
    """Metadata of one committed version of one rater's annotation of one image.

    ``version`` numbers start at 1 and grow by one per commit of that rater on that image.
    ``based_on`` is the version the edit started from as the caller declared it
    (``parent_version`` of :meth:`ProjectStore.save_annotation`), ``previous`` the rater's latest
    version when the commit happened; ``conflict`` is True when they differ (a stale edit, kept as
    a new version rather than overwriting the newer one).
    """

    image_id: str
    rater: str
    version: int
    role: str
    tools: tuple[str, ...]
    time_spent_s: float
    source_run: str | None
    source_sample: int | None
    note: str
    created: str
    started: str | None
    based_on: int | None
    previous: int | None
    conflict: bool
    shape: tuple[int, ...]
    dtype: str
    labels: tuple[int, ...]
    content_hash: str
    chunks_written: int = 0
    chunks_linked: int = 0
    bytes_written: int = 0
    software: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def parent_version(self) -> int | None:
        """The version this edit started from (alias of ``based_on``)."""
        return self.based_on

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict (tuples become lists)."""
        return to_jsonable(dataclasses.asdict(self), "AnnotationVersion")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnnotationVersion:
        """Inverse of :meth:`to_dict`; raises ``KeyError``/``TypeError``/``ValueError`` if malformed."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["tools"] = tuple(kwargs["tools"])
        kwargs["shape"] = tuple(int(s) for s in kwargs["shape"])
        kwargs["labels"] = tuple(int(s) for s in kwargs["labels"])
        kwargs["version"] = int(kwargs["version"])
        return cls(**kwargs)


@dataclass(frozen=True)
class DraftInfo:
    """Metadata of a rater's autosaved draft (unsaved work recovered after a crash)."""

    image_id: str
    rater: str
    saved: str
    based_on: int | None
    note: str
    content_hash: str
    shape: tuple[int, ...]
    dtype: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return to_jsonable(dataclasses.asdict(self), "DraftInfo")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DraftInfo:
        """Inverse of :meth:`to_dict`."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["shape"] = tuple(int(s) for s in kwargs["shape"])
        return cls(**kwargs)


@dataclass(frozen=True)
class Problem:
    """One finding of :meth:`ProjectStore.verify`.

    ``severity`` is ``"error"`` (committed data or its metadata is damaged, or derived state is
    wrong) or ``"warning"`` (leftovers of an interrupted write, stale derived state that opening the
    store read-write repairs). ``repaired`` tells whether ``verify(repair=True)`` fixed it.
    """

    severity: str
    path: str
    message: str
    repairable: bool = False
    repaired: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        tag = " (repaired)" if self.repaired else (" (repairable)" if self.repairable else "")
        return f"{self.severity}: {self.path}: {self.message}{tag}"


def check_role(role: Any) -> str:
    """Validate a rater role (one of :data:`ROLES`)."""
    if role not in ROLES:
        raise ValueError(f"role: expected one of {', '.join(map(repr, ROLES))}, got {role!r}")
    return role


def check_tools(tools: Any) -> tuple[str, ...]:
    """Validate the list of tools used (short names such as those of :data:`KNOWN_TOOLS`)."""
    if isinstance(tools, str):
        tools = (tools,)
    out = tuple(tools)
    for t in out:
        if not isinstance(t, str) or not _TOOL_RE.fullmatch(t):
            raise ValueError(
                f"tools: {t!r} is not a short tool name (1-64 letters, digits, ._:+- )"
            )
    return out


def check_time_spent(value: Any) -> float:
    """Validate a time spent in seconds (finite, >= 0)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"time_spent_s: expected seconds as a number, got {value!r}") from None
    if not math.isfinite(out) or out < 0:
        raise ValueError(f"time_spent_s: expected a finite number >= 0, got {value!r}")
    return out
