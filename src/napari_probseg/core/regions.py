"""The most uncertain regions of a map: threshold at a quantile, label, rank by integrated doubt.

Explainable uncertainty highlights only the few regions where the model is least sure, ranked so
that a reviewer can jump from one to the next (DESIGN.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from napari_probseg.core._blocks import RowBlocks
from napari_probseg.core._validation import check_finite, to_numpy

__all__ = ["Region", "TopRegions", "quantile_of", "rank_regions", "top_regions"]


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
    connectivity = _check_options(arr.ndim, quantile, min_size, connectivity, max_regions)

    # selected in row blocks (bounded temporaries), on float32 keys when the map is float32
    raw = np.asarray(to_numpy(umap))
    values = raw if raw.dtype in (np.float16, np.float32) else arr
    threshold = quantile_of(RowBlocks(values), arr.size, quantile)
    highlight = (arr >= threshold) & (arr > arr.min())
    structure = ndimage.generate_binary_structure(arr.ndim, connectivity)
    comp, n = ndimage.label(highlight, structure=structure)
    labels = np.zeros(arr.shape, np.int32)
    stats = _component_stats(comp, n, arr, 0)
    order = _rank(stats, min_size, max_regions)
    if len(order):
        remap = np.zeros(n + 1, np.int32)
        remap[order + 1] = np.arange(1, len(order) + 1, dtype=np.int32)
        labels = remap[comp]
    return TopRegions(
        regions=_regions(stats, order), labels=labels, highlight=highlight, threshold=threshold
    )


def rank_regions(
    blocks: Iterable[tuple[int, int, np.ndarray]],
    *,
    shape: tuple[int, ...],
    quantile: float = 0.95,
    min_size: int = 8,
    connectivity: int | None = None,
    max_regions: int | None = None,
) -> tuple[float, list[Region]]:
    """:func:`top_regions` of a map read in blocks of rows, without holding it: the threshold
    and the ranked regions (no label image).

    Parameters
    ----------
    blocks : re-iterable of (start, stop, ndarray)
        The map's rows ``start:stop`` of its first axis, in order (e.g.
        :class:`napari_probseg.core._blocks.RowBlocks`); read four times (float32 maps: the
        minimum, two selection passes, the components) or six times (float64).
    shape : tuple of int
        The map's shape.
    quantile, min_size, connectivity, max_regions
        As in :func:`top_regions`.

    Returns
    -------
    threshold : float
    regions : list of Region
        The same regions as :func:`top_regions` of the whole map (sums to float rounding).
        Components that touch across blocks are merged (scipy's connected components over the
        pairs of labels that meet at a block boundary).
    """
    ndim = len(shape)
    if ndim not in (2, 3):
        raise ValueError(f"umap: expected a 2D or 3D map, got shape {tuple(shape)}")
    connectivity = _check_options(ndim, quantile, min_size, connectivity, max_regions)
    size = math.prod(shape)
    floor = math.inf
    for _, _, block in blocks:
        block = np.asarray(block, np.float64)
        check_finite(block, "umap")
        floor = min(floor, float(block.min()))
    threshold = quantile_of(blocks, size, quantile)
    structure = ndimage.generate_binary_structure(ndim, connectivity)
    # lateral offsets at which a voxel touches the next row's voxels
    touching = [tuple(int(o) - 1 for o in off) for off in np.argwhere(structure[2])]
    parts, pairs, offset, last = [], [], 0, None
    for start, _, block in blocks:
        block = np.asarray(block, np.float64)
        highlight = (block >= threshold) & (block > floor)
        comp, n = ndimage.label(highlight, structure=structure)
        comp = comp.astype(np.int64)
        comp[comp > 0] += offset
        parts.append(_component_stats(comp, n, block, start, first_label=offset))
        if last is not None:
            pairs.extend(_touching_pairs(last, comp[0], touching))
        last, offset = comp[-1], offset + n
    stats = _merge(parts, pairs, offset)
    order = _rank(stats, min_size, max_regions)
    return threshold, _regions(stats, order)


def quantile_of(blocks: Iterable[tuple[int, int, np.ndarray]], size: int, q: float) -> float:
    """``np.quantile(values, q)`` (linear) of values read in blocks, exactly, in O(block) memory.

    Radix selection of the two order statistics on the values' sortable bit patterns, 16 bits
    per pass over ``blocks`` (2 passes for float32 values, 4 for float64), then numpy's linear
    interpolation. A library quantile needs the values in one array (np.partition copies it).
    """
    h = (size - 1) * q  # numpy's "linear" virtual index
    k = math.floor(h)
    ranks = sorted({k, min(k + 1, size - 1)})
    found = _select(blocks, ranks)
    a, b = np.float64(found[ranks[0]]), np.float64(found[ranks[-1]])
    gamma = np.float64(h - k)
    # numpy's _lerp: from the nearer end
    value = b - (b - a) * (1 - gamma) if gamma >= 0.5 else a + (b - a) * gamma
    return float(value)


def _keys(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned keys sorting like the float values (sign bit flipped, negatives inverted)."""
    utype, ftype = (np.uint32, np.float32) if bits == 32 else (np.uint64, np.float64)
    raw = np.ascontiguousarray(values, ftype).view(utype)
    sign = utype(1 << (bits - 1))
    return np.where(raw & sign, ~raw, raw | sign)


