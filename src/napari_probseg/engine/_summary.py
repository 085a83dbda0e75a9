"""Image-level summary of a :class:`PredictionResult`: the engine's entry to the one summary.

The computation lives in :func:`napari_probseg.core.summary.image_summary`; this module only
unpacks a result and reads the card's in-domain reference (in one place, :func:`card_reference`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from napari_probseg.core.summary import (
    DEFAULT_AGGREGATIONS,
    DEFAULT_CLUSTER_IOU,
    DEFAULT_HIGHLIGHT_SHARE,
    DEFAULT_MAX_REGIONS,
    DEFAULT_MIN_REGION,
    image_summary,
)
from napari_probseg.engine._types import PredictionResult

__all__ = ["DEFAULT_AGGREGATIONS", "card_reference", "summarize"]


def card_reference(card: Any) -> dict | None:
    """Return a model card's in-domain ``reference`` dict, or None when it has none.

    The one place that reads the field (cards without it, older cards and ``None`` give None).
    """
    ref = getattr(card, "reference", None) if card is not None else None
    return dict(ref) if isinstance(ref, Mapping) and ref else None


def summarize(
    result: PredictionResult,
    *,
    reference: Mapping[str, Any] | None = None,
    aggregations: Sequence[str | Mapping[str, Any]] = DEFAULT_AGGREGATIONS,
    patch_size: int = 8,
    region_map: str = "predictive_entropy",
    highlight_share: float = DEFAULT_HIGHLIGHT_SHARE,
    min_size: int = DEFAULT_MIN_REGION,
    top_k: int = DEFAULT_MAX_REGIONS,
    cluster_iou: float = DEFAULT_CLUSTER_IOU,
) -> dict:
    """Summarize a prediction as a JSON-able dict (scores, structure, regions, warnings, verdict).

    Parameters
    ----------
    result : PredictionResult
    reference : mapping or None, keyword-only
        The in-domain reference of the run's model card (:func:`card_reference`); None: the
        verdict says it cannot judge what is unusual.
    aggregations, patch_size, region_map, highlight_share, min_size, top_k, cluster_iou
        See :func:`napari_probseg.core.summary.image_summary`.

    Returns
    -------
    dict
        :func:`napari_probseg.core.summary.image_summary` plus ``scale``.
    """
    # a streamed result's maps and samples are zarr arrays in its output store: the summary
    # reads them block by block (never whole, so the CLI's --out run keeps its memory bound)
    maps = result.maps
    decomposed = result.meanings.get("mutual_information") is not None
    arrays = {"predictive_entropy": maps.predictive_entropy}
    if decomposed:
        arrays["mutual_information"] = maps.mutual_information
        arrays["expected_entropy"] = maps.expected_entropy
    summary = image_summary(
        mean_probs=maps.mean_probs,
        maps=arrays,
        samples=result.samples,
        method=result.method,
        source=result.source,
        n_samples=result.n_samples,
        class_names=result.class_names,
        provenance=result.provenance,
        reference=reference,
        aggregations=aggregations,
        patch_size=patch_size,
        region_map=region_map,
        highlight_share=highlight_share,
        min_size=min_size,
        top_k=top_k,
        cluster_iou=cluster_iou,
    )
    summary["scale"] = [float(s) for s in result.scale]
    return summary
