"""Sliding-window tiling with seam-free blending, and slice-by-slice windows for 2D models on volumes.

Tile positions come from :func:`monai.data.utils.dense_patch_slices` (the last tile of each axis is
shifted back to end at the image border, as in MONAI's ``sliding_window_inference``).

Blending weights (:func:`edge_profile`): along each axis a tile's weight is 1 in its interior and
falls to exactly 0 towards every edge it shares with a neighbouring tile: 0 on the outer quarter
of the overlap, then a sin^2 ramp, so that the two tiles of an overlap sum to 1 (a partition of
unity). Edges on the image border keep weight 1. Why not MONAI's gaussian importance map: it is
> 0 up to the tile edge, where the network sees zero padding instead of the image. On a saturated
prediction (entropy ~1e-30 nats in the interior) those edge outputs, even weighted by 4e-4, were
orders of magnitude above the interior and made straight stripes of the 5 % highlight at every tile
border (rows 96/192/288/384 of the 512^2 camera image with 128^2 patches). With the edge margin no
voxel ever takes a value from within a quarter overlap of an interior tile edge (see
tests/test_tile_seams.py). MONAI's ``sliding_window_inference`` itself is not used: it calls the
network once per tile with its own batching and cannot re-seed a sample generator per tile, which
the tile-coherent sampling of :func:`napari_probseg.engine.predict` needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Window:
    """One network input: where it is read from the padded image and written into the buffer.

    Attributes
    ----------
    source : tuple of slice or int
        Index into the channel-first padded image ``(C, *spatial)``.
    target : tuple of slice or int
        Index into the blend buffer ``(B, K, *spatial)`` (leading ``slice(None)`` for B and K).
    weight_index : tuple of slice or int
        Index into the weight-sum map ``(*spatial)``.
    weight_key : tuple
        Key of this tile's blending weights in ``TilePlan.weights`` (tiles at the same kind of
        position share them).
    """

    source: tuple
    target: tuple
    weight_index: tuple
    weight_key: tuple = ()


@dataclass(frozen=True)
class TilePlan:
    """The windows covering an image and the blending weights.

    Attributes
    ----------
    windows : list of Window
        Every network input, in the order they are run (slices outer, tiles inner).
    padded_shape : tuple of int
        Spatial shape of the padded image the windows index (>= the image shape).
    image_shape : tuple of int
        Spatial shape of the image (the buffer is cropped back to it).
    patch_size : tuple of int
        Spatial shape of one model input (the model's ``spatial_dims`` axes).
    n_tiles : int
        Tiles per slice (1 when the image fits in one patch).
    n_slices : int
        Slices run one by one (1 unless slice-by-slice).
    importance : Tensor or None, shape (*patch_size)
        Blending weights of an interior tile, None when there is a single tile per slice.
    weights : dict
        Blending weights ``(*patch_size)`` of each ``Window.weight_key``.
    tiles : tuple
        The tiles of one slice: ``(slices, weight_key)`` pairs over the model's spatial axes.

    ``weight_sum`` (the whole map) and :meth:`weight_sum_region` (a block of it) are computed on
    demand: the streaming path never holds the map of a whole volume.
    """

    windows: list[Window]
    padded_shape: tuple[int, ...]
    image_shape: tuple[int, ...]
    patch_size: tuple[int, ...]
    n_tiles: int
    n_slices: int
    importance: Any
    weights: dict = field(default_factory=dict)
    tiles: tuple = ()

    @property
    def tiled(self) -> bool:
        """True when more than one tile covers each slice (blending is needed)."""
        return self.n_tiles > 1

    def weight(self, window: Window) -> Any:
        """Blending weights ``(*patch_size)`` of ``window``."""
        return self.weights[window.weight_key]

    @cached_property
    def weight_sum(self) -> Any:
        """Tensor or None, shape (*padded model axes): the sum of the weights of all tiles at
        each voxel (None when untiled); > 0 everywhere."""
        if not self.tiled:
            return None
        inner = self.padded_shape[len(self.padded_shape) - len(self.patch_size) :]
        return self.weight_sum_region(tuple(slice(0, s) for s in inner))

    def weight_sum_region(self, region: Sequence[slice]) -> Any:
        """The block ``region`` (slices over the model's padded spatial axes) of
        :attr:`weight_sum`, bit for bit: the same tiles added in the same order."""
        import torch

        inner = self.padded_shape[len(self.padded_shape) - len(self.patch_size) :]
        box = [r.indices(n)[:2] for r, n in zip(region, inner)]
        out = torch.zeros(tuple(b - a for a, b in box), dtype=torch.float32)
        for tile, key in self.tiles:
            lo = [max(t.start, a) for t, (a, _b) in zip(tile, box)]
            hi = [min(t.stop, b) for t, (_a, b) in zip(tile, box)]
            if any(h <= g for g, h in zip(lo, hi)):
                continue
            dst = tuple(slice(g - a, h - a) for g, h, (a, _b) in zip(lo, hi, box))
            src = tuple(slice(g - t.start, h - t.start) for g, h, t in zip(lo, hi, tile))
            out[dst] += self.weights[key][src]
        if out.numel() and float(out.min()) <= 0:  # cannot happen with overlaps >= 1
            out.clamp_(min=1e-12)
        return out


def plan_tiles(
    image_shape: Sequence[int],
    *,
    spatial_dims: int,
    patch_size: Sequence[int] | None,
    overlap: float,
    size_divisor: int = 1,
) -> TilePlan:
    """Plan the windows that cover an image.

    Parameters
    ----------
    image_shape : sequence of int
        Spatial shape of the image: ``spatial_dims`` axes, or one more (leading slice axis) for a
        2D model run slice by slice on a volume.
    spatial_dims : {2, 3}
        Spatial axes of one model input.
    patch_size : sequence of int or None
        The model's patch (``card.patch_size``). None: the whole image (or slice) is one input.
    overlap : float
        Fraction of the patch shared by neighbouring tiles, in [0, 1).
    size_divisor : int
        Untiled inputs are padded up to a multiple of this (networks that downsample need it).

    Returns
    -------
    TilePlan

    Raises
    ------
    ValueError
        ``overlap: ...`` outside [0, 1); ``patch_size: ...`` of the wrong length or not positive.
    """
    from monai.data.utils import dense_patch_slices

    if not (0.0 <= float(overlap) < 1.0):
        raise ValueError(f"overlap: expected a fraction in [0, 1), got {overlap!r}")
    shape = tuple(int(s) for s in image_shape)
    n_lead = len(shape) - spatial_dims
    lead, inner = shape[:n_lead], shape[n_lead:]
    n_slices = int(np.prod(lead)) if lead else 1
    div = max(1, int(size_divisor))
    if patch_size is None:
        patch = tuple(-(-s // div) * div for s in inner)
    else:
        patch = tuple(int(p) for p in patch_size)
        if len(patch) != spatial_dims or any(p < 1 for p in patch):
            raise ValueError(
                f"patch_size: expected {spatial_dims} positive sizes, got {tuple(patch_size)}"
            )
    # Images smaller than the patch along an axis are padded up to it (as MONAI does).
    padded_inner = tuple(max(s, p) for s, p in zip(inner, patch))
    interval = tuple(max(1, round(p * (1.0 - float(overlap)))) for p in patch)
    tiles = dense_patch_slices(padded_inner, patch, interval)
    # Drop duplicates (dense_patch_slices may repeat the last start on small axes).
    # (slices are unhashable before Python 3.12, so deduplicate on (start, stop) pairs)
    starts = dict.fromkeys(tuple((int(s.start), int(s.stop)) for s in t) for t in tiles)
    tiles = [tuple(slice(a, b) for a, b in t) for t in starts]
    n_tiles = len(tiles)
    importance = None
    keys: list[tuple] = [()] * n_tiles
    weights: dict = {}
    if n_tiles > 1:
        axis_starts = [sorted({int(t[a].start) for t in tiles}) for a in range(spatial_dims)]
        keys = []
        for t in tiles:
            key = []
            for a, starts_a in enumerate(axis_starts):
                j = starts_a.index(int(t[a].start))
                lo = starts_a[j - 1] + patch[a] - starts_a[j] if j > 0 else 0
                hi = starts_a[j] + patch[a] - starts_a[j + 1] if j + 1 < len(starts_a) else 0
                key.append((max(lo, 0), max(hi, 0)))
            keys.append(tuple(key))
        for key in dict.fromkeys(keys):
            weights[key] = _separable(
                [edge_profile(patch[a], lo, hi) for a, (lo, hi) in enumerate(key)]
            )
        interior = tuple(
            (patch[a] - interval[a],) * 2 if len(axis_starts[a]) > 1 else (0, 0)
            for a in range(spatial_dims)
        )
        importance = _separable(
            [edge_profile(patch[a], lo, hi) for a, (lo, hi) in enumerate(interior)]
        )
    windows = []
    for index in np.ndindex(*lead) if lead else [()]:
        for t, key in zip(tiles, keys):
            windows.append(
                Window(
                    source=(slice(None), *index, *t),
                    target=(slice(None), slice(None), *index, *t),
                    weight_index=t,
                    weight_key=key,
                )
            )
    return TilePlan(
        windows=windows,
        padded_shape=(*lead, *padded_inner),
        image_shape=shape,
        patch_size=patch,
        n_tiles=n_tiles,
        n_slices=n_slices,
        importance=importance,
        weights=weights,
        tiles=tuple(zip(tiles, keys)),
    )


def edge_profile(size: int, overlap_low: int, overlap_high: int) -> np.ndarray:
    """1D blending weights of a tile of ``size`` voxels along one axis.

    Parameters
    ----------
    size : int
        Tile length along the axis.
    overlap_low, overlap_high : int
        Voxels shared with the previous / next tile (0: that edge is on the image border, or the
        tiles do not overlap, and keeps weight 1).

    Returns
    -------
    ndarray of float64, shape (size,)
        0 on the outer ``overlap // 4`` voxels of each shared edge, a sin^2 ramp over the middle of
        the overlap, 1 elsewhere. Two neighbours' ramps over the same overlap sum to 1.
    """
    w = np.ones(size, np.float64)
    for overlap, side in ((overlap_low, slice(None)), (overlap_high, slice(None, None, -1))):
        if overlap <= 0:
            continue
        overlap = min(int(overlap), size)
        margin = overlap // 4
        width = overlap - 2 * margin
        u = np.arange(size, dtype=np.float64)
        ramp = np.clip((u - margin + 0.5) / width, 0.0, 1.0)
        ramp = np.where(u < margin, 0.0, np.sin(0.5 * np.pi * ramp) ** 2)
        ramp[overlap - margin :] = 1.0
        w[side] *= ramp
    return w


def _separable(profiles: Sequence[np.ndarray]) -> Any:
    import torch

    weights = None
    for i, g in enumerate(profiles):
        t = torch.from_numpy(np.asarray(g, np.float64)).view(*([1] * i), len(g))
        weights = t if weights is None else weights.unsqueeze(-1) * t
    return weights.to(torch.float32)


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 0.125) -> Any:
    """Separable gaussian blending weights, peak 1 at the patch centre, shape ``patch``.

    Strictly positive (the smallest 3D corner weight is ~exp(-24) ~ 4e-11, far above float32's
    smallest normal number), so every voxel covered by a tile gets a weight.
    """
    import torch

    weights = None
    for i, size in enumerate(patch):
        x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
        g = torch.exp(-(x**2) / (2.0 * (sigma_scale * size) ** 2))
        g = g.view(*([1] * i), size)
        weights = g if weights is None else weights.unsqueeze(-1) * g
    return weights.to(torch.float32)


def pad_image(image: np.ndarray, padded_shape: Sequence[int]) -> np.ndarray:
    """Pad a channel-first image ``(C, *spatial)`` at the far end of each axis (mirror padding)."""
    pads = [(0, 0)] + [(0, int(p) - int(s)) for s, p in zip(image.shape[1:], padded_shape)]
    if all(after == 0 for _, after in pads):
        return image
    return np.pad(image, pads, mode="symmetric")


def crop(buffer: Any, image_shape: Sequence[int]) -> Any:
    """Crop a ``(B, K, *padded)`` buffer back to ``(B, K, *image_shape)``."""
    return buffer[(slice(None), slice(None), *(slice(0, int(s)) for s in image_shape))]


@dataclass(frozen=True)
class Slab:
    """Tiles sharing their start along the first axis of the padded shape (or one plane).

    ``lo``/``hi``: rows the slab's tiles cover; ``final``: rows below it are complete once this
    slab is done (the next slab's ``lo``); rows ``final..hi`` carry over to the next slab.
    """

    lo: int
    final: int
    hi: int
    windows: list


def slabs(plan: TilePlan) -> list[Slab]:
    """Group the windows of ``plan`` into slabs along the first axis of ``plan.padded_shape``."""
    return group_windows(plan.windows, axis=0, length=int(plan.padded_shape[0]))


def group_windows(windows: Sequence[Window], *, axis: int, length: int) -> list[Slab]:
    """Group ``windows`` by their span along spatial ``axis`` of the buffer (``length`` long):
    slabs (axis 0) or, within a slab of a volume, strips (axis 1)."""
    groups: dict[tuple[int, int], list] = {}
    for w in windows:
        first = w.target[2 + axis]
        span = (
            (first, first + 1)
            if isinstance(first, (int, np.integer))
            else (first.start, first.stop)
        )
        groups.setdefault((int(span[0]), int(span[1])), []).append(w)
    keys = sorted(groups)
    out = []
    for i, (lo, hi) in enumerate(keys):
        final = keys[i + 1][0] if i + 1 < len(keys) else int(length)
        out.append(
            Slab(
                lo=lo,
                final=min(final, hi) if i + 1 < len(keys) else hi,
                hi=hi,
                windows=groups[(lo, hi)],
            )
        )
    return out