def _value(key: int, bits: int) -> float:
    utype, ftype = (np.uint32, np.float32) if bits == 32 else (np.uint64, np.float64)
    sign = 1 << (bits - 1)
    raw = key ^ sign if key & sign else ~key & ((1 << bits) - 1)
    return float(np.array([raw], utype).view(ftype)[0])


def _select(blocks: Iterable[tuple[int, int, np.ndarray]], ranks: list[int]) -> dict[int, float]:
    """The values of the given 0-based ranks among all values of ``blocks``."""
    bits = None
    # per rank: (prefix of the key found so far, rank left within that prefix)
    state = {r: (0, r) for r in ranks}
    level = 0
    while bits is None or level < bits // 16:
        hist: dict[int, np.ndarray] = {}
        for _, _, block in blocks:
            if bits is None:
                bits = 32 if np.asarray(block).dtype in (np.float16, np.float32) else 64
            keys = _keys(np.asarray(block).ravel(), bits)
            shift = bits - 16 * (level + 1)
            for prefix in {p for p, _ in state.values()}:
                sel = keys if level == 0 else keys[(keys >> (shift + 16)) == prefix]
                digits = ((sel >> shift) & 0xFFFF).astype(np.intp)
                counts = np.bincount(digits, minlength=1 << 16)
                hist[prefix] = hist[prefix] + counts if prefix in hist else counts
        for r, (prefix, left) in state.items():
            cum = np.cumsum(hist[prefix])
            digit = int(np.searchsorted(cum, left, side="right"))
            state[r] = ((prefix << 16) | digit, left - (int(cum[digit - 1]) if digit else 0))
        level += 1
    return {r: _value(prefix, bits) for r, (prefix, _) in state.items()}


def _check_options(
    ndim: int, quantile: Any, min_size: Any, connectivity: Any, max_regions: Any
) -> int:
    if not (isinstance(quantile, (int, float)) and 0 < quantile < 1):
        raise ValueError(f"quantile: expected a number in (0, 1), got {quantile!r}")
    if isinstance(min_size, bool) or int(min_size) != min_size or min_size < 1:
        raise ValueError(f"min_size: expected an integer >= 1, got {min_size!r}")
    if connectivity is None:
        connectivity = ndim
    if isinstance(connectivity, bool) or connectivity not in range(1, ndim + 1):
        raise ValueError(f"connectivity: expected 1..{ndim} or None, got {connectivity!r}")
    if max_regions is not None and (
        isinstance(max_regions, bool) or int(max_regions) != max_regions or max_regions < 1
    ):
        raise ValueError(f"max_regions: expected an integer >= 1 or None, got {max_regions!r}")
    return int(connectivity)


