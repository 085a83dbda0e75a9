"""Evaluate stored prediction runs against the raters of a project store.

For each image with annotations and a run: calibration (ECE/MCE/ACE, adaptive ECE) against a
chosen reference, observer metrics (GED16 biased and unbiased, HM-IoU16, NCC) against the set of
raters, PAvPU, sample-set structure (pairwise Dice, volume CoV), Dice of the consensus, an
aggregated uncertainty score; over the dataset: calibration from merged
:class:`~napari_probseg.core.calibration.CalibrationAccumulator` sums, means of the per-image
metrics with NaN counts, and the AURC of ranking images by the aggregated uncertainty.

Reference modes (``reference``):

- ``"majority"``: hard labels, the raters' per-pixel majority (ties to background,
  :func:`napari_probseg.store.majority_vote`);
- ``"soft"``: the raters' mean one-hot labels ``(K, *S)`` (calibration "accuracy" = expected
  agreement); PAvPU and Dice use the majority;
- ``"rater:<id>"``: one rater's mask (images without that rater are skipped);
- ``"all"``: every rater's mask: calibration pools each rater's hard labels (equal to the soft
  reference's ECE, pixel-weighted), Dice, risk and PAvPU are means over the raters.

GED, HM-IoU and NCC always compare the samples with the set of all raters of the image.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_probseg.core._serialize import to_jsonable as _jsonable
from napari_probseg.core.aggregate import AGGREGATIONS
from napari_probseg.core.calibration import CalibrationAccumulator, adaptive_ece
from napari_probseg.core.introspection import aurc, dice_risk, pavpu, pavpu_curve
from napari_probseg.core.observer import ged, hm_iou, observer_metrics, summarize
from napari_probseg.core.scoring import brier_score, nll
from napari_probseg.core.uncertainty import entropy
from napari_probseg.evaluation._runs import RunData, load_run

__all__ = [
    "IMAGE_METRICS",
    "REFERENCE_MODES",
    "ImageEvaluation",
    "StoreEvaluation",
    "evaluate_store",
    "parse_reference",
]

REFERENCE_MODES = ("majority", "soft", "rater:<id>", "all")

#: Per-image scalar metrics averaged over the dataset (name -> description).
IMAGE_METRICS = {
    "ece": "expected calibration error (equal-width bins)",
    "mce": "maximum calibration error over non-empty bins",
    "ace": "average calibration error (unweighted mean over non-empty bins)",
    "adaptive_ece": "ECE with equal-mass bins",
    "ged": "GED^2 (d = 1 - IoU) vs all raters, self-pairs included",
    "ged_unbiased": "GED^2 without self-pairs (U-statistic)",
    "hm_iou": "Hungarian-matched IoU vs all raters",
    "ncc": "Pearson correlation of sample and rater variance maps",
    "nll": "mean pixel negative log-likelihood (nats) of the mean probabilities",
    "brier": "mean pixel multi-class Brier score sum_k (p_k - y_k)^2",
    "pavpu": "patch accuracy vs patch uncertainty",
    "pavpu_area": "area under PAvPU over u_T in [0, log K] (normalised: mean PAvPU)",
    "pairwise_dice": "mean Dice over sample pairs",
    "volume_cov": "coefficient of variation of sample volumes",
    "dice": "Dice of the consensus (argmax of mean probabilities) vs the reference",
    "mean_mutual_information": "mean of the mutual-information map (nats)",
    "mean_predictive_entropy": "mean of the predictive-entropy map (nats)",
    "uncertainty": "aggregated predictive entropy (the AURC confidence is minus this)",
}


@dataclass
class ImageEvaluation:
    """Every metric of one image's run (see the module docstring; NaN where undefined)."""

    image_id: str
    run_id: str
    method: str
    source: tuple[str, ...]
    meanings: dict[str, Any]
    n_samples: int
    n_samples_used: int
    raters: list[str]
    probs_from: str
    values: dict[str, float]
    calibration: dict[str, Any]
    pavpu: dict[str, Any]
    uncertainty: dict[str, Any]
    accumulator: CalibrationAccumulator = field(repr=False)
    #: The run's warnings (domain check, numerics), from its one summary.
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (NaN as None)."""
        return _jsonable(
            {
                "image_id": self.image_id,
                "run_id": self.run_id,
                "method": self.method,
                "source": list(self.source),
                "meanings": self.meanings,
                "n_samples": self.n_samples,
                "n_samples_used": self.n_samples_used,
                "n_raters": len(self.raters),
                "raters": self.raters,
                "probs_from": self.probs_from,
                "metrics": self.values,
                "calibration": self.calibration,
                "pavpu": self.pavpu,
                "uncertainty": self.uncertainty,
                "warnings": self.warnings,
            }
        )


@dataclass
class StoreEvaluation:
    """Result of :func:`evaluate_store`: per-image evaluations and the dataset summary."""

    store: str
    reference: dict[str, str]
    settings: dict[str, Any]
    images: list[ImageEvaluation]
    skipped: list[dict[str, str]]
    calibration: Any  # CalibrationResult of the merged accumulators
    means: dict[str, Any]  # name -> MetricSummary
    aurc: Any  # AURCResult or None
    aurc_info: dict[str, Any]
    curves: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        """Distinct methods of the evaluated runs."""
        return sorted({e.method for e in self.images})

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the ``--json`` schema; NaN as None)."""
        cal = self.calibration
        dataset = {
            "n_images": len(self.images),
            "methods": self.methods,
            "calibration": {
                "ece": cal.ece,
                "mce": cal.mce,
                "ace": cal.ace,
                "n_pixels": cal.n_pixels,
                "label_kind": cal.label_kind,
                "reference": cal.reference,
                "confidence": cal.confidence,
                "merged": "CalibrationAccumulator sums merged over the images",
                "bins": {
                    "edges": cal.bin_edges,
                    "counts": cal.counts,
                    "mean_confidence": cal.mean_confidence,
                    "accuracy": cal.accuracy,
                },
            },
            "means": {
                name: {"mean": s.mean, "std": s.std, "n": s.n, "n_nan": s.n_nan}
                for name, s in self.means.items()
            },
            "aurc": None
            if self.aurc is None
            else {
                "aurc": self.aurc.aurc,
                "e_aurc": self.aurc.e_aurc,
                "optimal_aurc": self.aurc.optimal_aurc,
                "n_images": self.aurc.n_images,
                **self.aurc_info,
            },
        }
        return _jsonable(
            {
                "store": self.store,
                "reference": self.reference,
                "settings": self.settings,
                "metric_descriptions": IMAGE_METRICS,
                "images": [e.to_dict() for e in self.images],
                "skipped": self.skipped,
                "dataset": dataset,
                "curves": self.curves,
            }
        )


