"""Layer helpers of the researcher panels (which Labels layers are raters of an image, which run
belongs to an image layer); the reports themselves are headless, in
:mod:`napari_probseg.evaluation.store_reports` (re-exported here for the panels).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_probseg.evaluation.store_reports import (  # noqa: F401 (re-exported for the panels)
    REFERENCE_KINDS,
    CalibrationReport,
    Reference,
    _jsonable,
    _store_image_data,
    class_label,
    draw_reliability,
    image_calibration,
    make_reference,
    store_calibration,
    store_images,
    temperature_on_probs,
)

#: ``metadata["probseg"]["what"]`` of layers that hold a rater's committed work.
_RATER_WHATS = ("store-annotation",)
_OLD_VERSION = re.compile(r" v\d+$")


def _probseg_meta(layer: Any) -> dict:
    meta = getattr(layer, "metadata", None)
    probseg = meta.get("probseg") if isinstance(meta, Mapping) else None
    return probseg if isinstance(probseg, Mapping) else {}


def _is_labels(layer: Any) -> bool:
    from napari.layers import Labels  # napari is present wherever layers exist

    return isinstance(layer, Labels)


def rater_layers(layers: Sequence[Any], image_layer: Any) -> list[Any]:
    """Labels layers that hold a rater's mask of ``image_layer``.

    A rater layer has the image's shape and is either a plain Labels layer (the sample data's
    ``"rater <id>"``, a user's own layer) or a store annotation's latest version
    (``metadata["probseg"]["what"] == "store-annotation"``) of the same store image. Layers made
    by a run (hypotheses, highlights), agreement layers, edits in progress and conformal bands
    are never rater layers.

    Parameters
    ----------
    layers : sequence of napari layers
    image_layer : napari.layers.Image

    Returns
    -------
    list of napari.layers.Labels
    """
    shape = np.shape(image_layer.data)
    image_meta = _probseg_meta(image_layer)
    out = []
    for layer in layers:
        if layer is image_layer or not _is_labels(layer) or np.shape(layer.data) != shape:
            continue
        meta = _probseg_meta(layer)
        what = meta.get("what")
        if what is not None and what not in _RATER_WHATS:
            continue
        if what == "store-annotation":
            if _OLD_VERSION.search(str(layer.name)):
                continue  # an older version of a rater shown for comparison
            image_id = image_meta.get("image_id", image_layer.name)
            if meta.get("image_id") != image_id:
                continue
        out.append(layer)
    return out


def record_for(session: Any, image_layer: Any) -> Any:
    """The run of ``session`` computed on ``image_layer`` (the newest one), or None."""
    found = None
    for record in getattr(session, "records", {}).values():
        if record.image_layer is image_layer:
            found = record
    current = getattr(session, "current", None)
    if current is not None and current.image_layer is image_layer:
        found = current
    return found
