"""Image-level informativeness for active learning, read from the engine's one summary.

Every score is a number the summary (:func:`napari_probseg.engine.summarize`) already computes
with :mod:`napari_probseg.core.aggregate` and :mod:`napari_probseg.core.structure`; this module
only names them for ranking and reads them back, in one place (:func:`score_from_summary`).

Scores (higher = more informative):

- ``"bald"`` (alias ``"mutual_information"``): BALD, the mutual information between the label and
  the randomness of the method (Houlsby et al. 2011) -- epistemic for parameter sampling;
- ``"predictive_entropy"``: entropy of the mean prediction (total uncertainty);
- ``"expected_entropy"``: mean entropy of the samples;
- ``"sample_set_entropy"``: entropy (bits) of the distribution of the distinct sample masks, the
  "cluster entropy" of review §7.2 (structure-aware: no pixel-wise overcounting);
- ``"dice_disagreement"``: 1 - mean pairwise Dice of the samples (structure-aware);
- ``"volume_cov"``: coefficient of variation of the sampled foreground volume (structure-aware;
  NaN, ranked last, when no sample has foreground).

Pixel-map scores need an aggregation (:data:`AGGREGATIONS`); structure scores have none (their
aggregation is the sample set itself, recorded as ``"samples"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AGGREGATIONS",
    "MAP_SCORES",
    "SCORES",
    "STRUCTURE_SCORES",
    "ImageScore",
    "check_score",
    "score_from_summary",
    "score_result",
    "summary_aggregation",
]

#: Pixel-map scores and the summary map each one reads.
MAP_SCORES: dict[str, str] = {
    "bald": "mutual_information",
    "mutual_information": "mutual_information",
    "predictive_entropy": "predictive_entropy",
    "expected_entropy": "expected_entropy",
}
#: Structure-aware scores: (summary structure measure, transform of its value).
STRUCTURE_SCORES: dict[str, tuple[str, str]] = {
    "sample_set_entropy": ("sample_set_entropy", "identity"),
    "dice_disagreement": ("pairwise_dice", "one_minus"),
    "volume_cov": ("volume_cov", "identity"),
}
SCORES: tuple[str, ...] = (*MAP_SCORES, *STRUCTURE_SCORES)
#: Aggregations of pixel-map scores (structure scores use ``"samples"``).
AGGREGATIONS: tuple[str, ...] = ("mean", "foreground_normalized", "patch_max", "top_k_mean")
#: Default number of voxels averaged by ``"top_k_mean"``.
DEFAULT_TOP_K = 64


@dataclass(frozen=True)
class ImageScore:
    """One image's informativeness.

    Attributes
    ----------
    value : float
        The score (NaN when undefined, e.g. volume CoV without foreground).
    score, aggregation : str
        What was computed (``aggregation`` is ``"samples"`` for structure scores).
    description : str
        Plain words, from the summary / core.
    """

    value: float
    score: str
    aggregation: str
    description: str = ""


def check_score(score: str, aggregation: str | None) -> tuple[str, str]:
    """Validate a ``(score, aggregation)`` pair and return it with the aggregation filled in.

    Raises
    ------
    ValueError
        ``score: ...`` unknown; ``aggregation: ...`` unknown or given for a structure score.
    """
    if score not in SCORES:
        raise ValueError(f"score: expected one of {', '.join(SCORES)}, got {score!r}")
    if score in STRUCTURE_SCORES:
        if aggregation not in (None, "samples"):
            raise ValueError(
                f"aggregation: {score!r} is a structure measure of the sample set and takes no "
                f"aggregation (got {aggregation!r})"
            )
        return score, "samples"
    aggregation = aggregation or "mean"
    if aggregation not in AGGREGATIONS:
        raise ValueError(
            f"aggregation: expected one of {', '.join(AGGREGATIONS)}, got {aggregation!r}"
        )
    return score, aggregation


def summary_aggregation(aggregation: str, *, top_k: int = DEFAULT_TOP_K) -> Any:
    """The entry of ``summarize(aggregations=...)`` that computes ``aggregation``.

    ``"top_k_mean"`` is passed as ``{"method": "top_k_mean", "k": top_k}`` when core offers it;
    otherwise it is computed by :func:`score_result` from core's ``thresholded_mean``.
    """
    if aggregation == "top_k_mean":
        return {"method": "top_k_mean", "k": int(top_k)}
    if aggregation == "samples":
        return "mean"
    return aggregation


def _core_has_top_k() -> bool:
    from napari_probseg.core.aggregate import AGGREGATIONS as CORE

    return "top_k_mean" in CORE


def score_from_summary(summary: Mapping[str, Any], *, score: str, aggregation: str) -> ImageScore:
    """Read one score from a summary (the only place that knows the summary's keys).

    Parameters
    ----------
    summary : mapping
        Output of :func:`napari_probseg.engine.summarize`: ``scores`` entries have ``map``,
        ``aggregation`` and ``value``; ``structure`` entries ``measure`` and ``value``. ``None``
        values (NaN in the summary) become NaN.
    score, aggregation : str
        As validated by :func:`check_score`.

    Raises
    ------
    ValueError
        The summary has no such entry (e.g. BALD of a deterministic method, or structure
        measures of a run without samples).
    """
    score, aggregation = check_score(score, aggregation)
    if score in MAP_SCORES:
        name = MAP_SCORES[score]
        for entry in summary.get("scores", []):
            if entry.get("map") == name and entry.get("aggregation") == aggregation:
                value = entry.get("value")
                return ImageScore(
                    math.nan if value is None else float(value),
                    score,
                    aggregation,
                    str(entry.get("description", "")),
                )
        raise ValueError(
            f"score: the summary has no {name}/{aggregation} (method {summary.get('method')!r}"
            + (" is deterministic" if name != "predictive_entropy" else "")
            + ")"
        )
    measure, transform = STRUCTURE_SCORES[score]
    for entry in summary.get("structure", []):
        if entry.get("measure") == measure:
            value = entry.get("value")
            value = math.nan if value is None else float(value)
            if transform == "one_minus":
                value = 1.0 - value
            text = str(entry.get("aggregation", ""))
            return ImageScore(
                value, score, "samples", f"1 - ({text})" if transform == "one_minus" else text
            )
    raise ValueError(f"score: the summary has no structure measure {measure!r} (no samples kept)")


def score_result(
    result: Any,
    *,
    score: str,
    aggregation: str | None = None,
    top_k: int = DEFAULT_TOP_K,
    patch_size: int = 8,
) -> ImageScore:
    """Score one prediction (a :class:`~napari_probseg.engine.PredictionResult`).

    Parameters
    ----------
    result : PredictionResult
        Needs ``samples`` (``keep_samples=True``) for structure scores.
    score, aggregation : str
        See the module docs; ``aggregation`` defaults to ``"mean"`` for map scores.
    top_k : int
        Voxels averaged by ``"top_k_mean"`` (clipped to the image size).
    patch_size : int
        Patch edge of ``"patch_max"``.

    Returns
    -------
    ImageScore

    Raises
    ------
    ValueError
        Unknown score or aggregation; the score is not defined for this run.
    """
    from napari_probseg.engine import summarize

    score, aggregation = check_score(score, aggregation)
    if aggregation == "top_k_mean" and not _core_has_top_k():
        return _top_k_mean(result, score=score, top_k=top_k)
    summary = summarize(
        result,
        aggregations=[summary_aggregation(aggregation, top_k=top_k)],
        patch_size=patch_size,
    )
    return score_from_summary(summary, score=score, aggregation=aggregation)


def _top_k_mean(result: Any, *, score: str, top_k: int) -> ImageScore:
    """Mean of the ``top_k`` largest values, via core's ``thresholded_mean``.

    The threshold is the (k+1)-th largest value, so the mean is over the values strictly above it
    (exactly the top k unless values tie at the threshold).
    """
    import numpy as np

    from napari_probseg.core.aggregate import aggregate

    if int(top_k) < 1:
        raise ValueError(f"top_k: expected a positive int, got {top_k!r}")
    name = MAP_SCORES[score]
    maps = result.maps
    if name != "predictive_entropy" and result.meanings.get("mutual_information") is None:
        raise ValueError(
            f"score: {score!r} needs a sampling method; {result.method} is deterministic"
        )
    umap = np.asarray(getattr(maps, name), np.float64)
    flat = umap.ravel()
    k = min(int(top_k), flat.size)
    if k == flat.size:
        value = aggregate(umap, method="mean")
        return ImageScore(value.value, score, "top_k_mean", value.description)
    threshold = float(np.partition(flat, flat.size - k - 1)[flat.size - k - 1])
    value = aggregate(umap, method="thresholded_mean", threshold=threshold)
    text = f"mean of the {k} largest values of the map ({value.description})"
    return ImageScore(value.value, score, "top_k_mean", text)
