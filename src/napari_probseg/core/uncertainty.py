"""Uncertainty maps of sampled segmentations: entropy, streaming decomposition, term meanings.

The predictive entropy of the mean prediction splits into two terms (DESIGN.md, Valiuddin et al.)::

    H[E_s p_s]  =  I[y; s]  +  E_s H[p_s]
    predictive     mutual      expected
    entropy        information entropy

What the two terms *mean* depends on where the sample-to-sample randomness comes from
(:data:`SOURCES`, :func:`term_meanings`), so every result carries its source.

Arrays follow the package conventions: probabilities ``(K, *spatial)`` with the class axis first,
sample stacks ``(N, K, *spatial)``. Numpy arrays and torch tensors (any device) are accepted; map
results follow the input (torch in, torch out on the same device). Torch is imported lazily, only
when a tensor is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import fields
from typing import Any

import numpy as np

from napari_probseg.core._terms import (
    SOURCES,
    TERMS,
    normalize_source,
    term_label,
    term_meanings,
)
from napari_probseg.core._validation import is_torch

# Split by responsibility: map types and entropy (maps), the streaming accumulator (accumulator).
from napari_probseg.core.accumulator import UncertaintyAccumulator
from napari_probseg.core.maps import _MAP_FIELDS, Decomposition, UncertaintyMaps, entropy

__all__ = [
    "SOURCES",
    "TERMS",
    "Decomposition",
    "UncertaintyAccumulator",
    "UncertaintyMaps",
    "decompose",
    "entropy",
    "stitch_maps",
    "term_label",
    "term_meanings",
]


# --------------------------------------------------------------------------------------------
# Stacked decomposition and stitching
# --------------------------------------------------------------------------------------------


def decompose(
    probs: Any,
    *,
    source: str | Iterable[str],
    foreground_classes: Sequence[int] | None = None,
) -> Decomposition:
    """Decompose the predictive entropy of sampled probabilities and name the terms.

    Parameters
    ----------
    probs : ndarray or Tensor, shape (N, K, *spatial), or UncertaintyMaps
        A stack of ``N >= 1`` sampled probability maps with 2 or 3 spatial axes, or the
        :meth:`UncertaintyAccumulator.result` of a streaming run (which is converted as is).
    source : str or tuple of str
        Randomness source(s) of the samples, see :data:`SOURCES` and :func:`term_meanings`.
    foreground_classes : sequence of int, optional
        Classes counted in ``volumes`` (default: all but 0). Not used for ``UncertaintyMaps``.

    Returns
    -------
    Decomposition
        Predictive entropy, mutual information (clamped >= 0) and expected entropy in nats,
        mean and variance maps, per-sample volumes, ``source`` and ``meanings``.

    Raises
    ------
    ValueError
        Wrong shape, ``N < 1``, invalid probabilities or unknown source.

    Notes
    -----
    A stack is reduced with :class:`UncertaintyAccumulator` (one chunked pass, float64 sums), so
    the streaming and the stacked results are the same numbers.
    """
    sources = normalize_source(source)
    if isinstance(probs, UncertaintyMaps):
        maps = probs
    else:
        shape = tuple(int(s) for s in probs.shape)
        if len(shape) not in (4, 5) or shape[0] < 1:
            raise ValueError(
                "probs: expected shape (N, K, *spatial) with N >= 1 and 2 or 3 spatial axes, "
                f"got {shape}"
            )
        acc = UncertaintyAccumulator(
            shape[1], foreground_classes=foreground_classes, spatial_dims=len(shape) - 2
        )
        acc.update(probs)
        maps = acc.result()
    values = {f.name: getattr(maps, f.name) for f in fields(UncertaintyMaps)}
    return Decomposition(**values, source=sources, meanings=term_meanings(sources))


def stitch_maps(
    blocks: Iterable[tuple[tuple[slice, ...], UncertaintyMaps]],
    spatial_shape: Sequence[int],
) -> UncertaintyMaps:
    """Join the maps of disjoint image blocks, each from its own accumulator, into one image.

    Parameters
    ----------
    blocks : iterable of (region, UncertaintyMaps)
        ``region`` is a tuple of slices (one per spatial axis, step 1) locating the block in
        the full image; blocks must not overlap and must share ``n_samples`` and classes.
    spatial_shape : sequence of int
        Spatial shape of the full image. Voxels covered by no block are 0.

    Returns
    -------
    UncertaintyMaps
        Full-image maps (numpy, or torch on the device of the first block); ``volumes`` are the
        sums of the blocks' per-sample volumes (volume is additive over disjoint regions).

    Raises
    ------
    ValueError
        No blocks, mismatched sample counts/classes, or a region that does not fit.
    """
    blocks = list(blocks)
    if not blocks:
        raise ValueError("blocks: expected at least one (region, maps) pair")
    shape = tuple(int(s) for s in spatial_shape)
    first = blocks[0][1]
    k, n = first.n_classes, first.n_samples
    torch_mode = is_torch(first.predictive_entropy)
    if torch_mode:
        import torch

        ref = first.predictive_entropy

        def new(*dims: int) -> Any:
            return torch.zeros(dims, dtype=ref.dtype, device=ref.device)
    else:
        dtype = first.predictive_entropy.dtype

        def new(*dims: int) -> Any:
            return np.zeros(dims, dtype)

    out = {
        name: new(k, *shape) if name in ("mean_probs", "variance") else new(*shape)
        for name in _MAP_FIELDS
    }
    volumes = np.zeros(n, np.float64)
    for region, maps in blocks:
        if maps.n_samples != n or maps.n_classes != k:
            raise ValueError(
                f"blocks: every block needs n_samples={n} and {k} classes, got "
                f"n_samples={maps.n_samples} and {maps.n_classes} classes"
            )
        region = tuple(region)
        if len(region) != len(shape):
            raise ValueError(f"blocks: region {region} does not match spatial shape {shape}")
        sizes = tuple(len(range(*r.indices(s))) for r, s in zip(region, shape))
        if sizes != maps.spatial_shape:
            raise ValueError(
                f"blocks: region {region} covers {sizes} but its maps have shape "
                f"{maps.spatial_shape}"
            )
        for name in _MAP_FIELDS:
            value = getattr(maps, name)
            if name in ("mean_probs", "variance"):
                out[name][(slice(None), *region)] = value
            else:
                out[name][region] = value
        volumes += maps.volumes
    return UncertaintyMaps(
        **out,
        volumes=volumes,
        n_samples=n,
        units=first.units,
        foreground_classes=first.foreground_classes,
    )
