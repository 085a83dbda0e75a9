"""The one image-level summary of a prediction: scores, structure, regions, warnings and verdict.

Every view (``probseg predict`` text and ``--json``, the napari review panel, ``probseg evaluate``,
a store's saved runs) renders the dict returned by :func:`image_summary`; none computes a score
itself. Its conventions are stated once, here:

- **Foreground** (:data:`FOREGROUND`): the consensus foreground, i.e. the voxels whose argmax of
  the mean probabilities is a foreground class. ``foreground_normalized`` scores divide the map's
  sum over the whole image by the size of this foreground.
- **Highlight share** (:data:`DEFAULT_HIGHLIGHT_SHARE`): the share of voxels highlighted as most
  uncertain (0.05 = the top 5 %). The ranked regions are the connected components of that
  highlight; it is called ``highlight_share`` everywhere.
- **Score keys**: ``"<map>/<aggregation>"`` (e.g. ``"mutual_information/mean"``) and
  ``"structure/<measure>"`` — the keys of a model card's in-domain ``reference``.
- **Verdict** (:func:`verdict`): the image's epistemic and aleatoric scores compared with the 95th
  percentile of the card's in-domain reference for the run's method, plus the input-domain check.
  Which entropy term is epistemic depends on the randomness source (DESIGN.md "Methods"); the split
  is approximate (review §7.1) and the verdict says so.

Pure numpy and plain dicts: callable from the engine (a ``PredictionResult``), evaluation (a stored
run) and tests alike.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_probseg.core._serialize import to_jsonable
from napari_probseg.core._terms import LATENT_CAVEAT, normalize_source, term_label

__all__ = [
    "CAVEAT",
    "DEFAULT_AGGREGATIONS",
    "DEFAULT_CLUSTER_IOU",
    "DEFAULT_HIGHLIGHT_SHARE",
    "DEFAULT_MAX_REGIONS",
    "DEFAULT_MIN_REGION",
    "FOREGROUND",
    "LATENT_CAVEAT",
    "REFERENCE_QUANTILE",
    "VERDICT_KINDS",
    "image_summary",
    "score_key",
    "score_value",
    "verdict",
    "verdict_terms",
]

#: Aggregations computed by default (DESIGN.md: always several, each named).
DEFAULT_AGGREGATIONS: tuple[str, ...] = ("mean", "foreground_normalized", "patch_max")
#: The one definition of the foreground used by foreground-normalized scores.
FOREGROUND = (
    "consensus foreground: voxels whose argmax of the mean probabilities is a foreground class"
)
#: Share of voxels highlighted as most uncertain (the ranked regions are its components).
DEFAULT_HIGHLIGHT_SHARE = 0.05
#: Smallest ranked region (voxels) and the most regions listed (the review panel's table).
DEFAULT_MIN_REGION = 4
DEFAULT_MAX_REGIONS = 20
#: Two samples belong to one distinct hypothesis when their IoU is at least this (average linkage).
DEFAULT_CLUSTER_IOU = 0.8
#: Reference quantile above which a score counts as unusual for in-domain images.
REFERENCE_QUANTILE = "0.95"
#: Aggregation the verdict reads by default (the one a reference must hold).
DEFAULT_VERDICT_AGGREGATION = "mean"
#: Compared instead where the chosen aggregation is undefined (no consensus foreground).
FALLBACK_AGGREGATION = "mean"
_STRUCTURE_LABEL = {
    "volume_cov": "spread of the segmented volume over the samples (coefficient of variation)",
    "pairwise_dice": "mean pairwise Dice of the samples",
    "cluster_entropy": "entropy over distinct hypotheses",
}
_AGGREGATION_TEXT = {
    "mean": "mean over the image",
    "foreground_normalized": "summed over the image per consensus-foreground voxel",
    "patch_max": "largest patch mean",
}
#: Every ``verdict["kind"]``.
VERDICT_KINDS = (
    "confident",
    "unfamiliar",
    "ambiguous",
    "unfamiliar_and_ambiguous",
    "uncertain",
    "no_reference",
)
#: Shown wherever the decomposition is named (review §7.1).
CAVEAT = (
    "The split into epistemic and aleatoric parts is approximate: the terms are not independent "
    "and depend on the number of samples (review §7.1)."
)

_STRUCTURE_TEXT = {
    "pairwise_dice": "mean Dice over the sample pairs s < t (foreground classes, empty-empty = 1)",
    "volume_cov": "std / mean of the per-sample foreground volume (ddof = 0)",
    "sample_set_entropy": "entropy of the empirical distribution of exactly equal sample masks "
    "(bits); at most log2 N",
    "cluster_entropy": "entropy of the shares of distinct hypotheses (bits): samples grouped by "
    "average linkage on 1 - IoU, cut where IoU < {iou:g}",
    "factorized_entropy": "sum over voxels of the per-voxel label entropy (bits); overestimates "
    "the uncertainty of spatially coherent masks",
}


def score_key(map_name: str, aggregation: str) -> str:
    """Return the reference key of a score, ``"<map>/<aggregation>"``."""
    return f"{map_name}/{aggregation}"


def score_value(summary: Mapping[str, Any], key: str) -> float | None:
    """Return the value of score ``key`` (``"<map>/<aggregation>"`` or ``"structure/<m>"``).

    Returns None when the summary has no such entry (or the value is undefined).
    """
    if key.startswith("structure/"):
        measure = key.split("/", 1)[1]
        for m in summary.get("structure", []):
            if m["measure"] == measure:
                return m["value"]
        return None
    for s in summary.get("scores", []):
        if s["key"] == key:
            return s["value"]
    return None


def verdict_terms(source: Sequence[str] | str) -> dict[str, str | None]:
    """Return which entropy term the verdict reads as epistemic and which as aleatoric.

    Parameters
    ----------
    source : str or sequence of str
        Randomness source(s) of the method.

    Returns
    -------
    dict
        ``{"epistemic": map or None, "aleatoric": map or None, "reading": str}``:
        parameter / input randomness: mutual information epistemic, expected entropy aleatoric;
        latent randomness: mutual information aleatoric (review eq. 42, Kahl et al.), expected
        entropy the remainder (read as epistemic); composed latent + parameter/input: mutual
        information mixes both, so it is read as the (mixed) spread and expected entropy as the
        within-sample (aleatoric) part; ``"none"``: no decomposition (predictive entropy only).
    """
    src = normalize_source(source)
    if src == ("none",):
        return {"epistemic": None, "aleatoric": None, "reading": "undecomposed"}
    if src == ("latent",):
        return {
            "epistemic": "expected_entropy",
            "aleatoric": "mutual_information",
            "reading": "latent (review eq. 42, Kahl et al.)",
        }
    if "latent" in src:
        return {
            "epistemic": "mutual_information",
            "aleatoric": "expected_entropy",
            "reading": "composed: mutual information mixes epistemic and latent (aleatoric) spread",
        }
    return {
        "epistemic": "mutual_information",
        "aleatoric": "expected_entropy",
        "reading": "parameter/input randomness",
    }


def _reference_entry(
    reference: Mapping[str, Any] | None, method: str, key: str
) -> Mapping[str, Any] | None:
    if not reference:
        return None
    entry = ((reference.get("methods") or {}).get(method) or {}).get(key)
    if not entry or REFERENCE_QUANTILE not in (entry.get("quantiles") or {}):
        return None
    return entry


def _score_label(key: str, source: Sequence[str]) -> str:
    """Plain-words name of a verdict score: the map's term label, or the structure measure's."""
    head, tail = key.split("/", 1)
    if head == "structure":
        return _STRUCTURE_LABEL.get(tail, tail.replace("_", " "))
    return term_label(head, source)


def _check(
    summary: Mapping[str, Any],
    reference: Mapping[str, Any] | None,
    method: str,
    key: str | None,
    role: str,
) -> dict[str, Any]:
    """Compare one score (``"<map>/<aggregation>"`` or ``"structure/<measure>"``) with the
    reference's upper quantile."""
    if key is None:
        return {"role": role, "key": None, "status": "undefined"}
    head, tail = key.split("/", 1)
    value = score_value(summary, key)
    out: dict[str, Any] = {
        "role": role,
        "key": key,
        "map": None if head == "structure" else head,
        "aggregation": tail if head != "structure" else None,
        "measure": tail if head == "structure" else None,
        "label": _score_label(key, summary["source"]),
        "how": _AGGREGATION_TEXT.get(tail, f"{tail} over the image")
        if head != "structure"
        else "over the samples",
        "value": value,
        "reference_quantile": float(REFERENCE_QUANTILE),
    }
    entry = _reference_entry(reference, method, key)
    if entry is None:
        out.update(status="no_reference", threshold=None, reference_n=None)
        return out
    threshold = float(entry["quantiles"][REFERENCE_QUANTILE])
    out.update(threshold=threshold, reference_n=entry.get("n"))
    if value is None or not math.isfinite(value):
        out["status"] = "undefined"
    else:
        out["status"] = "above" if value > threshold else "in_range"
    return out


