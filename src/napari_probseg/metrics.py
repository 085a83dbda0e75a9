"""Research metrics of probabilistic segmentation (public API).

Calibration (ECE/MCE/ACE, adaptive ECE, streaming accumulator, temperature scaling), observer
variability against several raters (GED, HM-IoU, NCC), introspection (PAvPU, AURC) and conformal
inner/outer bands. Conventions are stated in the docstrings of the ``napari_probseg.core``
modules (``calibration``, ``observer``, ``introspection``, ``conformal``) and in DESIGN.md.

Importing this module does not import torch; functions accept numpy arrays or torch tensors.

Examples
--------
>>> import numpy as np
>>> from napari_probseg.metrics import calibration, ged
>>> probs = np.array([[0.1, 0.4], [0.9, 0.6]])  # (K=2, 2 pixels)
>>> calibration(probs, np.array([1, 0]), n_bins=10).ece
0.35
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari_probseg.core.calibration import (
    CalibrationAccumulator,
    CalibrationResult,
    TemperatureFit,
    adaptive_ece,
    calibration,
    fit_temperature,
)
from napari_probseg.core.conformal import BandCoverage, ConformalBands
from napari_probseg.core.introspection import AURCResult, PAvPUResult, aurc, dice_risk, pavpu
from napari_probseg.core.observer import (
    GEDResult,
    HMIoUResult,
    MetricSummary,
    ObserverMetrics,
    ged,
    hm_iou,
    iou_matrix,
    ncc,
    observer_metrics,
    summarize,
    variance_map,
)

if TYPE_CHECKING:
    from napari_probseg.core.structure import pairwise_dice, volume_cov

__all__ = [
    "AURCResult",
    "BandCoverage",
    "CalibrationAccumulator",
    "CalibrationResult",
    "ConformalBands",
    "GEDResult",
    "HMIoUResult",
    "MetricSummary",
    "ObserverMetrics",
    "PAvPUResult",
    "TemperatureFit",
    "adaptive_ece",
    "aurc",
    "calibration",
    "dice_risk",
    "fit_temperature",
    "ged",
    "hm_iou",
    "iou_matrix",
    "ncc",
    "observer_metrics",
    "pairwise_dice",
    "pavpu",
    "summarize",
    "variance_map",
    "volume_cov",
]

# Structure measures live in core.structure; re-exported lazily so this module imports even
# while that module is being developed.
_STRUCTURE = ("pairwise_dice", "volume_cov")


def __getattr__(name: str) -> Any:
    if name in _STRUCTURE:
        from napari_probseg.core import structure

        return getattr(structure, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