def _component_stats(
    comp: np.ndarray, n: int, values: np.ndarray, row0: int, *, first_label: int = 0
) -> dict[str, np.ndarray]:
    """Per component ``first_label + 1 .. first_label + n`` of one block: size, sum, max,
    coordinate sums and bounding box (rows offset by ``row0``)."""
    flat = np.flatnonzero(comp)
    lab = comp.ravel()[flat] - first_label - 1
    vals = values.ravel()[flat]
    coords = np.unravel_index(flat, comp.shape)
    coords = (coords[0] + row0, *coords[1:])
    ndim = comp.ndim
    lo = np.full((n, ndim), np.iinfo(np.int64).max, np.int64)
    hi = np.full((n, ndim), -1, np.int64)
    peak = np.full(n, -np.inf)
    np.maximum.at(peak, lab, vals)
    for d, c in enumerate(coords):
        np.minimum.at(lo[:, d], lab, c)
        np.maximum.at(hi[:, d], lab, c)
    return {
        "size": np.bincount(lab, minlength=n).astype(np.int64),
        "sum": np.bincount(lab, weights=vals, minlength=n),
        "max": peak,
        "coord_sum": np.stack([np.bincount(lab, weights=c, minlength=n) for c in coords], 1)
        if n
        else np.zeros((0, ndim)),
        "lo": lo,
        "hi": hi,
        # raster order of the first voxel (scipy numbers components that way): ties in rank
        "first": np.arange(first_label, first_label + n, dtype=np.int64),
    }


def _touching_pairs(
    above: np.ndarray, below: np.ndarray, offsets: list[tuple[int, ...]]
) -> list[np.ndarray]:
    """Pairs (label above, label below) of components touching across a block boundary."""
    out = []
    for off in offsets:
        a_sl, b_sl = [], []
        for o, s in zip(off, above.shape):
            a_sl.append(slice(max(0, -o), s - max(0, o)))
            b_sl.append(slice(max(0, o), s - max(0, -o)))
        a, b = above[tuple(a_sl)], below[tuple(b_sl)]
        both = (a > 0) & (b > 0)
        if both.any():
            out.append(np.stack([a[both], b[both]], 1))
    return out


def _merge(parts: list[dict], pairs: list[np.ndarray], n: int) -> dict[str, np.ndarray]:
    """Components of all blocks, merged where they touch across a boundary."""
    stats = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    if not pairs or n == 0:
        return stats
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = np.concatenate(pairs) - 1
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    m, group = connected_components(graph, directed=False)
    out = {
        "size": np.bincount(group, weights=stats["size"], minlength=m).astype(np.int64),
        "sum": np.bincount(group, weights=stats["sum"], minlength=m),
        "coord_sum": np.stack(
            [np.bincount(group, weights=c, minlength=m) for c in stats["coord_sum"].T], 1
        ),
    }
    for key, fill, ufunc in (
        ("max", -np.inf, np.maximum),
        ("lo", np.iinfo(np.int64).max, np.minimum),
        ("hi", -1, np.maximum),
        ("first", np.iinfo(np.int64).max, np.minimum),
    ):
        arr = stats[key]
        merged = np.full((m, *arr.shape[1:]), fill, arr.dtype)
        ufunc.at(merged, group, arr)
        out[key] = merged
    return out


def _rank(stats: dict[str, np.ndarray], min_size: int, max_regions: int | None) -> np.ndarray:
    """Indices of the kept components, best first: by integrated uncertainty, then size, then
    raster order of the first voxel (a stable order)."""
    keep = np.flatnonzero(stats["size"] >= min_size)
    order = keep[np.lexsort((stats["first"][keep], -stats["size"][keep], -stats["sum"][keep]))]
    return order if max_regions is None else order[: int(max_regions)]


def _regions(stats: dict[str, np.ndarray], order: np.ndarray) -> list[Region]:
    return [
        Region(
            rank=rank,
            score=float(stats["sum"][i]),
            size=int(stats["size"][i]),
            bbox=tuple(slice(int(a), int(b) + 1) for a, b in zip(stats["lo"][i], stats["hi"][i])),
            centroid=tuple(float(c) / stats["size"][i] for c in stats["coord_sum"][i]),
            mean=float(stats["sum"][i] / stats["size"][i]),
            max=float(stats["max"][i]),
            label=rank,
        )
        for rank, i in enumerate(order.tolist(), start=1)
    ]
