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

__all__ = ["AGGREGATIONS", "AggregateScore", "MapAggregator", "aggregate", "patch_means"]

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
    inner = sat[(slice(1, None),) * d]
    inner[...] = arr
    for ax in range(d):  # in place: the table and the result are the only copies of the map
        np.cumsum(inner, axis=ax, out=inner)
    out_shape = tuple(s - p + 1 for s, p in zip(arr.shape, sizes))
    total = np.zeros(out_shape)
    # Inclusion-exclusion over the 2^d corners of each box.
    for corner in itertools.product((0, 1), repeat=d):
        idx = tuple(
            slice(p, p + m) if upper else slice(0, m)
            for upper, p, m in zip(corner, sizes, out_shape)
        )
        if (d - sum(corner)) % 2:
            np.subtract(total, sat[idx], out=total)
        else:
            np.add(total, sat[idx], out=total)
    total /= math.prod(sizes)
    return total


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
    acc = MapAggregator(
        method, shape=arr.shape, masked=sel is not None, patch_size=patch_size, threshold=threshold
    )
    acc.add(arr, sel)
    return acc.result()


class MapAggregator:
    """One aggregation of a map read in blocks of rows (its first axis), in order.

    :func:`aggregate` is the one-block case; the image summary feeds a map stored on disk block
    by block (:class:`napari_probseg.core._blocks.RowBlocks`) and gets the same score (sums to
    float rounding; ``patch_max`` keeps the last ``patch - 1`` rows between blocks).

    Parameters
    ----------
    method : str
        One of :data:`AGGREGATIONS` (see :func:`aggregate`).
    shape : tuple of int
        The whole map's shape.
    masked : bool
        Whether :meth:`add` gets a mask (required for ``"foreground_normalized"``).
    patch_size, threshold
        As in :func:`aggregate`.
    """

    def __init__(
        self,
        method: str,
        *,
        shape: tuple[int, ...],
        masked: bool = False,
        patch_size: int | tuple[int, ...] | None = None,
        threshold: float | None = None,
    ) -> None:
        check_choice(method, "method", AGGREGATIONS)
        self.method = method
        self.shape = tuple(int(s) for s in shape)
        self.masked = bool(masked)
        if method == "foreground_normalized" and not masked:
            raise ValueError("mask: required for method 'foreground_normalized' (the foreground)")
        if method == "patch_max" and masked:
            raise ValueError("mask: not used by method 'patch_max'; crop the map instead")
        self.sizes = _patch_size(patch_size, self.shape) if method == "patch_max" else None
        if method.startswith("thresholded"):
            if threshold is None or not math.isfinite(float(threshold)):
                raise ValueError(
                    f"threshold: required finite number for {method!r}, got {threshold!r}"
                )
            threshold = float(threshold)
        self.threshold = threshold
        self._rows = 0
        self._sum_all = 0.0
        self._sum = 0.0  # over the mask (or every voxel)
        self._count = 0
        self._above_sum = 0.0
        self._above = 0
        self._best: tuple[float, tuple[int, ...]] | None = None
        self._tail = np.zeros((0, *self.shape[1:]))

    def add(self, block: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Add the next rows ``block`` (float, shape ``(rows, *shape[1:])``) and their mask."""
        if (mask is None) == self.masked:
            raise ValueError("mask: give one with every block, or none with any")
        values = block if mask is None else block[mask]
        self._rows += block.shape[0]
        if self.method == "foreground_normalized":
            self._sum_all += float(block.sum())
        self._sum += float(values.sum())
        self._count += int(values.size)
        if self.threshold is not None:
            above = values[values > self.threshold]
            self._above += int(above.size)
            self._above_sum += float(above.sum())
        if self.sizes is not None:
            self._add_patches(block)

    def _add_patches(self, block: np.ndarray) -> None:
        # Patches straddle blocks: keep the last p0 - 1 rows and prepend them to the next block.
        p0 = self.sizes[0]
        rows = np.concatenate([self._tail, block]) if len(self._tail) else block
        first = self._rows - rows.shape[0]  # row of rows[0] in the whole map
        if rows.shape[0] >= p0:
            means = patch_means(rows, self.sizes)
            i = np.unravel_index(int(np.argmax(means)), means.shape)
            # strictly greater: ties keep the first patch in C order, as np.argmax does
            if self._best is None or means[i] > self._best[0]:
                self._best = (float(means[i]), (first + int(i[0]), *(int(j) for j in i[1:])))
        self._tail = rows[max(0, rows.shape[0] - (p0 - 1)) :] if p0 > 1 else rows[:0]

    def result(self) -> AggregateScore:
        """The score over every row added (all of the map's rows must have been added)."""
        if self._rows != self.shape[0]:
            raise ValueError(f"umap: {self._rows} of {self.shape[0]} rows were aggregated")
        size = math.prod(self.shape)
        method = self.method
        where = f"all {size} voxels" if not self.masked else f"the {self._count} voxels of the mask"
        params: dict[str, Any] = {}
        if method == "mean":
            value = self._sum / self._count if self._count else float("nan")
            text = f"mean of the map over {where}"
        elif method == "sum":
            value = self._sum
            text = f"sum of the map over {where}"
        elif method == "foreground_normalized":
            fg = self._count
            value = self._sum_all / fg if fg else float("nan")
            params["foreground_voxels"] = fg
            text = (
                f"sum of the map over all {size} voxels divided by the foreground size "
                f"({fg} voxels)"
            )
        elif method == "patch_max":
            value, start = self._best
            params.update(patch_size=list(self.sizes), argmax=list(start))
            text = (
                f"largest mean of the map over any {'×'.join(map(str, self.sizes))} patch "
                f"(first at {tuple(start)})"
            )
        else:
            count = self._above
            params["threshold"] = self.threshold
            params["voxels_above"] = count
            if method == "thresholded_mean":
                value = self._above_sum / count if count else 0.0
                text = (
                    f"mean of the map values above {self.threshold:g} ({count} of {where}; "
                    "0 when none)"
                )
            else:
                value = count / self._count if self._count else float("nan")
                text = f"share of {where} whose map value is above {self.threshold:g}"
        return AggregateScore(value=float(value), method=method, params=params, description=text)