def parse_reference(reference: str) -> tuple[str, str | None]:
    """Split a reference mode into ``(kind, rater)``; see :data:`REFERENCE_MODES`."""
    if not isinstance(reference, str):
        raise ValueError(f"reference: expected a string, got {type(reference).__name__}")
    if reference in ("majority", "soft", "all"):
        return reference, None
    kind, sep, rater = reference.partition(":")
    if kind == "rater" and sep and rater:
        return "rater", rater
    raise ValueError(
        f"reference: expected one of majority, soft, rater:<id>, all; got {reference!r}"
    )


def _describe_reference(kind: str, rater: str | None) -> str:
    return {
        "majority": "majority vote of the raters (hard labels, ties to background)",
        "soft": "soft labels: mean of the raters' one-hot masks (PAvPU/Dice: majority)",
        "rater": f"rater {rater!r} (hard labels)",
        "all": "every rater's hard labels pooled (Dice, risk, PAvPU: mean over raters)",
    }[kind]


def evaluate_store(
    store: Any,
    *,
    image_ids: Sequence[str] | None = None,
    run: str | None = None,
    reference: str = "majority",
    n_bins: int = 15,
    n_samples: int = 16,
    aggregation: str = "mean",
    pavpu_threshold: float = 0.25,
    curves: bool = False,
    max_subsets: int = 10,
    progress: Callable[[str], None] | None = None,
    ged_kernel: str = "iou",
    ged_absent: str = "present",
    class_index: int | None = None,
) -> StoreEvaluation:
    """Evaluate prediction runs of a store's images against their raters.

    Parameters
    ----------
    store : ProjectStore
    image_ids : sequence of str, optional
        Images to evaluate; each must have annotations and a run (else ``ValueError``). Default:
        every image with annotations and a run (others are listed in ``skipped``).
    run : str, optional
        Run id to evaluate on every image (default: each image's latest run).
    reference : str
        ``"majority"``, ``"soft"``, ``"rater:<id>"`` or ``"all"`` (module docstring).
    n_bins : int
        Equal-width calibration bins (and equal-mass bins of the adaptive ECE).
    n_samples : int
        Samples used by GED/HM-IoU/NCC (the first ``n_samples``; 16 = GED16, HM-IoU16).
    aggregation : str
        How the predictive-entropy map becomes the image's uncertainty score (the AURC ranks
        images by minus this): one of :data:`~napari_probseg.core.aggregate.AGGREGATIONS`
        (``foreground_normalized`` uses the consensus as foreground; ``patch_max`` 8-pixel
        patches; thresholded ones ``0.5 * pavpu_threshold * ln K``).
    pavpu_threshold : float
        PAvPU uncertainty threshold u_T as a fraction of the maximum entropy ``ln K``: a 4x4
        (x4) patch is uncertain when its mean predictive entropy ``>= pavpu_threshold * ln K``.
    curves : bool
        Also compute GED vs number of samples (1..N) and the rater-count ablation (GED/HM-IoU
        with 1..M raters as reference; at most ``max_subsets`` rater subsets per size, all when
        fewer) for the plots.
    max_subsets : int
        See ``curves``.
    progress : callable, optional
        Called with one line per image.
    ged_kernel : {"iou", "dice"}
        GED distance ``1 - IoU`` (default, as the literature) or ``1 - Dice``.
    ged_absent : {"present", "one"}
        GED class-absent convention: ``"present"`` (default) averages over the classes present in
        either mask; ``"one"`` is PHiSeg's (absent from both = 1, mean over every class).
    class_index : int, optional
        Calibration (ECE/MCE/ACE, adaptive ECE and the merged bins) of class ``class_index``
        against the rest, with ``p(class)`` as confidence (:func:`class_view`); default: all
        classes, top-label confidence. The other metrics do not depend on it.

    Returns
    -------
    StoreEvaluation

    Without ``image_ids``, an image whose run cannot be evaluated (computed from another image,
    labels beyond the run's classes) is skipped with the reason; with them it is an error.

    Raises
    ------
    ValueError
        Bad arguments, a requested image without annotations/run, or no image to evaluate.
    """
    from napari_probseg.core._validation import check_choice, check_positive_int

    kind, rater = parse_reference(reference)
    n_bins = check_positive_int(n_bins, "n_bins")
    n_samples = check_positive_int(n_samples, "n_samples")
    check_choice(aggregation, "aggregation", AGGREGATIONS)
    check_choice(ged_kernel, "ged_kernel", ("iou", "dice"))
    check_choice(ged_absent, "ged_absent", ("present", "one"))
    if not (0.0 < float(pavpu_threshold) <= 1.0):
        raise ValueError(f"pavpu_threshold: expected a fraction in (0, 1], got {pavpu_threshold}")
    explicit = image_ids is not None
    ids = list(image_ids) if explicit else store.image_ids()
    if explicit and not ids:
        raise ValueError("image_ids: expected at least one image id")
    known = set(store.image_ids())
    evaluations: list[ImageEvaluation] = []
    skipped: list[dict[str, str]] = []
    per_image_raters: list[np.ndarray] = []
    runs: list[RunData] = []
    ref_text = _describe_reference(kind, rater)
    for image_id in ids:
        if image_id not in known:
            raise ValueError(f"image_ids: no image {image_id!r} in {store.path}")
        reason = _skip_reason(store, image_id, run, kind, rater)
        if reason:
            if explicit:
                raise ValueError(f"image_ids: {image_id!r} {reason}")
            skipped.append({"image_id": image_id, "reason": reason})
            continue
        names = store.raters(image_id)
        masks = np.stack([store.latest(image_id, r)[0] for r in names])
        data = load_run(store, image_id, run)
        try:
            _check_signature(store, data)
            ev = _evaluate_image(
                data,
                masks,
                names,
                kind=kind,
                rater=rater,
                ref_text=ref_text,
                n_bins=n_bins,
                n_samples=n_samples,
                aggregation=aggregation,
                pavpu_threshold=float(pavpu_threshold),
                ged_options={"kernel": ged_kernel, "absent": ged_absent},
                class_index=class_index,
            )
        except ValueError as exc:
            if explicit:
                raise
            skipped.append({"image_id": image_id, "reason": str(exc)})
            continue
        evaluations.append(ev)
        per_image_raters.append(masks)
        runs.append(data)
        if progress is not None:
            progress(f"{len(evaluations)}: {image_id} ({data.method}, run {data.run_id})")
    if not evaluations:
        why = "; ".join(f"{s['image_id']}: {s['reason']}" for s in skipped[:3]) or "no images"
        raise ValueError(f"store: nothing to evaluate ({why})")

    merged = CalibrationAccumulator(
        n_bins=n_bins,
        reference=ref_text,
        confidence="top_label" if class_index is None else "foreground",
    )
    for ev in evaluations:
        merged.merge(ev.accumulator)
    means = {name: summarize(ev.values[name] for ev in evaluations) for name in IMAGE_METRICS}
    risks = np.array([1.0 - ev.values["dice"] for ev in evaluations])
    conf = np.array([-ev.values["uncertainty"] for ev in evaluations])
    ok = np.isfinite(risks) & np.isfinite(conf)
    aurc_result = aurc(risks[ok], conf[ok]) if ok.any() else None
    agg = evaluations[0].uncertainty
    aurc_info = {
        "risk": "1 - Dice of the consensus vs the reference",
        "confidence": f"minus the {agg['aggregation']} of the predictive entropy",
        "aggregation": agg["aggregation"],
        "n_skipped_nan": int((~ok).sum()),
    }
    result = StoreEvaluation(
        store=str(store.path),
        reference={"mode": reference, "description": ref_text},
        settings={
            "n_bins": n_bins,
            "n_samples": n_samples,
            "ged": {
                "kernel": f"1 - {'IoU' if ged_kernel == 'iou' else 'Dice'}",
                "absent": ged_absent,
                "default": "1 - IoU, classes present in either mask (absent = 'present')",
            },
            "aggregation": aggregation,
            "pavpu": {
                "patch": 4,
                "accuracy_threshold": 0.5,
                "uncertainty": "predictive entropy",
                "uncertainty_threshold": f"{pavpu_threshold} * ln K (>=)",
            },
            "run": run or "latest per image",
            "calibration_classes": "all (top-label confidence)"
            if class_index is None
            else f"class {class_index} vs rest (confidence p(class))",
        },
        images=evaluations,
        skipped=skipped,
        calibration=merged.result(),
        means=means,
        aurc=aurc_result,
        aurc_info=aurc_info,
    )
    if curves:
        result.curves = {
            "ged_vs_n": ged_vs_n(runs, per_image_raters),
            "rater_ablation": rater_ablation(
                runs, per_image_raters, n_samples=n_samples, max_subsets=max_subsets
            ),
        }
    return result