def _check_with_fallback(
    summary: Mapping[str, Any],
    reference: Mapping[str, Any] | None,
    method: str,
    key: str | None,
    fallback: str | None,
    role: str,
) -> dict[str, Any]:
    """:func:`_check`, falling back to ``fallback`` where the score is undefined.

    A foreground-normalized score has no value when the consensus has no foreground, a volume
    spread none when every sample is empty; an undefined score must never read as "in range"
    (the verdict would be confident exactly where the model sees nothing), so the map's mean
    over the image is compared instead and the check says so (``fallback_from``)."""
    out = _check(summary, reference, method, key, role)
    if out["status"] == "undefined" and fallback is not None and fallback != key:
        alt = _check(summary, reference, method, fallback, role)
        if alt["status"] in ("above", "in_range"):
            alt["fallback_from"] = key
            return alt
    return out


def verdict_scores(
    reference: Mapping[str, Any] | None,
    method: str,
    source: Sequence[str] | str,
    aggregation: str | None = None,
) -> dict[str, str | None]:
    """Return the score keys the verdict compares for ``method``.

    Parameters
    ----------
    reference : mapping or None
        The card's reference; ``reference["verdict"][method]`` may name the scores
        (``{"epistemic": key, "aleatoric": key, "chosen_by": text}``, chosen when the card's
        reference was built; see :mod:`napari_probseg.training.reference`).
    method : str
    source : str or sequence of str
    aggregation : str or None
        Force this aggregation of the maps of :func:`verdict_terms` (ignores the card's choice).

    Returns
    -------
    dict
        ``{"epistemic": key, "aleatoric": key or None, "chosen_by": text or None}``; single-pass
        methods: ``epistemic`` is the predictive entropy's score (role "total").
    """
    terms = verdict_terms(source)
    epistemic_map = terms["epistemic"] or "predictive_entropy"
    chosen = {} if aggregation else (((reference or {}).get("verdict") or {}).get(method) or {})
    agg = aggregation or DEFAULT_VERDICT_AGGREGATION
    aleatoric = terms["aleatoric"]
    return {
        "epistemic": chosen.get("epistemic") or score_key(epistemic_map, agg),
        "aleatoric": chosen.get("aleatoric") or (aleatoric and score_key(aleatoric, agg)),
        "chosen_by": chosen.get("chosen_by"),
    }


