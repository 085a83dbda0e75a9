"""Research metrics of probabilistic segmentation (public API).

Calibration (ECE/MCE/ACE, adaptive ECE, streaming accumulator, temperature scaling), proper
scoring rules (NLL, Brier score), observer
variability against several raters (GED, HM-IoU, NCC), introspection (PAvPU and its curve over the threshold, AURC) and conformal
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
from napari_probseg.core.introspection import (
    AURCResult,
    PAvPUCurve,
    PAvPUResult,
    aurc,
    dice_risk,
    pavpu,
    pavpu_curve,
)
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
from napari_probseg.core.scoring import brier_score, nll

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
    "PAvPUCurve",
    "PAvPUResult",
    "TemperatureFit",
    "adaptive_ece",
    "aurc",
    "brier_score",
    "calibration",
    "dice_risk",
    "fit_temperature",
    "ged",
    "hm_iou",
    "iou_matrix",
    "ncc",
    "nll",
    "observer_metrics",
    "pairwise_dice",
    "pavpu",
    "pavpu_curve",
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
