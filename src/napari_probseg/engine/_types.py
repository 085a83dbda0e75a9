"""Data types the engine hands to its callers: progress events, results, cancellation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Cancelled(Exception):
    """Raised by :func:`napari_probseg.engine.predict` when its ``cancel`` check fires.

    No partial result is produced.
    """


@dataclass(frozen=True)
class Progress:
    """A progress event, yielded between sample batches and tiles.

    Attributes
    ----------
    stage : {"prepare", "sample", "finalize"}
        What the engine is doing.
    samples_done, samples_total : int
        Samples fully computed (blended over every tile) and the number asked for.
    tiles_done, tiles_total : int
        Windows (tiles, times slices in slice-by-slice mode) done in the *current* sample batch and
        the number per batch; every batch runs all windows.
    fraction : float
        Overall progress in [0, 1].
    message : str
        A short human-readable line, e.g. ``"samples 4-8 of 16: tile 3/12"``.
    """

    stage: str
    samples_done: int
    samples_total: int
    tiles_done: int
    tiles_total: int
    fraction: float
    message: str


@dataclass
class PredictionResult:
    """Samples, uncertainty maps and provenance of one prediction.

    Attributes
    ----------
    samples : ndarray of uint8, shape (N, *spatial), or None
        Per-sample argmax labels (0 = background); None when run with ``keep_samples=False``.
    maps : UncertaintyMaps
        Numpy maps: ``mean_probs`` (K, *spatial), ``predictive_entropy``, ``expected_entropy``,
        ``mutual_information`` (*spatial), ``variance`` (K, *spatial), ``volumes`` (N,).
    method : str
        Method name (``"mc_dropout"``, ...).
    source : tuple of str
        Randomness sources of the method.
    n_samples : int
        Samples actually drawn (1 for deterministic methods).
    meanings : dict
        ``term_meanings(source)``: what mutual information and expected entropy mean here.
    class_names : list of str
    scale : tuple of float
        Voxel spacing of the image, one value per spatial axis.
    input_signature : str
        :func:`image_signature` of the input image.
    provenance : dict
        JSON-able: card sha256, method and parameters, N, seed, device, versions, input signature,
        timings per stage, warnings.
    """

    samples: np.ndarray | None
    maps: Any
    method: str
    source: tuple[str, ...]
    n_samples: int
    meanings: dict
    class_names: list[str]
    scale: tuple[float, ...]
    input_signature: str
    provenance: dict = field(default_factory=dict)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Spatial shape of the maps."""
        return tuple(int(s) for s in self.maps.predictive_entropy.shape)
