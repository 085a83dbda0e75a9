"""Run a sampling method over an image: device, batching, tiling, cancellation, progress, output.

Public API (docs/ARCHITECTURE.md "Engine interface"):

- :func:`predict` — generator yielding :class:`Progress`, returning a :class:`PredictionResult`
- :func:`run_prediction` — consumes :func:`predict` (optional progress callback)
- :func:`image_signature` — shape/dtype/content hash of an image (stale-result checks)
- :func:`save_result` / :func:`load_result` — standalone zarr v3 output of one prediction
- :func:`summarize` — JSON-able image-level summary (scores with their aggregation named, regions)
- :class:`Cancelled`, :func:`resolve_device`, :func:`normalize`
"""

from napari_probseg.engine._device import resolve_device
from napari_probseg.engine._io import load_result, save_result, to_jsonable
from napari_probseg.engine._normalize import normalize, parse_normalization
from napari_probseg.engine._predict import cancel_checker, predict, run_prediction
from napari_probseg.engine._provenance import image_signature, package_versions
from napari_probseg.engine._summary import card_reference, summarize
from napari_probseg.engine._types import Cancelled, PredictionResult, Progress

__all__ = [
    "Cancelled",
    "PredictionResult",
    "Progress",
    "cancel_checker",
    "card_reference",
    "image_signature",
    "load_result",
    "normalize",
    "package_versions",
    "parse_normalization",
    "predict",
    "resolve_device",
    "run_prediction",
    "save_result",
    "summarize",
    "to_jsonable",
]
