"""Public uncertainty API: entropy decomposition, structure measures, aggregation, regions and
the one image-level summary (``image_summary``, ``verdict``).

Thin re-exports of :mod:`napari_probseg.core` (``from napari_probseg.uncertainty import
decompose``). Importing this module does not import torch; tensors are handled lazily when given.
"""

from __future__ import annotations

from napari_probseg.core.aggregate import AGGREGATIONS, AggregateScore, aggregate, patch_means
from napari_probseg.core.regions import Region, TopRegions, top_regions
from napari_probseg.core.structure import (
    Envelope,
    Hypothesis,
    cluster_entropy,
    consensus,
    distinct_hypotheses,
    envelope,
    factorized_entropy,
    iou_matrix,
    pairwise_dice,
    sample_set_entropy,
    volume_cov,
)
from napari_probseg.core.summary import FOREGROUND, image_summary, verdict
from napari_probseg.core.uncertainty import (
    SOURCES,
    TERMS,
    Decomposition,
    UncertaintyAccumulator,
    UncertaintyMaps,
    decompose,
    entropy,
    stitch_maps,
    term_label,
    term_meanings,
)

__all__ = [
    "AGGREGATIONS",
    "FOREGROUND",
    "SOURCES",
    "TERMS",
    "AggregateScore",
    "Decomposition",
    "Envelope",
    "Hypothesis",
    "Region",
    "TopRegions",
    "UncertaintyAccumulator",
    "UncertaintyMaps",
    "aggregate",
    "cluster_entropy",
    "consensus",
    "decompose",
    "distinct_hypotheses",
    "entropy",
    "envelope",
    "factorized_entropy",
    "image_summary",
    "iou_matrix",
    "pairwise_dice",
    "patch_means",
    "sample_set_entropy",
    "stitch_maps",
    "term_label",
    "term_meanings",
    "top_regions",
    "verdict",
    "volume_cov",
]