def verdict(
    summary: Mapping[str, Any],
    *,
    reference: Mapping[str, Any] | None,
    domain: Mapping[str, Any] | None = None,
    aggregation: str | None = None,
) -> dict[str, Any]:
    """Say what the image's uncertainty suggests, against the card's in-domain reference.

    Parameters
    ----------
    summary : mapping
        Scores and structure of :func:`image_summary` (``method``, ``source``, ``scores``).
    reference : mapping or None, keyword-only
        The card's ``reference`` (``{"data", "n_images", "methods": {method: {key: {"n",
        "quantiles": {"0.05", "0.5", "0.95", "0.99"}}}}}``); None when the card has none.
    domain : mapping or None, keyword-only
        ``provenance["domain"]`` of the run (``in_domain`` False means the input check failed).
    aggregation : str or None, keyword-only
        Compare this aggregation of the epistemic and aleatoric maps; None (default): the
        scores the card's reference chose for the method (``reference["verdict"]``), else
        :data:`DEFAULT_VERDICT_AGGREGATION` (see :func:`verdict_scores`). Where the image has
        no value for a score (no consensus foreground, every sample empty), the map's mean over
        the image is compared instead and the check carries ``fallback_from``.

    Returns
    -------
    dict
        ``kind`` (one of :data:`VERDICT_KINDS`), ``sentence`` (plain words, names the
        aggregation), ``action``, ``flags`` (subset of ``"unfamiliar"``, ``"ambiguous"``,
        ``"out_of_domain"``), ``epistemic`` and ``aleatoric`` (``key``, ``map``, ``label``,
        ``value``, ``threshold`` = the reference's 95th percentile, ``reference_n``,
        ``status`` in ``"above"``, ``"in_range"``, ``"no_reference"``, ``"undefined"``),
        ``aggregation``, ``reading`` (which term is which for this source), ``reference`` (its
        ``data`` and ``n_images``, or None), ``in_domain`` (True, False or None = not checked)
        and ``caveat``.

    Rules: a score above the reference's 95th percentile flags the image — the epistemic score
    as *unfamiliar* ("defer, or add such images to training"), the aleatoric one as *ambiguous*
    ("review the alternatives"). A failed domain check flags it unfamiliar too. "confident" only
    when both scores are in range and the domain check did not fail; without a reference the
    verdict says the tool cannot judge what is unusual (never "confident" from a fixed ratio).
    A score with no value for the image (no consensus foreground, every sample empty) is
    replaced by its map's mean, which can flag the image but not clear it: in range, the
    verdict says it cannot judge (``kind`` ``"no_reference"``), never "confident".
    """
    method = summary["method"]
    source = tuple(summary["source"])
    terms = verdict_terms(source)
    decomposed = terms["epistemic"] is not None
    in_domain = None if not domain else domain.get("in_domain")
    keys = verdict_scores(reference, method, source, aggregation)
    check = functools.partial(_check_with_fallback, summary, reference, method)
    if decomposed:
        epi = check(
            keys["epistemic"], score_key(terms["epistemic"], FALLBACK_AGGREGATION), "epistemic"
        )
        ale = check(
            keys["aleatoric"], score_key(terms["aleatoric"], FALLBACK_AGGREGATION), "aleatoric"
        )
    else:
        # One pass: only the predictive entropy; it cannot say why the model is unsure.
        epi = check(
            keys["epistemic"], score_key("predictive_entropy", FALLBACK_AGGREGATION), "total"
        )
        ale = {"role": "aleatoric", "key": None, "status": "undefined"}
    flags = []
    if in_domain is False:
        flags.append("out_of_domain")
    if decomposed and epi["status"] == "above":
        flags.append("unfamiliar")
    if decomposed and ale["status"] == "above":
        flags.append("ambiguous")
    has_reference = epi["status"] != "no_reference" and (
        not decomposed or ale["status"] != "no_reference"
    )
    # A fallback may raise a flag but never make the verdict confident: the chosen score was
    # chosen for being informative, and it has no value here (e.g. the model sees no lesion).
    undefined = [
        c
        for c in (epi, ale)
        if c.get("key")
        and (c["status"] == "undefined" or (c.get("fallback_from") and c["status"] == "in_range"))
    ]
    n = summary.get("n_samples")
    n_text = f", N = {n}" if n else ""
    fell_back = [c for c in (epi, ale) if c.get("fallback_from")]
    ref_text = None
    if reference:
        n_ref = epi.get("reference_n") or reference.get("n_images", "?")
        # the data's first clause only: the rest (engine settings, module paths) is for the
        # card reader and made the sentence unreadable (and unbreakable) in the review panel
        data = str(reference.get("data") or "held-out data").split(";", 1)[0]
        ref_text = f"the {float(REFERENCE_QUANTILE):.0%} point of {n_ref} in-domain images ({data})"

    def named(c: Mapping[str, Any]) -> str:
        return f"{c['label']} ({c['how']}{n_text})"

    unfamiliar = "unfamiliar" in flags or "out_of_domain" in flags
    ambiguous = "ambiguous" in flags
    parts = []
    if "out_of_domain" in flags:
        parts.append("the input is far from the model's training data")
    if "unfamiliar" in flags:
        parts.append(
            f"its {named(epi)} is above {ref_text} — the model is unfamiliar with this image"
        )
    if ambiguous:
        parts.append(f"its {named(ale)} is above {ref_text} — the boundary is unusually ambiguous")
    if unfamiliar and ambiguous:
        kind = "unfamiliar_and_ambiguous"
        action = "defer, or add such images to training; then review the alternatives"
    elif unfamiliar:
        kind, action = "unfamiliar", "defer, or add such images to training"
    elif ambiguous:
        kind, action = "ambiguous", "review the alternatives"
    elif not has_reference:
        kind = "no_reference"
        action = "review the highlighted regions"
        missing = [c["key"] for c in (epi, ale) if c.get("status") == "no_reference"]
        parts.append(
            f"the model card has no in-domain reference for method {method!r} "
            f"({', '.join(missing)}), so the tool cannot judge whether this image's uncertainty "
            "is unusual"
        )
    elif undefined:
        # never "confident" on a score that has no value for this image
        kind = "no_reference"
        action = "review the whole image: the model may have missed the structure"
        parts.append(
            "its "
            + " and ".join(
                f"{c['label']} ({_AGGREGATION_TEXT.get(c['fallback_from'].split('/', 1)[1], c['fallback_from'])})"
                if c.get("fallback_from")
                else named(c)
                for c in undefined
            )
            + " has no value for this image, so the tool cannot judge whether its uncertainty "
            "is unusual"
        )
    elif not decomposed:
        if epi["status"] == "above":
            kind, action = "uncertain", "review the highlighted regions, or defer"
            parts.append(
                f"its {named(epi)} is above {ref_text}; this single-pass method "
                "cannot tell unfamiliar from ambiguous (rerun with a sampling method)"
            )
        else:
            kind, action = "confident", "a quick check of the consensus contour should do"
            parts.append(
                f"its {named(epi)} is within {ref_text}, but this single-pass method "
                "cannot tell unfamiliar from ambiguous"
            )
    else:
        kind, action = "confident", "a quick check of the consensus contour should do"
        parts.append(
            f"its {named(epi)} and {named(ale)} are within {ref_text}"
            + ("" if in_domain else "; the input was not checked against the training data")
        )
    label = {
        "confident": "Confident",
        "unfamiliar": "Unfamiliar",
        "ambiguous": "Ambiguous boundary",
        "unfamiliar_and_ambiguous": "Unfamiliar and ambiguous",
        "uncertain": "Uncertain",
        "no_reference": "Cannot judge",
    }[kind]
    if fell_back:
        parts.append(
            " and ".join(f"{c['fallback_from']}" for c in fell_back)
            + " has no value for this image (no consensus foreground, or every sample empty); "
            "the mean over the image was compared instead, which can flag but not clear it"
        )
    sentence = f"{label}: " + "; ".join(parts) + f". Suggested: {action}."
    caveat = LATENT_CAVEAT if "latent" in source else CAVEAT
    return {
        "kind": kind,
        "sentence": sentence,
        "action": action,
        "flags": flags,
        "epistemic": epi,
        "aleatoric": ale,
        "aggregation": epi.get("aggregation") or epi.get("measure"),
        "chosen_by": keys["chosen_by"],
        "reading": terms["reading"],
        "reference": None
        if not reference
        else {"data": reference.get("data"), "n_images": reference.get("n_images")},
        "in_domain": in_domain,
        "caveat": caveat if decomposed else None,
    }


