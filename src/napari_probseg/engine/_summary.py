"""Image-level summary of a prediction: scores with their aggregation named, structure, regions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_probseg.engine._io import to_jsonable
from napari_probseg.engine._types import PredictionResult

#: Aggregations computed by default: the mean, the foreground-normalized sum and an 8-voxel
#: patch maximum (DESIGN.md: always several, each named).
DEFAULT_AGGREGATIONS: tuple[Any, ...] = ("mean", "foreground_normalized", "patch_max")

_STRUCTURE_TEXT = {
    "pairwise_dice": "mean Dice over the sample pairs s < t (foreground classes, empty-empty = 1)",
    "volume_cov": "std / mean of the per-sample foreground volume (ddof = 0)",
    "sample_set_entropy": "entropy of the empirical distribution of distinct sample masks (bits)",
    "factorized_entropy": "sum over voxels of the per-voxel label entropy (bits); overestimates "
    "the uncertainty of spatially coherent masks",
}


def summarize(
    result: PredictionResult,
    *,
    aggregations: Sequence[str | Mapping[str, Any]] = DEFAULT_AGGREGATIONS,
    patch_size: int = 8,
    region_map: str = "predictive_entropy",
    quantile: float = 0.95,
    min_size: int = 8,
    top_k: int = 5,
) -> dict:
    """Summarize a prediction as a JSON-able dict.

    Parameters
    ----------
    result : PredictionResult
    aggregations : sequence of str or mapping
        Names from :data:`napari_probseg.core.aggregate.AGGREGATIONS`, or mappings
        ``{"method": name, **options}`` (e.g. ``{"method": "thresholded_share", "threshold":
        0.3}``). ``"foreground_normalized"`` uses the argmax of the mean probabilities as the
        foreground; ``"patch_max"`` uses ``patch_size`` (clipped to the image).
    patch_size : int
        Patch edge for ``"patch_max"``.
    region_map : str
        Map whose top regions are listed (``"predictive_entropy"``, ``"mutual_information"``,
        ``"expected_entropy"``).
    quantile, min_size, top_k : float, int, int
        Passed to :func:`napari_probseg.core.regions.top_regions` (``max_regions=top_k``).

    Returns
    -------
    dict
        ``method``, ``source``, ``n_samples``, ``seed``, ``device``, ``model``, ``card_sha256``,
        ``meanings``, ``labels`` (term labels for this source), ``timings``, ``scores`` (one entry
        per map and aggregation: ``map``, ``label``, ``aggregation``, ``params``, ``value``,
        ``description``), ``structure`` (pairwise Dice, volume CoV, sample-set and factorized
        entropy, each with its aggregation described; empty without samples), ``regions``
        (``map``, ``quantile``, ``threshold``, ``top``: rank, score, size, bbox, centroid, mean,
        max) and ``warnings``. NaN values become ``None``.

    Raises
    ------
    ValueError
        ``region_map: ...`` unknown; invalid aggregation names or options (from ``aggregate``).
    """
    from napari_probseg.core.aggregate import aggregate
    from napari_probseg.core.regions import top_regions
    from napari_probseg.core.structure import (
        factorized_entropy,
        pairwise_dice,
        sample_set_entropy,
        volume_cov,
    )
    from napari_probseg.core.uncertainty import term_label

    maps = result.maps.to_numpy() if hasattr(result.maps, "to_numpy") else result.maps
    deterministic = result.meanings.get("mutual_information") is None
    map_names = ["predictive_entropy"]
    if not deterministic:
        map_names += ["mutual_information", "expected_entropy"]
    if region_map not in ("predictive_entropy", "mutual_information", "expected_entropy"):
        raise ValueError(
            "region_map: expected 'predictive_entropy', 'mutual_information' or "
            f"'expected_entropy', got {region_map!r}"
        )
    foreground = np.asarray(maps.mean_probs).argmax(axis=0) > 0
    shape = foreground.shape
    scores = []
    for name in map_names:
        umap = np.asarray(getattr(maps, name))
        for agg in aggregations:
            options = dict(agg) if isinstance(agg, Mapping) else {"method": agg}
            method = options.pop("method")
            if method == "foreground_normalized":
                options.setdefault("mask", foreground)
            if method == "patch_max":
                options.setdefault("patch_size", tuple(min(patch_size, s) for s in shape))
            score = aggregate(umap, method=method, **options)
            scores.append(
                {
                    "map": name,
                    "label": term_label(name, result.source),
                    "aggregation": score.method,
                    "params": score.params,
                    "value": score.value,
                    "units": "nats",
                    "description": score.description,
                }
            )
    structure = []
    if result.samples is not None:
        samples = result.samples
        for name, fn in (
            ("pairwise_dice", pairwise_dice),
            ("volume_cov", volume_cov),
            ("sample_set_entropy", sample_set_entropy),
            ("factorized_entropy", factorized_entropy),
        ):
            structure.append(
                {"measure": name, "value": fn(samples), "aggregation": _STRUCTURE_TEXT[name]}
            )
    found = top_regions(
        getattr(maps, region_map), quantile=quantile, min_size=min_size, max_regions=top_k
    )
    regions = {
        "map": region_map,
        "label": term_label(region_map, result.source),
        "quantile": quantile,
        "threshold": found.threshold,
        "min_size": min_size,
        "top": [
            {
                "rank": r.rank,
                "score": r.score,
                "size": r.size,
                "bbox": [[int(s.start), int(s.stop)] for s in r.bbox],
                "centroid": list(r.centroid),
                "mean": r.mean,
                "max": r.max,
            }
            for r in found.regions
        ],
    }
    prov = result.provenance
    labels = {name: term_label(name, result.source) for name in map_names}
    summary = {
        "method": result.method,
        "source": list(result.source),
        "n_samples": result.n_samples,
        "seed": prov.get("seed"),
        "device": prov.get("device"),
        "model": prov.get("card_name"),
        "card_sha256": prov.get("card_sha256"),
        "class_names": list(result.class_names),
        "shape": list(shape),
        "scale": list(result.scale),
        "meanings": result.meanings,
        "labels": labels,
        "timings": prov.get("timings", {}),
        "scores": scores,
        "structure": structure,
        "regions": regions,
        "warnings": list(prov.get("warnings", [])),
    }
    return to_jsonable(summary)
