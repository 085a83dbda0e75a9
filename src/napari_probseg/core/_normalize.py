"""Input normalization as named by a model card: the one implementation.

Used by the engine (prediction), the data layer (``StoreDataset`` training items) and the model
card's validation (``models.cards``), which is why it lives in ``core``, below all three; the
engine and ``data`` re-export it.

A specification is ``None``/``"none"``, a kind name, or a mapping with a ``"kind"`` key (the model
card's spelling; ``"mode"`` and ``"type"`` are accepted too) and the kind's parameters:

- ``{"kind": "zscore"}``: ``(x - mean) / std`` per channel with the image's *own* statistics
  (per-image z-score: what real images of unknown scanner/camera gain need), or the training
  set's fixed statistics when both ``"mean"`` and ``"std"`` are given (a number, or one per
  channel).
- ``{"kind": "percentile", "low": 1, "high": 99, "clip": true}``: maps the channel's ``low`` and
  ``high`` percentiles to 0 and 1; ``clip`` (default false) clips to [0, 1] first, which makes the
  result robust to hot pixels and saturated regions; ``lower``/``upper`` are aliases.
- ``{"kind": "window", "center": 40, "width": 400}`` (or ``"window": [lo, hi]``): clips to the
  window and maps it to [0, 1] (Hounsfield units for CT: absolute, so not per image).
- ``{"kind": "minmax"}``: maps the channel's minimum and maximum to 0 and 1.
- ``{"kind": "none"}``: the image as it is (float32).

Any other key is an error (a typo must not silently change the preprocessing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["MODES", "normalize", "parse_normalization"]

_ALIASES = {
    "none": "none",
    "identity": "none",
    "zscore": "zscore",
    "z-score": "zscore",
    "z_score": "zscore",
    "standardize": "zscore",
    "percentile": "percentile",
    "percentiles": "percentile",
    "window": "window",
    "ct_window": "window",
    "ct": "window",
    "minmax": "minmax",
    "min_max": "minmax",
}

#: The normalization kinds understood by :func:`normalize`.
MODES = ("none", "zscore", "percentile", "window", "minmax")

# parameters each kind accepts (besides "kind")
_KEYS = {
    "none": set(),
    "zscore": {"mean", "std"},
    "percentile": {"low", "high", "lower", "upper", "clip"},
    "window": {"center", "width", "window"},
    "minmax": set(),
}


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"normalization.{name}: expected a number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"normalization.{name}: expected a finite number, got {value!r}")
    return out


def _numbers(value: Any, name: str) -> float | list[float]:
    """A number or a non-empty list of numbers (one per channel)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        if len(value) == 0:
            raise ValueError(f"normalization.{name}: expected a number or one per channel")
        return [_number(v, name) for v in value]
    return _number(value, name)