def _structure(stats: Any, cluster_iou: float) -> list[dict[str, Any]]:
    """The structure measures of a :class:`~napari_probseg.core.structure.SampleStructure`."""
    n = stats.n
    exact = stats.sample_set_entropy()
    n_distinct = len(set(stats.digests()))
    saturated = n >= 2 and n_distinct == n
    exact_text = _STRUCTURE_TEXT["sample_set_entropy"]
    if saturated:
        exact_text += (
            f"; saturated: all {n} samples differ, so it equals log2 N = {math.log2(n):.3g} "
            "and says nothing beyond N (read the cluster entropy)"
        )
    n_clusters = len(np.unique(stats.groups(1.0 - cluster_iou)))
    return [
        {
            "measure": "pairwise_dice",
            "value": stats.pairwise_dice(),
            "aggregation": _STRUCTURE_TEXT["pairwise_dice"],
        },
        {
            "measure": "volume_cov",
            "value": stats.volume_cov(),
            "aggregation": _STRUCTURE_TEXT["volume_cov"],
        },
        {
            "measure": "sample_set_entropy",
            "value": exact,
            "aggregation": exact_text,
            "n_distinct": n_distinct,
            "saturated": saturated,
            "max": math.log2(n) if n else None,
        },
        {
            "measure": "cluster_entropy",
            "value": stats.cluster_entropy(min_iou=cluster_iou),
            "aggregation": _STRUCTURE_TEXT["cluster_entropy"].format(iou=cluster_iou),
            "min_iou": cluster_iou,
            "n_clusters": n_clusters,
        },
        {
            "measure": "factorized_entropy",
            "value": stats.factorized_entropy(),
            "aggregation": _STRUCTURE_TEXT["factorized_entropy"],
        },
    ]


