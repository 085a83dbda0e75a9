"""The one JSON conversion and the one UTC timestamp of the package.

NaN policy (stated once, used everywhere): JSON has no NaN or infinity, so by default a
non-finite float becomes ``null`` (``None``) — a reader sees "undefined", never a string that
looks like a number. Where a non-finite value means corrupt data (store metadata that must
round-trip), ``nonfinite="raise"`` raises instead.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np

__all__ = ["NONFINITE_POLICIES", "to_jsonable", "utc_now"]

#: Accepted values of ``to_jsonable(..., nonfinite=)``.
NONFINITE_POLICIES = ("null", "raise")


def utc_now() -> str:
    """Return the current time as an ISO 8601 UTC timestamp.

    Always with microseconds and the ``+00:00`` suffix (``2026-01-02T03:04:05.000006+00:00``), so
    that stamps sort as strings and two stamps of one second still differ.
    """
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def to_jsonable(value: Any, *, nonfinite: str = "null", name: str = "value") -> Any:
    """Return ``value`` as plain JSON types (dict, list, str, int, float, bool, None).

    Parameters
    ----------
    value : Any
        Mappings (keys become ``str``), lists, tuples and sets (become lists), numpy arrays and
        scalars, paths (become ``str``), dataclasses and objects with ``to_dict()``.
    nonfinite : {"null", "raise"}, keyword-only
        What happens to NaN and ±Inf: ``"null"`` (default) makes them ``None``; ``"raise"``
        raises ``ValueError`` naming ``name``.
    name : str, keyword-only
        Name used in error messages (e.g. ``"metadata"``).

    Returns
    -------
    Any
        A value that ``json.dumps(..., allow_nan=False)`` accepts.

    Raises
    ------
    ValueError
        ``nonfinite`` unknown; a non-finite value with ``nonfinite="raise"``; a value of a type
        with no JSON form (named with ``name``).
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite: expected one of {NONFINITE_POLICIES}, got {nonfinite!r}")
    return _convert(value, nonfinite, name)


def _convert(value: Any, nonfinite: str, name: str) -> Any:
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isfinite(v):
            return v
        if nonfinite == "raise":
            raise ValueError(f"{name}: not JSON-able (non-finite number {v!r})")
        return None
    if isinstance(value, Mapping):
        return {str(k): _convert(v, nonfinite, name) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_convert(v, nonfinite, name) for v in value]
    if isinstance(value, np.ndarray):
        return _convert(value.tolist(), nonfinite, name)
    if isinstance(value, np.generic):
        return _convert(value.item(), nonfinite, name)
    if isinstance(value, PurePath):
        return str(value)
    if callable(getattr(value, "to_dict", None)):
        return _convert(value.to_dict(), nonfinite, name)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _convert(dataclasses.asdict(value), nonfinite, name)
    raise ValueError(f"{name}: not JSON-able ({type(value).__name__})")
