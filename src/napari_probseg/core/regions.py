"""The most uncertain regions of a map: threshold at a quantile, label, rank by integrated doubt.

Explainable uncertainty highlights only the few regions where the model is least sure, ranked so
that a reviewer can jump from one to the next (DESIGN.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from napari_probseg.core._validation import check_finite, to_numpy

__all__ = ["Region", "TopRegions", "top_regions"]


@dataclass(frozen=True)
class Region:
    """One connected region of high uncertainty.

    Attributes
    ----------
    rank : int
        1 for the region with the largest score.
    score : float
        Integrated uncertainty: the sum of the map over the region's voxels.
    size : int
        Number of voxels.
    bbox : tuple of slice
        Bounding box, one slice per spatial axis (``umap[bbox]`` crops it).
    centroid : tuple of float
        Mean voxel coordinate (unweighted), in (plane,) row, column order.
    mean : float
        Mean of the map over the region.
    max : float
        Maximum of the map over the region.
    label : int
        The region's value in :attr:`TopRegions.labels` (equal to ``rank``).
    """

    rank: int
    score: float
    size: int
    bbox: tuple[slice, ...]
    centroid: tuple[float, ...]
    mean: float
    max: float
    label: int


@dataclass(frozen=True)
class TopRegions:
    """Result of :func:`top_regions`.

    Attributes
    ----------
    regions : list of Region
        Ranked by decreasing score.
    labels : ndarray of int32, shape (*spatial)
        Labelled regions: voxel value ``r`` belongs to the region of rank ``r``, 0 elsewhere
        (ready for a napari Labels layer).
    highlight : ndarray of bool, shape (*spatial)
        Voxels at or above :attr:`threshold` (before dropping small regions).
    threshold : float
        The map value at the requested quantile.
    """

    regions: list[Region]
    labels: np.ndarray
    highlight: np.ndarray
    threshold: float


def top_regions(
    umap: Any,
    *,
    quantile: float = 0.95,
    min_size: int = 8,
    connectivity: int | None = None,
    max_regions: int | None = None,
) -> TopRegions:
    """Find and rank the connected regions of the most uncertain voxels.

    Parameters
    ----------
    umap : ndarray or Tensor, shape (*spatial)
        Uncertainty map, 2D or 3D (moved to numpy).
    quantile : float in (0, 1), optional
        Voxels with ``umap >= quantile(umap, q)`` are highlighted (default 0.95: the top 5%).
        Voxels at the map's minimum are never highlighted, so a flat map yields no region.
    min_size : int, optional
        Regions with fewer voxels are dropped (default 8).
    connectivity : int, optional
        Neighbourhood as in scikit-image: 1 = faces only, up to ``ndim`` = faces, edges and
        corners; ``None`` (default) = ``ndim`` (full connectivity).
    max_regions : int, optional
        Keep only the best-ranked regions (default: all).

    Returns
    -------
    TopRegions

    Raises
    ------
    ValueError
        ``umap`` not 2D/3D or not finite; ``quantile``, ``min_size``, ``connectivity`` or
        ``max_regions`` out of range.
    """
    arr = np.asarray(to_numpy(umap), np.float64)
    if arr.ndim not in (2, 3):
        raise ValueError(f"umap: expected a 2D or 3D map, got shape {arr.shape}")
    check_finite(arr, "umap")
    if not (isinstance(quantile, (int, float)) and 0 < quantile < 1):
        raise ValueError(f"quantile: expected a number in (0, 1), got {quantile!r}")
    if isinstance(min_size, bool) or int(min_size) != min_size or min_size < 1:
        raise ValueError(f"min_size: expected an integer >= 1, got {min_size!r}")
    if connectivity is None:
        connectivity = arr.ndim
    if isinstance(connectivity, bool) or connectivity not in range(1, arr.ndim + 1):
        raise ValueError(f"connectivity: expected 1..{arr.ndim} or None, got {connectivity!r}")
    if max_regions is not None and (
        isinstance(max_regions, bool) or int(max_regions) != max_regions or max_regions < 1
    ):
        raise ValueError(f"max_regions: expected an integer >= 1 or None, got {max_regions!r}")

    threshold = float(np.quantile(arr, quantile))
    highlight = (arr >= threshold) & (arr > arr.min())
    structure = ndimage.generate_binary_structure(arr.ndim, connectivity)
    comp, n = ndimage.label(highlight, structure=structure)
    labels = np.zeros(arr.shape, np.int32)
    if n == 0:
        return TopRegions(regions=[], labels=labels, highlight=highlight, threshold=threshold)

    flat = comp.ravel()
    sizes = np.bincount(flat, minlength=n + 1)
    sums = np.bincount(flat, weights=arr.ravel(), minlength=n + 1)
    ids = np.arange(1, n + 1)
    keep = ids[sizes[1:] >= min_size]
    # Rank by integrated uncertainty; ties by size then by label for a stable order.
    order = keep[np.lexsort((keep, -sizes[keep], -sums[keep]))]
    if max_regions is not None:
        order = order[: int(max_regions)]
    if len(order) == 0:
        return TopRegions(regions=[], labels=labels, highlight=highlight, threshold=threshold)

    remap = np.zeros(n + 1, np.int32)
    remap[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    labels = remap[comp]
    maxima = ndimage.maximum(arr, comp, order)
    centroids = ndimage.center_of_mass(highlight, comp, order)
    boxes = ndimage.find_objects(comp)
    regions = [
        Region(
            rank=rank,
            score=float(sums[i]),
            size=int(sizes[i]),
            bbox=tuple(boxes[i - 1]),
            centroid=tuple(float(c) for c in centroids[rank - 1]),
            mean=float(sums[i] / sizes[i]),
            max=float(maxima[rank - 1]),
            label=rank,
        )
        for rank, i in enumerate(order.tolist(), start=1)
    ]
    return TopRegions(regions=regions, labels=labels, highlight=highlight, threshold=threshold)