def _skip_reason(store: Any, image_id: str, run: str | None, kind: str, rater: str | None) -> str:
    raters = store.raters(image_id)
    if not raters:
        return "has no annotations"
    if kind == "rater" and rater not in raters:
        return f"has no annotation by rater {rater!r} (raters: {', '.join(raters)})"
    runs = [r["run_id"] for r in store.list_predictions(image_id)]
    if not runs:
        return "has no prediction run"
    if run is not None and run not in runs:
        return f"has no run {run!r}"
    return ""


def _check_signature(store: Any, data: RunData) -> None:
    """Refuse a run whose recorded input signature is not the stored image's."""
    signature = data.metadata.get("input_signature")
    if not signature:
        return
    from napari_probseg.engine import image_signature

    image, _ = store.read_image(data.image_id)
    if image_signature(image) != signature:
        raise ValueError(
            f"run: run {data.run_id!r} of {data.image_id!r} was computed from another image "
            "(input signature differs)"
        )


def _evaluate_image(
    data: RunData,
    masks: np.ndarray,
    names: list[str],
    *,
    kind: str,
    rater: str | None,
    ref_text: str,
    n_bins: int,
    n_samples: int,
    aggregation: str,
    pavpu_threshold: float,
    ged_options: dict[str, str] | None = None,
    class_index: int | None = None,
) -> ImageEvaluation:
    probs = data.probs
    k = max(probs.shape[0], int(masks.max(initial=0)) + 1, int(data.samples.max(initial=0)) + 1)
    if probs.shape[0] < k:
        raise ValueError(
            f"run: {data.image_id!r} has labels up to {k - 1} but {probs.shape[0]} classes"
        )
    from napari_probseg.store import majority_vote

    majority = majority_vote(list(masks))
    # Hard references for Dice / PAvPU (and for calibration unless soft).
    if kind == "rater":
        hard = [masks[names.index(rater)]]
    elif kind == "all":
        hard = list(masks)
    else:
        hard = [majority]
    if kind == "soft":
        soft = np.stack([(masks == c).mean(axis=0) for c in range(probs.shape[0])])
    cal_refs = [soft] if kind == "soft" else hard
    conf = "top_label" if class_index is None else "foreground"
    acc = CalibrationAccumulator(n_bins=n_bins, reference=ref_text, confidence=conf)
    a_eces = []
    for ref in cal_refs:
        p_view, lab, fg_map, _ = class_view(probs, ref, class_index)
        acc.update(p_view, lab, foreground_map=fg_map)
        a_eces.append(
            adaptive_ece(p_view, lab, n_bins=n_bins, confidence=conf, foreground_map=fg_map)
        )
    a_ece = float(np.mean(a_eces))
    cal = acc.result()

    samples = data.samples
    used = min(n_samples, len(samples))
    opts = {"kernel": "iou", "absent": "present", **(ged_options or {})}
    obs = observer_metrics(
        samples,
        masks,
        n_samples=n_samples,
        n_classes=k,
        ged_kernel=opts["kernel"],
        ged_absent=opts["absent"],
    )
    if used >= 2 and len(masks) >= 2:
        ged_u = ged(samples, masks, n_samples=n_samples, unbiased=True, n_classes=k, **opts).ged
    else:
        ged_u = float("nan")

    pred = probs.argmax(axis=0)  # consensus: argmax of the predictive distribution
    pe = data.maps.get("predictive_entropy")
    pe = entropy(_renormalize(probs)) if pe is None else np.asarray(pe, np.float64)
    mi = data.maps.get("mutual_information")
    mean_mi = float(np.mean(mi)) if mi is not None else float("nan")
    if mi is None and len(samples) == 1:
        mean_mi = 0.0  # a single (deterministic) sample carries no mutual information
    u_t = pavpu_threshold * math.log(probs.shape[0])
    pv = [pavpu(pred, ref, pe, uncertainty_threshold=u_t) for ref in hard]
    # The curve over u_T on a fixed grid (a share of log K), so that curves average over images.
    grid = np.linspace(0.0, 1.0, 21) * math.log(probs.shape[0])
    curves = [pavpu_curve(pred, ref, pe, thresholds=grid) for ref in hard]
    p_norm = _renormalize(probs)
    if kind == "soft":
        nll_value, brier_value = nll(p_norm, soft), brier_score(p_norm, soft)
    else:
        nll_value = float(np.mean([nll(p_norm, ref) for ref in hard]))
        brier_value = float(np.mean([brier_score(p_norm, ref) for ref in hard]))
    dice = float(np.mean([1.0 - dice_risk(pred, ref) for ref in hard]))
    summary = run_summary(data, pe, aggregation=_aggregation_spec(aggregation, u_t))
    score = summary["scores"][0]
    structure = {m["measure"]: m["value"] for m in summary["structure"]}
    values = {
        "ece": cal.ece,
        "mce": cal.mce,
        "ace": cal.ace,
        "adaptive_ece": a_ece,
        "ged": obs.ged.ged,
        "ged_unbiased": ged_u,
        "hm_iou": obs.hm_iou.hm_iou,
        "ncc": obs.ncc,
        "nll": nll_value,
        "brier": brier_value,
        "pavpu": float(np.mean([p.pavpu for p in pv])),
        "pavpu_area": float(np.mean([c.area for c in curves])),
        "pairwise_dice": _nan(structure.get("pairwise_dice")),
        "volume_cov": _nan(structure.get("volume_cov")),
        "dice": dice,
        "mean_mutual_information": mean_mi,
        "mean_predictive_entropy": float(np.mean(pe)),
        "uncertainty": _nan(score["value"]),
    }
    meanings = data.metadata.get("meanings") or {}
    return ImageEvaluation(
        image_id=data.image_id,
        run_id=data.run_id,
        method=data.method,
        source=data.source,
        meanings=meanings,
        n_samples=data.n_samples,
        n_samples_used=used,
        raters=list(names),
        probs_from=data.probs_from,
        values=values,
        calibration={
            "n_pixels": cal.n_pixels,
            "label_kind": cal.label_kind,
            "reference": ref_text,
            "ged_terms": {
                "cross": obs.ged.cross,
                "within_samples": obs.ged.within_samples,
                "within_raters": obs.ged.within_raters,
            },
        },
        pavpu={
            "n_ac": sum(p.n_ac for p in pv),
            "n_au": sum(p.n_au for p in pv),
            "n_ic": sum(p.n_ic for p in pv),
            "n_iu": sum(p.n_iu for p in pv),
            "uncertainty_threshold": u_t,
            "patch_size": list(pv[0].patch_size),
            "curve": {
                "thresholds": grid,
                "pavpu": np.mean([c.pavpu for c in curves], axis=0),
                "area": float(np.mean([c.area for c in curves])),
            },
        },
        uncertainty={
            "map": score["map"],
            "aggregation": score["aggregation"],
            "params": score["params"],
            "description": score["description"],
            "value": _nan(score["value"]),
        },
        accumulator=acc,
        warnings=list(summary["warnings"]),
    )