def _aggregators(
    aggregations: Sequence[str | Mapping[str, Any]], spatial: tuple[int, ...], patch_size: int
) -> list[tuple[Any, Any]]:
    """One ``(MapAggregator, mask RowBlocks or "foreground" or None)`` per aggregation."""
    from napari_probseg.core._blocks import RowBlocks
    from napari_probseg.core.aggregate import MapAggregator

    out = []
    for agg in aggregations:
        options = dict(agg) if isinstance(agg, Mapping) else {"method": agg}
        method = options.pop("method")
        mask = options.pop("mask", None)
        if method == "foreground_normalized" and mask is None:
            mask = "foreground"
        if method == "patch_max":
            options.setdefault("patch_size", tuple(min(patch_size, s) for s in spatial))
        if mask is not None and not isinstance(mask, str):
            mask = RowBlocks(mask)
            if mask.shape != spatial:
                raise ValueError(f"mask: shape {mask.shape} differs from umap's {spatial}")
        acc = MapAggregator(method, shape=spatial, masked=mask is not None, **options)
        out.append((acc, mask))
    return out


def image_summary(
    *,
    mean_probs: Any,
    maps: Mapping[str, Any],
    samples: Any,
    method: str,
    source: Sequence[str],
    n_samples: int,
    class_names: Sequence[str] = (),
    provenance: Mapping[str, Any] | None = None,
    reference: Mapping[str, Any] | None = None,
    aggregations: Sequence[str | Mapping[str, Any]] = DEFAULT_AGGREGATIONS,
    patch_size: int = 8,
    region_map: str = "predictive_entropy",
    highlight_share: float = DEFAULT_HIGHLIGHT_SHARE,
    min_size: int = DEFAULT_MIN_REGION,
    top_k: int = DEFAULT_MAX_REGIONS,
    cluster_iou: float = DEFAULT_CLUSTER_IOU,
    verdict_aggregation: str | None = None,
) -> dict[str, Any]:
    """Compute the image-level summary of one prediction, as a JSON-able dict.

    Parameters
    ----------
    mean_probs : ndarray, shape (K, *spatial)
        Mean probabilities over the samples; its argmax defines the foreground (:data:`FOREGROUND`).
    maps : mapping of str to ndarray, shape (*spatial)
        ``predictive_entropy`` and, for sampling methods, ``mutual_information`` and
        ``expected_entropy`` (nats). Missing or None maps are not scored.
    samples : ndarray, shape (N, *spatial), or None
        Sample label masks (structure measures need N >= 1; none without samples).

        Every array may be a numpy array, a torch tensor, or a zarr or dask array (a streamed
        prediction's output store): they are read in blocks of rows of the first spatial axis
        (:mod:`napari_probseg.core._blocks`), so the working memory is a block, not the image,
        and the numbers are those of the whole arrays (sums to float rounding).
    method, source, n_samples, class_names
        The run's method name, randomness source(s), number of samples and class names.
    provenance : mapping, optional
        The run's provenance (``seed``, ``device``, ``card_name``, ``card_sha256``, ``timings``,
        ``warnings``, ``domain``). Its warnings become the summary's warnings.
    reference : mapping or None, keyword-only
        The card's in-domain reference (see :func:`verdict`); None: the verdict says it cannot
        judge.
    aggregations : sequence of str or mapping
        Names from :data:`napari_probseg.core.aggregate.AGGREGATIONS`, or mappings
        ``{"method": name, **options}``.
    patch_size : int
        Patch edge for ``"patch_max"`` (clipped to the image).
    region_map : str
        Map whose top regions are listed.
    highlight_share : float in (0, 1)
        Share of voxels highlighted as most uncertain; the regions are its components.
    min_size, top_k : int
        Smallest region kept (voxels) and number of regions listed.
    cluster_iou : float in (0, 1]
        IoU at or above which samples count as one distinct hypothesis (cluster entropy).
    verdict_aggregation : str or None
        Aggregation the verdict compares with the reference (None: the card's choice, see
        :func:`verdict`).

    Returns
    -------
    dict
        ``method``, ``source``, ``n_samples``, ``seed``, ``device``, ``model``, ``card_sha256``,
        ``class_names``, ``shape``, ``meanings``, ``labels``, ``foreground`` (definition and
        voxel count), ``timings``, ``scores`` (``key``, ``map``, ``label``, ``aggregation``,
        ``params``, ``value``, ``units``, ``description``), ``structure``, ``regions`` (``map``,
        ``label``, ``highlight_share``, ``threshold``, ``min_size``, ``top``), ``warnings``,
        ``verdict`` and ``caveat``. Non-finite numbers become None (the package's one JSON
        policy, :func:`napari_probseg.core._serialize.to_jsonable`).

    Raises
    ------
    ValueError
        ``region_map`` or ``highlight_share`` invalid; invalid aggregation names or options.
    """
    from napari_probseg.core._blocks import RowBlocks, common_stride
    from napari_probseg.core._validation import check_finite
    from napari_probseg.core.regions import rank_regions
    from napari_probseg.core.structure import SampleStructure
    from napari_probseg.core.uncertainty import term_meanings

    src = normalize_source(source)
    if region_map not in ("predictive_entropy", "mutual_information", "expected_entropy"):
        raise ValueError(
            "region_map: expected 'predictive_entropy', 'mutual_information' or "
            f"'expected_entropy', got {region_map!r}"
        )
    if not (isinstance(highlight_share, (int, float)) and 0 < highlight_share < 1):
        raise ValueError(f"highlight_share: expected a share in (0, 1), got {highlight_share!r}")
    if not (isinstance(cluster_iou, (int, float)) and 0 < cluster_iou <= 1):
        raise ValueError(f"cluster_iou: expected an IoU in (0, 1], got {cluster_iou!r}")
    probs = RowBlocks(mean_probs, lead=1)
    spatial = probs.spatial
    decomposed = src != ("none",)
    map_names = ["predictive_entropy"]
    if decomposed:
        map_names += [
            m for m in ("mutual_information", "expected_entropy") if maps.get(m) is not None
        ]
    if maps.get(region_map) is None:
        raise ValueError(f"region_map: the run has no {region_map!r} map")
    umaps = {name: RowBlocks(maps[name]) for name in {*map_names, region_map}}
    masks = None
    if samples is not None and int(samples.shape[0]) >= 1:
        masks = RowBlocks(samples, lead=1)
    for name, blocks in [*umaps.items(), ("samples", masks)]:
        if blocks is not None and blocks.spatial != spatial:
            raise ValueError(f"{name}: spatial shape {blocks.spatial} differs from {spatial}")
    every = [probs, *umaps.values(), *([masks] if masks is not None else [])]
    stride = common_stride(every)
    accs = {name: _aggregators(aggregations, spatial, patch_size) for name in map_names}
    stats = SampleStructure(masks.shape[0]) if masks is not None else None
    fg_voxels = 0
    # One pass over the rows, ``stride`` rows of one input at a time, computed in blocks (a
    # streamed prediction's maps and samples are read from its store, never whole).
    for start in range(0, probs.n_rows, stride):
        stop = min(probs.n_rows, start + stride)
        foreground = np.concatenate(
            [block.argmax(axis=0) > 0 for _, _, block in probs.blocks_in(start, stop)]
        )
        fg_voxels += int(np.count_nonzero(foreground))
        for name in map_names:
            for a, b, block in umaps[name].blocks_in(start, stop):
                block = np.asarray(block, np.float64)
                check_finite(block, "umap")
                for acc, mask in accs[name]:
                    if mask is None:
                        acc.add(block)
                    elif isinstance(mask, str):
                        acc.add(block, foreground[a - start : b - start])
                    else:
                        acc.add(block, mask.read(a, b) != 0)
        if stats is not None:
            for _, _, block in masks.blocks_in(start, stop):
                stats.add(block)
        del block, foreground  # views keep their whole read alive
    scores = []
    for name in map_names:
        for acc, _ in accs[name]:
            score = acc.result()
            scores.append(
                {
                    "key": score_key(name, score.method),
                    "map": name,
                    "label": term_label(name, src),
                    "aggregation": score.method,
                    "params": score.params,
                    "value": score.value,
                    "units": "nats",
                    "description": score.description,
                }
            )
    structure = [] if stats is None else _structure(stats, cluster_iou)
    threshold, found = rank_regions(
        umaps[region_map],
        shape=spatial,
        quantile=1.0 - highlight_share,
        min_size=min_size,
        max_regions=top_k,
    )
    regions = {
        "map": region_map,
        "label": term_label(region_map, src),
        "highlight_share": highlight_share,
        "threshold": threshold,
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
            for r in found
        ],
    }
    prov = dict(provenance or {})
    summary: dict[str, Any] = {
        "method": method,
        "source": list(src),
        "n_samples": int(n_samples),
        "seed": prov.get("seed"),
        "device": prov.get("device"),
        "model": prov.get("card_name"),
        "card_sha256": prov.get("card_sha256"),
        "class_names": list(class_names),
        "shape": list(spatial),
        "meanings": term_meanings(src),
        "labels": {name: term_label(name, src) for name in map_names},
        "foreground": {"definition": FOREGROUND, "voxels": fg_voxels},
        "timings": prov.get("timings", {}),
        "scores": scores,
        "structure": structure,
        "regions": regions,
        "warnings": list(prov.get("warnings", [])),
    }
    domain = prov.get("domain")
    summary["verdict"] = verdict(
        summary, reference=reference, domain=domain, aggregation=verdict_aggregation
    )
    summary["caveat"] = summary["verdict"]["caveat"]
    if domain:
        for w in domain.get("warnings", []):
            if w not in summary["warnings"]:
                summary["warnings"].append(w)
    return to_jsonable(summary)
