"""Image-level scores from an uncertainty map, always saying which aggregation was used.

Different aggregations rank images differently (a sum grows with the image and the structure's
boundary, a patch maximum finds one small doubtful spot), so every score carries its method,
parameters and a plain-words description (DESIGN.md).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_probseg.core._validation import check_choice, check_finite, to_numpy

__all__ = ["AGGREGATIONS", "AggregateScore", "aggregate", "patch_means"]

#: Aggregation methods accepted by :func:`aggregate`.
AGGREGATIONS: tuple[str, ...] = (
    "mean",
    "sum",
    "foreground_normalized",
    "patch_max",
    "thresholded_mean",
    "thresholded_share",
)


@dataclass(frozen=True)
class AggregateScore:
    """One image-level score.

    Attributes
    ----------
    value : float
        The score.
    method : str
        One of :data:`AGGREGATIONS`.
    params : dict
        The parameters used (JSON-able), e.g. ``{"patch_size": [8, 8], "argmax": [3, 5]}``.
    description : str
        What was computed, in plain words (for reports, tooltips and tables).
    """

    value: float
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def _patch_size(patch_size: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    if patch_size is None:
        raise ValueError("patch_size: required for method 'patch_max' (int or tuple of ints)")
    sizes = (patch_size,) * len(shape) if np.isscalar(patch_size) else tuple(patch_size)
    if len(sizes) != len(shape) or any(isinstance(p, bool) or int(p) != p or p < 1 for p in sizes):
        raise ValueError(
            f"patch_size: expected a positive int or {len(shape)} positive ints, got {patch_size!r}"
        )
    sizes = tuple(int(p) for p in sizes)
    if any(p > s for p, s in zip(sizes, shape)):
        raise ValueError(f"patch_size: {sizes} is larger than the map's shape {shape}")
    return sizes


def patch_means(umap: Any, patch_size: int | tuple[int, ...]) -> np.ndarray:
    """Mean of ``umap`` over every patch fully inside the image, via a summed-area table.

    Parameters
    ----------
    umap : ndarray or Tensor, shape (*spatial)
        A map with 1 to 3 axes (any number works).
    patch_size : int or tuple of int
        Patch edge (all axes) or one edge per axis; at most the map's shape.

    Returns
    -------
    ndarray, shape (s_i - p_i + 1 for each axis)
        ``out[i, j, ...]`` is the mean over the patch starting at ``(i, j, ...)``; the same as a
        "valid" box filter, at O(1) per patch whatever its size.

    Raises
    ------
    ValueError
        Invalid ``patch_size``.
    """
    arr = np.asarray(to_numpy(umap), np.float64)
    sizes = _patch_size(patch_size, arr.shape)
    d = arr.ndim
    sat = np.zeros(tuple(s + 1 for s in arr.shape))
    inner = arr
    for ax in range(d):
        inner = np.cumsum(inner, axis=ax)
    sat[(slice(1, None),) * d] = inner
    out_shape = tuple(s - p + 1 for s, p in zip(arr.shape, sizes))
    total = np.zeros(out_shape)
    # Inclusion-exclusion over the 2^d corners of each box.
    for corner in itertools.product((0, 1), repeat=d):
        idx = tuple(
            slice(p, p + m) if upper else slice(0, m)
            for upper, p, m in zip(corner, sizes, out_shape)
        )
        sign = -1.0 if (d - sum(corner)) % 2 else 1.0
        total += sign * sat[idx]
    return total / math.prod(sizes)


def aggregate(
    umap: Any,
    *,
    method: str,
    mask: Any = None,
    patch_size: int | tuple[int, ...] | None = None,
    threshold: float | None = None,
) -> AggregateScore:
    """Aggregate an uncertainty map into one image-level score.

    Parameters
    ----------
    umap : ndarray or Tensor, shape (*spatial)
        Uncertainty map (e.g. predictive entropy), 2D or 3D; moved to numpy, float64.
    method : str
        One of :data:`AGGREGATIONS`:

        - ``"mean"``: mean of the map (over ``mask`` if given);
        - ``"sum"``: sum of the map (over ``mask`` if given);
        - ``"foreground_normalized"``: sum of the map over the *whole* image divided by the
          number of foreground voxels in ``mask`` (required), so that large structures with
          long boundaries do not score high for their size alone; ``NaN`` for an empty mask;
        - ``"patch_max"``: the largest mean over any patch of ``patch_size`` (required) fully
          inside the image (summed-area table); ``params["argmax"]`` is the patch's start;
        - ``"thresholded_mean"``: mean of the values ``> threshold`` (required), 0 when none;
        - ``"thresholded_share"``: share of voxels whose value is ``> threshold``.
    mask : ndarray or Tensor of bool/int, shape (*spatial), optional
        Region (nonzero voxels): restricts "mean", "sum" and the thresholded methods; the
        foreground for "foreground_normalized"; not accepted by "patch_max".
    patch_size : int or tuple of int, optional
        Patch edge(s) for "patch_max".
    threshold : float, optional
        Threshold for the thresholded methods.

    Returns
    -------
    AggregateScore

    Raises
    ------
    ValueError
        Unknown ``method``; NaN/Inf in ``umap``; ``mask`` of another shape, missing or not
        accepted; missing or invalid ``patch_size`` / ``threshold``.
    """
    check_choice(method, "method", AGGREGATIONS)
    arr = np.asarray(to_numpy(umap), np.float64)
    if arr.ndim < 1:
        raise ValueError(f"umap: expected a map with spatial axes, got shape {arr.shape}")
    check_finite(arr, "umap")
    sel = None
    if mask is not None:
        if method == "patch_max":
            raise ValueError("mask: not used by method 'patch_max'; crop the map instead")
        sel = np.asarray(to_numpy(mask)) != 0
        if sel.shape != arr.shape:
            raise ValueError(f"mask: shape {sel.shape} differs from umap's {arr.shape}")
    elif method == "foreground_normalized":
        raise ValueError("mask: required for method 'foreground_normalized' (the foreground)")
    if method.startswith("thresholded"):
        if threshold is None or not math.isfinite(float(threshold)):
            raise ValueError(f"threshold: required finite number for {method!r}, got {threshold!r}")
        threshold = float(threshold)
    values = arr if sel is None else arr[sel]
    where = f"all {arr.size} voxels" if sel is None else f"the {values.size} voxels of the mask"
    params: dict[str, Any] = {}

    if method == "mean":
        value = float(values.mean()) if values.size else float("nan")
        text = f"mean of the map over {where}"
    elif method == "sum":
        value = float(values.sum())
        text = f"sum of the map over {where}"
    elif method == "foreground_normalized":
        fg = int(np.count_nonzero(sel))
        value = float(arr.sum() / fg) if fg else float("nan")
        params["foreground_voxels"] = fg
        text = (
            f"sum of the map over all {arr.size} voxels divided by the foreground size "
            f"({fg} voxels)"
        )
    elif method == "patch_max":
        sizes = _patch_size(patch_size, arr.shape)
        means = patch_means(arr, sizes)
        start = np.unravel_index(int(np.argmax(means)), means.shape)
        value = float(means[start])
        params.update(patch_size=list(sizes), argmax=[int(i) for i in start])
        text = (
            f"largest mean of the map over any {'×'.join(map(str, sizes))} patch "
            f"(first at {tuple(int(i) for i in start)})"
        )
    else:
        above = values > threshold
        count = int(np.count_nonzero(above))
        params["threshold"] = threshold
        params["voxels_above"] = count
        if method == "thresholded_mean":
            value = float(values[above].mean()) if count else 0.0
            text = f"mean of the map values above {threshold:g} ({count} of {where}; 0 when none)"
        else:
            value = count / values.size if values.size else float("nan")
            text = f"share of {where} whose map value is above {threshold:g}"
    return AggregateScore(value=value, method=method, params=params, description=text)