def class_view(
    probs: np.ndarray, labels: np.ndarray, class_index: int | None
) -> tuple[np.ndarray, np.ndarray, bool, str]:
    """What calibration compares: all classes, or one class against the rest.

    Parameters
    ----------
    probs : ndarray, shape (K, *S)
        Class probabilities.
    labels : ndarray, shape (*S) int, or (K, *S) float (soft)
        Reference.
    class_index : int or None
        None: all classes (top-label confidence); else class ``class_index`` vs the rest.

    Returns
    -------
    probs : ndarray, shape (K, *S) or (*S) (``p(class)`` clipped to [0, 1])
    labels : ndarray, shape (*S) or (K, *S)
        Hard labels, 0/1 of the class, or the class's soft share.
    foreground_map : bool
        Whether ``probs`` is a single-class map.
    confidence : {"top_label", "foreground"}
    """
    if class_index is None:
        return probs, labels, False, "top_label"
    if not 0 <= class_index < probs.shape[0]:
        raise ValueError(f"class_index: expected 0..{probs.shape[0] - 1}, got {class_index}")
    if np.issubdtype(labels.dtype, np.floating):
        lab = labels[class_index]
    else:
        lab = (labels == class_index).astype(np.uint8)
    return np.clip(probs[class_index], 0.0, 1.0), lab, True, "foreground"


