"""Input normalization as named by a model card (shared by the engine and ``data.StoreDataset``).

The engine re-exports these functions from ``napari_probseg.engine``.

A specification is ``None``/``"none"``, a mode name, or a mapping with a ``"kind"`` key (the model
card's spelling; ``"mode"`` and ``"type"`` are accepted too) and the mode's parameters:

- ``{"kind": "zscore"}``: ``(x - mean) / std`` per channel, with the image's own statistics, or the
  training set's when ``"mean"`` and ``"std"`` are given.
- ``{"kind": "percentile", "low": 1, "high": 99, "clip": false}``: maps the channel's low and
  high percentiles to 0 and 1 (``clip`` clips to [0, 1]); ``lower``/``upper`` are aliases.
- ``{"kind": "window", "center": 40, "width": 400}`` (or ``"window": [lo, hi]``): clips to the
  window and maps it to [0, 1] (Hounsfield units for CT).
- ``{"kind": "minmax"}``: maps the channel's minimum and maximum to 0 and 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

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

#: The normalization modes understood by :func:`normalize`.
MODES = ("none", "zscore", "percentile", "window", "minmax")


def parse_normalization(spec: Any) -> dict:
    """Return ``spec`` as a dict with a canonical ``"kind"`` key.

    Raises
    ------
    ValueError
        ``normalization: ...`` for an unknown mode or missing parameters.
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
    mode = _ALIASES.get(str(params["kind"]).lower().strip()) if params["kind"] else None
    if mode is None:
        raise ValueError(
            f"normalization: unknown kind {params['kind']!r}; expected one of {', '.join(MODES)}"
        )
    params["kind"] = mode
    if mode == "window" and "window" not in params and not {"center", "width"} <= set(params):
        raise ValueError("normalization: window needs 'center' and 'width' (or 'window': [lo, hi])")
    return params


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
        ``image: ...`` if it holds NaN/Inf; ``normalization: ...`` for a bad specification.
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
            lo_q = float(params.get("low", params.get("lower", 1.0)))
            hi_q = float(params.get("high", params.get("upper", 99.0)))
            lo, hi = np.percentile(ch, [lo_q, hi_q])
            x[c] = (ch - lo) / max(float(hi - lo), eps)
            if params.get("clip", False):
                np.clip(x[c], 0.0, 1.0, out=x[c])
        elif mode == "window":
            if "window" in params:
                lo, hi = (float(v) for v in params["window"])
            else:
                center, width = float(params["center"]), float(params["width"])
                lo, hi = center - width / 2, center + width / 2
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
    return float(np.asarray(value, dtype=float)[c])
