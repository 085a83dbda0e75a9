"""Synthetic ``PredictionResult`` objects for the napari-layer tests (no model, known geometry)."""

from __future__ import annotations

import numpy as np

from napari_probseg.core.uncertainty import decompose, term_meanings
from napari_probseg.engine import image_signature
from napari_probseg.engine._types import PredictionResult


def disc_probs(
    shape: tuple[int, ...], centers: list[list[tuple[float, ...]]], radius: float, width: float
) -> np.ndarray:
    """Soft discs: probabilities (N, 2, *shape), the given discs (balls in 3D) per sample."""
    grid = np.indices(shape, dtype=np.float64)
    out = []
    for discs in centers:
        p1 = np.zeros(shape)
        for c in discs:
            d = np.sqrt(sum((g - ci) ** 2 for g, ci in zip(grid, c)))
            p1 = np.maximum(p1, 1.0 / (1.0 + np.exp(-(radius - d) / width)))
        out.append(np.stack([1 - p1, p1]))
    return np.asarray(out, dtype=np.float32)


def make_result(
    *,
    ndim: int = 2,
    source: tuple[str, ...] = ("parameter",),
    method: str = "mc_dropout",
    shifts: tuple[int, ...] = (0, 0, 0, 0, 0, 0, 6, 6),
    width: float = 1.0,
    image: np.ndarray | None = None,
    scale: tuple[float, ...] | None = None,
    two_objects: bool = False,
) -> tuple[np.ndarray, PredictionResult]:
    """Return (image, result): samples are discs shifted along the last axis by ``shifts``.

    With the default shifts, 6 of 8 samples sit at one position and 2 at another, so the distinct
    hypotheses have shares 75% and 25%. ``two_objects`` adds a second, smaller disc far away whose
    samples shift the other way (two separate uncertain regions).
    """
    shape = (40, 48) if ndim == 2 else (6, 32, 40)
    radius = 8.0 if ndim == 2 else 6.0
    if two_objects:
        shape = (40, 96) if ndim == 2 else (6, 32, 80)
    center = (*tuple(s / 2 for s in shape[:-1]), radius + 8)
    centers = [[(*center[:-1], center[-1] + s)] for s in shifts]
    if two_objects:
        far = shape[-1] - radius - 10
        centers = [[*c, (*center[:-1], far - s / 2)] for c, s in zip(centers, shifts)]
    probs = disc_probs(shape, centers, radius, width)
    maps = decompose(probs, source=source).to_numpy()
    if image is None:
        image = (probs[:, 1].mean(0) + 0.05 * np.random.default_rng(0).normal(size=shape)).astype(
            np.float32
        )
    scale = scale or ((1.0,) * ndim if ndim == 2 else (2.0, 1.0, 1.0))
    result = PredictionResult(
        samples=probs.argmax(axis=1).astype(np.uint8),
        maps=maps,
        method=method,
        source=source,
        n_samples=len(shifts),
        meanings=term_meanings(source),
        class_names=["background", "lesion"],
        scale=scale,
        input_signature=image_signature(image),
        provenance={"method": method, "n_samples": len(shifts), "seed": 0},
    )
    return image, result