def _renormalize(probs: np.ndarray) -> np.ndarray:
    """Clip float32 storage rounding and renormalize over classes."""
    p = np.clip(probs, 0.0, 1.0)
    return p / np.maximum(p.sum(axis=0, keepdims=True), 1e-12)


def _nan(value: Any) -> float:
    """The summary's JSON None (undefined) back to NaN for the dataset means."""
    return float("nan") if value is None else float(value)


def _aggregation_spec(method: str, u_t: float) -> dict[str, Any]:
    """The image score's aggregation; thresholded ones at half the PAvPU threshold."""
    if method.startswith("thresholded"):
        return {"method": method, "threshold": 0.5 * u_t}
    return {"method": method}


def run_summary(
    data: RunData, pe: np.ndarray | None = None, *, aggregation: Any = "mean"
) -> dict[str, Any]:
    """Return the one image-level summary (:func:`napari_probseg.core.summary.image_summary`)
    of a stored run, with ``aggregation`` of the predictive entropy as its first score.

    Parameters
    ----------
    data : RunData
        The stored run.
    pe : ndarray, shape (*S), optional
        Predictive entropy when the run stores none (default: the stored map, else the entropy
        of the renormalized mean probabilities).
    aggregation : str or mapping, keyword-only
        Aggregation of the first score (see ``image_summary``); the defaults follow.
    """
    from napari_probseg.core._terms import SOURCES
    from napari_probseg.core.summary import DEFAULT_AGGREGATIONS, image_summary

    if pe is None:
        pe = data.maps.get("predictive_entropy")
        pe = entropy(_renormalize(data.probs)) if pe is None else np.asarray(pe, np.float64)
    known = all(s in SOURCES for s in data.source)
    source = tuple(data.source) if known else ("none",)
    maps = {"predictive_entropy": np.asarray(pe, np.float64)}
    if source != ("none",):
        for name in ("mutual_information", "expected_entropy"):
            if data.maps.get(name) is not None:
                maps[name] = data.maps[name]
    first = aggregation if isinstance(aggregation, dict) else {"method": aggregation}
    rest = [a for a in DEFAULT_AGGREGATIONS if a != first["method"]]
    summary = image_summary(
        mean_probs=data.probs,
        maps=maps,
        samples=data.samples,
        method=data.method,
        source=source,
        n_samples=data.n_samples,
        provenance=data.metadata.get("provenance") or {},
        aggregations=[first, *rest],
    )
    # Order: the requested aggregation of the predictive entropy first.
    summary["scores"].sort(
        key=lambda sc: (sc["map"] != "predictive_entropy", sc["aggregation"] != first["method"])
    )
    return summary