def parse_normalization(spec: Any) -> dict:
    """Return ``spec`` as a validated dict with a canonical ``"kind"`` key.

    Parameters
    ----------
    spec : None, str or mapping
        See the module docstring.

    Returns
    -------
    dict
        ``{"kind": kind, **parameters}``; numbers as Python floats, ``low``/``high`` and
        ``center``/``width`` spelled canonically.

    Raises
    ------
    ValueError
        ``normalization...: ...`` naming the bad field: an unknown kind or key, a missing or
        non-finite parameter, ``std <= 0``, percentiles outside ``0 <= low < high <= 100``,
        ``width <= 0`` or an empty window.
    """
    if spec is None:
        return {"kind": "none"}
    if isinstance(spec, str):
        params: dict = {"kind": spec}
    elif isinstance(spec, Mapping):
        params = dict(spec)
        if "kind" not in params:
            params["kind"] = params.pop("mode", params.pop("type", None))
    else:
        raise ValueError(f"normalization: expected None, a mode name or a mapping, got {spec!r}")
    raw_kind = params.pop("kind")
    mode = _ALIASES.get(raw_kind.lower().strip()) if isinstance(raw_kind, str) else None
    if mode is None:
        raise ValueError(
            f"normalization: unknown normalization.kind {raw_kind!r}; expected one of "
            f"{', '.join(MODES)}"
        )
    unknown = sorted(set(params) - _KEYS[mode])
    if unknown:
        raise ValueError(
            f"normalization: unknown key(s) {unknown} for kind {mode!r}; "
            f"expected {sorted(_KEYS[mode]) or 'none'}"
        )
    out: dict[str, Any] = {"kind": mode}
    if mode == "zscore":
        if ("mean" in params) != ("std" in params):
            raise ValueError(
                "normalization: a fixed-statistics zscore needs both 'mean' and 'std' "
                "(give neither for a per-image z-score)"
            )
        if "mean" in params:
            out["mean"] = _numbers(params["mean"], "mean")
            out["std"] = _numbers(params["std"], "std")
            if min(np.atleast_1d(out["std"])) <= 0:
                raise ValueError(f"normalization.std: expected > 0, got {params['std']!r}")
    elif mode == "percentile":
        low = _number(params.get("low", params.get("lower", 1.0)), "low")
        high = _number(params.get("high", params.get("upper", 99.0)), "high")
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(
                f"normalization.low/high: expected 0 <= low < high <= 100, got {low}, {high}"
            )
        clip = params.get("clip", False)
        if not isinstance(clip, (bool, np.bool_)):
            raise ValueError(f"normalization.clip: expected true or false, got {clip!r}")
        out.update(low=low, high=high, clip=bool(clip))
    elif mode == "window":
        if "window" in params:
            win = params["window"]
            if not isinstance(win, (list, tuple)) or len(win) != 2:
                raise ValueError(f"normalization.window: expected [lo, hi], got {win!r}")
            lo, hi = _number(win[0], "window"), _number(win[1], "window")
            if not lo < hi:
                raise ValueError(f"normalization.window: expected lo < hi, got {list(win)}")
            out["window"] = [lo, hi]
        elif {"center", "width"} <= set(params):
            out["center"] = _number(params["center"], "center")
            out["width"] = _number(params["width"], "width")
            if out["width"] <= 0:
                raise ValueError(f"normalization.width: expected > 0, got {params['width']!r}")
        else:
            raise ValueError(
                "normalization: window needs 'center' and 'width' (or 'window': [lo, hi])"
            )
    return out


def normalize(image: np.ndarray, spec: Any = None) -> np.ndarray:
    """Normalize a channel-first image for the network.

    Parameters
    ----------
    image : ndarray, shape (C, *spatial)
        Input image; statistics are computed per channel.
    spec : None, str or mapping
        The normalization (see the module docstring), usually ``card.normalization``.

    Returns
    -------
    ndarray of float32, shape (C, *spatial)

    Raises
    ------
    ValueError
        ``image: ...`` if it holds NaN/Inf or has fewer channels than fixed statistics;
        ``normalization...: ...`` for a bad specification.
    """
    params = parse_normalization(spec)
    arr = np.asarray(image)
    if not np.isfinite(arr).all():
        raise ValueError("image: contains NaN or Inf values")
    x = arr.astype(np.float64, copy=True)
    mode = params["kind"]
    eps = 1e-8
    for c in range(x.shape[0]):
        ch = x[c]
        if mode == "zscore":
            mean = _per_channel(params.get("mean"), c, float(ch.mean()))
            std = _per_channel(params.get("std"), c, float(ch.std()))
            x[c] = (ch - mean) / max(std, eps)
        elif mode == "percentile":
            lo, hi = np.percentile(ch, [params["low"], params["high"]])
            x[c] = (ch - lo) / max(float(hi - lo), eps)
            if params["clip"]:
                np.clip(x[c], 0.0, 1.0, out=x[c])
        elif mode == "window":
            if "window" in params:
                lo, hi = params["window"]
            else:
                lo = params["center"] - params["width"] / 2
                hi = params["center"] + params["width"] / 2
            x[c] = (np.clip(ch, lo, hi) - lo) / max(hi - lo, eps)
        elif mode == "minmax":
            lo, hi = float(ch.min()), float(ch.max())
            x[c] = (ch - lo) / max(hi - lo, eps)
    return x.astype(np.float32)


def _per_channel(value: Any, c: int, default: float) -> float:
    if value is None:
        return default
    if np.ndim(value) == 0:
        return float(value)
    values = np.asarray(value, dtype=float)
    if c >= len(values):
        raise ValueError(
            f"image: has more channels than the {len(values)} fixed normalization statistics"
        )
    return float(values[c])