def ged_vs_n(runs: list[RunData], raters: list[np.ndarray]) -> dict[str, Any]:
    """Mean GED (biased and unbiased) over images using the first n = 1..N stored samples.

    Returns
    -------
    dict
        ``n`` (list), ``ged``, ``ged_unbiased`` (mean over images, NaN where undefined) and
        ``n_images`` per n (images with at least n samples).
    """
    n_max = max(len(r.samples) for r in runs)
    rows: dict[str, list[float]] = {"ged": [], "ged_unbiased": [], "n_images": []}
    for n in range(1, n_max + 1):
        g, gu = [], []
        for run, masks in zip(runs, raters):
            if len(run.samples) < n:
                continue
            k = _n_classes(run, masks)
            g.append(ged(run.samples, masks, n_samples=n, n_classes=k).ged)
            if n >= 2 and len(masks) >= 2:
                gu.append(ged(run.samples, masks, n_samples=n, unbiased=True, n_classes=k).ged)
        rows["ged"].append(float(np.mean(g)) if g else float("nan"))
        rows["ged_unbiased"].append(float(np.mean(gu)) if gu else float("nan"))
        rows["n_images"].append(len(g))
    return {"n": list(range(1, n_max + 1)), **rows}


def rater_ablation(
    runs: list[RunData],
    raters: list[np.ndarray],
    *,
    n_samples: int = 16,
    max_subsets: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """GED16 and HM-IoU16 against subsets of m = 1..M raters, averaged over subsets and images.

    Subsets of size m: all ``C(M, m)`` when at most ``max_subsets``, else ``max_subsets``
    distinct random ones (seeded). Images with fewer than m raters do not count for m.
    """
    rng = np.random.default_rng(seed)
    m_max = max(len(r) for r in raters)
    out: dict[str, list[float]] = {"ged": [], "hm_iou": [], "n_images": [], "n_subsets": []}
    for m in range(1, m_max + 1):
        g, h, n_sub = [], [], 0
        for run, masks in zip(runs, raters):
            if len(masks) < m:
                continue
            k = _n_classes(run, masks)
            subsets = list(itertools.combinations(range(len(masks)), m))
            if len(subsets) > max_subsets:
                pick = rng.choice(len(subsets), size=max_subsets, replace=False)
                subsets = [subsets[i] for i in sorted(pick)]
            for sub in subsets:
                ref = masks[list(sub)]
                g.append(ged(run.samples, ref, n_samples=n_samples, n_classes=k).ged)
                h.append(hm_iou(run.samples, ref, n_samples=n_samples, n_classes=k).hm_iou)
            n_sub = max(n_sub, len(subsets))
        out["ged"].append(float(np.mean(g)) if g else float("nan"))
        out["hm_iou"].append(float(np.mean(h)) if h else float("nan"))
        out["n_images"].append(sum(len(r) >= m for r in raters))
        out["n_subsets"].append(n_sub)
    return {"n_raters": list(range(1, m_max + 1)), **out}


def _n_classes(run: RunData, masks: np.ndarray) -> int:
    return max(
        run.probs.shape[0], int(masks.max(initial=0)) + 1, int(run.samples.max(initial=0)) + 1
    )
