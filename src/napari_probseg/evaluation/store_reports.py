"""Headless reports of the researcher panels (and of scripts): calibration of one image or of a
whole project store, temperature scaling, observer variability against raters, conformal bands,
and the reliability diagram on any matplotlib ``Figure``.

Moved out of ``napari_probseg._napari`` (issue 12: widgets render, they do not compute); the
panels call these functions in worker threads, and everything here runs without Qt. Each number
has one computation: a store's calibration is :func:`~napari_probseg.evaluation.evaluate_store`'s
(the merged per-image accumulators, the class view of :func:`._evaluate.class_view`), runs are
read and checked as ``evaluate_store`` reads them, the reliability diagram is
:func:`.plots.draw_reliability` (as in ``probseg evaluate --plots``), and the image-level numbers
are ``core``'s (calibration, observer metrics, conformal bands):

- the reference the model is compared with (:func:`make_reference`: majority of the raters, their
  soft mean, or one rater) and the class view (all classes with the top-label confidence, or one
  class against the rest with ``p(class)`` as confidence);
- calibration of one image or of a whole store (:func:`image_calibration`,
  :func:`store_calibration`), temperature scaling on log-probabilities
  (:func:`temperature_on_probs`), each with a ``to_dict()`` for the JSON export;
- :func:`observer_report`: GED, HM-IoU and NCC of a run's samples against chosen raters, with the
  samples' pairwise Dice and volume CoV;
- :func:`conformal_report`: conformal inner/outer bands calibrated on images with references
  (:func:`store_conformal_pairs` from a project store), applied to the current image, with the
  empirical coverage on held-out images;
- :func:`draw_reliability`: the reliability diagram.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_probseg.core._serialize import to_jsonable as _jsonable
from napari_probseg.core._validation import check_choice, check_positive_int
from napari_probseg.core.calibration import (
    CalibrationResult,
    TemperatureFit,
    adaptive_ece,
    calibration,
    fit_temperature,
)
from napari_probseg.core.conformal import BandCoverage, ConformalBands
from napari_probseg.core.observer import ObserverMetrics, observer_metrics
from napari_probseg.core.structure import pairwise_dice, volume_cov
from napari_probseg.evaluation._evaluate import (
    _check_signature,
    _skip_reason,
    class_view,
    evaluate_store,
)
from napari_probseg.evaluation.plots import draw_reliability as _draw_reliability
from napari_probseg.store import majority_vote

__all__ = [
    "REFERENCE_KINDS",
    "CalibrationReport",
    "ConformalReport",
    "ObserverReport",
    "Reference",
    "class_label",
    "conformal_report",
    "draw_reliability",
    "image_calibration",
    "make_reference",
    "observer_report",
    "store_calibration",
    "store_conformal_pairs",
    "store_images",
    "temperature_on_probs",
]

REFERENCE_KINDS = ("majority", "soft", "rater")
_TINY = 1e-12


# ----------------------------------------------------------------------------- references


@dataclass(frozen=True)
class Reference:
    """Labels a prediction is compared with.

    Attributes
    ----------
    labels : ndarray
        Hard labels ``(*S)`` (integer) or soft rater shares ``(K, *S)`` (float64).
    hard : ndarray of int, shape (*S)
        Hard labels (the majority for a soft reference), for temperature fits and conformal bands.
    description : str
        E.g. ``"majority of 4 raters (ties to background)"``.
    kind : {"majority", "soft", "rater"}
    raters : list of str
    """

    labels: np.ndarray
    hard: np.ndarray
    description: str
    kind: str
    raters: list[str]


def make_reference(
    masks: Mapping[str, Any],
    *,
    kind: str = "majority",
    rater: str | None = None,
    n_classes: int = 2,
) -> Reference:
    """Build the reference from the raters' masks.

    Parameters
    ----------
    masks : mapping of str to ndarray, each (*S) integer
        Rater name to mask (0 = background).
    kind : {"majority", "soft", "rater"}
        Per-pixel majority (ties to background, :func:`napari_probseg.store.majority_vote`), the
        soft mean of the raters' one-hot masks ``(K, *S)``, or one rater's mask.
    rater : str, optional
        The rater for ``kind="rater"``.
    n_classes : int
        Classes K of the soft reference (at least the largest label + 1).

    Returns
    -------
    Reference
    """
    check_choice(kind, "kind", REFERENCE_KINDS)
    if not masks:
        raise ValueError("masks: no rater masks (add rater layers or open a store)")
    names = list(masks)
    arrays = [np.asarray(masks[n]) for n in names]
    for name, arr in zip(names, arrays):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise ValueError(f"masks: {name!r} holds {arr.dtype} values, not integer labels")
        if arr.shape != arrays[0].shape:
            raise ValueError(f"masks: {name!r} has shape {arr.shape}, not {arrays[0].shape}")
    arrays = [a.astype(np.int64) if a.dtype == bool else a for a in arrays]
    if kind == "rater":
        if rater not in masks:
            raise ValueError(f"rater: {rater!r} is not one of {', '.join(names)}")
        lab = arrays[names.index(rater)]
        return Reference(lab, lab, f"rater {rater!r}", kind, [rater])
    majority = majority_vote(arrays)
    m = len(arrays)
    if kind == "majority":
        text = f"majority of {m} rater{'s' * (m != 1)} (ties to background)"
        return Reference(majority, majority, text, kind, names)
    k = max(int(n_classes), int(max(a.max(initial=0) for a in arrays)) + 1)
    soft = np.stack([np.mean([a == c for a in arrays], axis=0) for c in range(k)])
    text = f"soft mean of {m} rater{'s' * (m != 1)}"
    return Reference(soft.astype(np.float64), majority, text, kind, names)


def class_label(class_index: int | None, class_names: Sequence[str] = ()) -> str:
    """Human description of the class view."""
    if class_index is None:
        return "all classes (top-label confidence)"
    name = class_names[class_index] if class_index < len(class_names) else str(class_index)
    return f"class {name!r} vs rest (confidence p({name}))"


# ----------------------------------------------------------------------------- calibration


@dataclass
class CalibrationReport:
    """Calibration of a prediction against a reference, with what it was computed on.

    Attributes
    ----------
    result : CalibrationResult
        ECE/MCE/ACE and the bins (equal width, last bin closed at 1.0).
    adaptive_ece : float
        ECE with equal-mass bins (same number of bins).
    scope : str
        What was evaluated, e.g. ``"image 'scan' (mc_dropout, N=4)"`` or ``"store ... (3 images)"``.
    classes : str
        The class view (:func:`class_label`).
    n_images : int
    skipped : list of dict
        Store images left out and why.
    temperature : TemperatureFit or None
        Set by a temperature fit of the same image.
    after : CalibrationResult or None
        Calibration of the same view after temperature scaling.
    """

    result: CalibrationResult
    adaptive_ece: float
    scope: str
    classes: str
    n_images: int = 1
    skipped: list[dict[str, str]] = field(default_factory=list)
    temperature: TemperatureFit | None = None
    after: CalibrationResult | None = None
    #: The store evaluation a store report was taken from (None for one image).
    evaluation: Any = field(default=None, repr=False)

    def text(self) -> str:
        """Multi-line summary naming the bins, the reference and the class view."""
        r = self.result
        mean = " (mean over images)" if self.evaluation is not None else ""
        lines = [
            f"ECE {r.ece:.4f} · MCE {r.mce:.4f} · ACE {r.ace:.4f} · adaptive ECE "
            f"{self.adaptive_ece:.4f}{mean}",
            f"{r.n_bins} equal-width bins (adaptive: {r.n_bins} equal-mass) · "
            f"{r.n_pixels:,} pixels · {r.label_kind} labels",
            f"reference: {r.reference}",
            f"{self.classes} · {self.scope}",
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} image(s): {self.skipped[0]['reason']} ...")
        t = self.temperature
        if t is not None:
            lines.append(
                f"temperature T = {t.temperature:.3f}: ECE {t.ece_before:.4f} → {t.ece_after:.4f}"
                f", NLL {t.nll_before:.4f} → {t.nll_after:.4f} (top-label, fit on this image)"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (NaN as None)."""
        out: dict[str, Any] = {
            "scope": self.scope,
            "classes": self.classes,
            "n_images": self.n_images,
            "skipped": self.skipped,
            "calibration": _calibration_dict(self.result),
            "adaptive_ece": self.adaptive_ece,
            "adaptive_bins": "equal-mass",
        }
        if self.evaluation is not None:
            out["adaptive_ece_of"] = "mean of the images' adaptive ECE (as probseg evaluate)"
            out["images"] = [e.image_id for e in self.evaluation.images]
        if self.temperature is not None:
            t = self.temperature
            out["temperature"] = {
                "temperature": t.temperature,
                "ece_before": t.ece_before,
                "ece_after": t.ece_after,
                "nll_before": t.nll_before,
                "nll_after": t.nll_after,
                "n_pixels": t.n_pixels,
                "fit": "softmax(log p / T) on this image's mean probabilities, hard reference",
            }
        if self.after is not None:
            out["calibration_after_temperature"] = _calibration_dict(self.after)
        return _jsonable(out)


def _calibration_dict(r: CalibrationResult) -> dict[str, Any]:
    return {
        "ece": r.ece,
        "mce": r.mce,
        "ace": r.ace,
        "n_bins": r.n_bins,
        "n_pixels": r.n_pixels,
        "label_kind": r.label_kind,
        "reference": r.reference,
        "confidence": r.confidence,
        "bins": {
            "edges": r.bin_edges,
            "counts": r.counts,
            "mean_confidence": r.mean_confidence,
            "accuracy": r.accuracy,
        },
    }


def image_calibration(
    probs: Any,
    reference: Reference,
    *,
    n_bins: int = 15,
    class_index: int | None = None,
    class_names: Sequence[str] = (),
    scope: str = "current image",
) -> CalibrationReport:
    """Calibration of one image's predictive probabilities.

    Parameters
    ----------
    probs : ndarray, shape (K, *S)
        Mean class probabilities of the run.
    reference : Reference
        From :func:`make_reference`.
    n_bins : int
        Equal-width bins (and equal-mass bins of the adaptive ECE).
    class_index : int, optional
        None: all classes, top-label confidence; else class ``class_index`` against the rest.
    class_names : sequence of str
    scope : str
        Description of the image and run.

    Returns
    -------
    CalibrationReport
    """
    p = np.asarray(probs)
    p, lab, fg_map, conf = class_view(p, np.asarray(reference.labels), class_index)
    result = calibration(
        p,
        lab,
        n_bins=n_bins,
        confidence=conf,
        reference=reference.description,
        foreground_map=fg_map,
    )
    a_ece = adaptive_ece(p, lab, n_bins=n_bins, confidence=conf, foreground_map=fg_map)
    return CalibrationReport(result, a_ece, scope, class_label(class_index, class_names))


def temperature_on_probs(
    report: CalibrationReport,
    probs: Any,
    reference: Reference,
    *,
    class_index: int | None = None,
) -> CalibrationReport:
    """Fit a temperature on log-probabilities and add it (and the calibration after it) to ``report``.

    Logits are usually not stored, so the fit scales the log-probabilities:
    ``p_T = softmax(log p / T)`` (equal to ``p`` at T = 1). Hard labels are needed: a soft
    reference uses the raters' majority.

    Parameters
    ----------
    report : CalibrationReport
        The image's report (its bins and class view are reused).
    probs : ndarray, shape (K, *S)
    reference : Reference
    class_index : int, optional
        Class view of the calibration shown after scaling.

    Returns
    -------
    CalibrationReport
        ``report`` with ``temperature`` and ``after`` set.
    """
    p = np.asarray(probs, dtype=np.float64)
    logp = np.log(np.clip(p, _TINY, None))
    n_bins = report.result.n_bins
    fit = fit_temperature(logp, np.asarray(reference.hard), n_bins=n_bins)
    z = logp / fit.temperature
    z -= z.max(axis=0, keepdims=True)
    scaled = np.exp(z)
    scaled /= scaled.sum(axis=0, keepdims=True)
    pv, lab, fg_map, conf = class_view(scaled, np.asarray(reference.labels), class_index)
    report.after = calibration(
        pv,
        lab,
        n_bins=n_bins,
        confidence=conf,
        reference=reference.description,
        foreground_map=fg_map,
    )
    report.temperature = fit
    return report


def store_images(store: Any) -> tuple[list[str], list[dict[str, str]]]:
    """Store images that have rater annotations and a prediction run, and the others with why
    (the reasons of :func:`~napari_probseg.evaluation.evaluate_store`)."""
    usable, skipped = [], []
    for image_id in store.image_ids():
        reason = _skip_reason(store, image_id, None, "majority", None)
        if reason:
            skipped.append({"image_id": image_id, "reason": reason})
        else:
            usable.append(image_id)
    return usable, skipped


def _store_image_data(store: Any, image_id: str) -> tuple[Any, dict[str, np.ndarray]]:
    """The latest run and the raters' latest masks; ``ValueError`` for a run of another image."""
    from napari_probseg.evaluation import load_run

    data = load_run(store, image_id)
    _check_signature(store, data)
    masks = {r: store.latest(image_id, r)[0] for r in store.raters(image_id)}
    return data, masks


def store_calibration(
    store: Any,
    *,
    kind: str = "majority",
    rater: str | None = None,
    n_bins: int = 15,
    class_index: int | None = None,
) -> CalibrationReport:
    """Calibration over every store image with raters and a run (its latest run): the dataset
    calibration of :func:`~napari_probseg.evaluation.evaluate_store`.

    The per-bin sums of each image's ``CalibrationAccumulator`` are merged (pixel-weighted, the
    ECE/MCE/ACE ``probseg evaluate`` reports); the adaptive ECE is the mean of the images'
    adaptive ECEs (``probseg evaluate``'s mean). Images without the chosen rater, without a run or
    whose run was computed from another image are skipped and listed.

    Parameters
    ----------
    store : ProjectStore
    kind, rater : see :func:`make_reference`
    n_bins, class_index : see :func:`image_calibration`

    Returns
    -------
    CalibrationReport

    Raises
    ------
    ValueError
        ``store: ...`` when no image can be evaluated.
    """
    n_bins = check_positive_int(n_bins, "n_bins")
    check_choice(kind, "kind", REFERENCE_KINDS)
    reference = f"rater:{rater}" if kind == "rater" else kind
    try:
        ev = evaluate_store(store, reference=reference, n_bins=n_bins, class_index=class_index)
    except ValueError as exc:
        if not str(exc).startswith("store: nothing to evaluate"):
            raise
        why = str(exc).removeprefix("store: nothing to evaluate").strip()
        raise ValueError(
            f"store: no image has both rater annotations and a prediction run {why}; "
            "run a model on the store's images and annotate them first"
        ) from None
    used = len(ev.images)
    names = store.class_names or ()
    adaptive = ev.means["adaptive_ece"].mean
    scope = f"store {store.path} ({used} image{'s' * (used != 1)}, latest run of each)"
    return CalibrationReport(
        ev.calibration,
        adaptive,
        scope,
        class_label(class_index, names),
        n_images=used,
        skipped=ev.skipped,
        evaluation=ev,
    )


# ----------------------------------------------------------------------------- plotting


def draw_reliability(fig: Any, report: CalibrationReport, *, title: str = "") -> dict[str, Any]:
    """Draw the reliability diagram of ``report`` on the matplotlib ``fig`` (cleared first).

    The one drawing of :func:`.plots.draw_reliability` (``probseg evaluate --plots`` draws the
    same), with the accuracy after a temperature fit when the report has one.

    Returns
    -------
    dict
        The artists: ``"accuracy"`` (a BarContainer with one bar per bin), ``"gap"``,
        ``"histogram"``, ``"diagonal"`` and ``"after"`` (or None).
    """
    return _draw_reliability(
        fig, report.result, after=report.after, temperature=report.temperature, title=title
    )


# ----------------------------------------------------------------------------- observer


@dataclass
class ObserverReport:
    """GED, HM-IoU and NCC of a run's samples against raters, and the samples' own spread."""

    metrics: ObserverMetrics
    pairwise_dice: float
    volume_cov: float
    raters: list[str]
    n_samples_total: int
    scope: str

    def text(self) -> str:
        """Multi-line summary naming N, M and the estimator."""
        m = self.metrics
        g = m.ged
        est = "unbiased (self-pairs excluded)" if g.unbiased else "biased (self-pairs included)"
        ncc = "NaN (a variance map is constant)" if np.isnan(m.ncc) else f"{m.ncc:.4f}"
        return "\n".join(
            [
                f"GED² (D², d = 1 − IoU) {g.ged:.4f} · {est}",
                f"   N = {m.n_samples} of {self.n_samples_total} samples vs M = {m.n_raters} raters"
                f" · cross {g.cross:.3f}, within samples {g.within_samples:.3f}, within raters "
                f"{g.within_raters:.3f}",
                f"HM-IoU {m.hm_iou.hm_iou:.4f} (Hungarian, {m.hm_iou.n_matched} matched pairs)",
                f"NCC of variance maps {ncc}",
                f"samples: pairwise Dice {self.pairwise_dice:.4f} · volume CoV {self.volume_cov:.4f}",
                f"raters: {', '.join(self.raters)} · {self.scope}",
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (NaN as None)."""
        m = self.metrics
        return _jsonable(
            {
                "scope": self.scope,
                "raters": self.raters,
                "n_samples_total": self.n_samples_total,
                "n_samples": m.n_samples,
                "n_raters": m.n_raters,
                "ged": {
                    "ged_squared": m.ged.ged,
                    "distance": m.ged.distance,
                    "cross": m.ged.cross,
                    "within_samples": m.ged.within_samples,
                    "within_raters": m.ged.within_raters,
                    "unbiased": m.ged.unbiased,
                    "kernel": "1 - IoU (mean over foreground classes, IoU(empty, empty) = 1)",
                },
                "hm_iou": {
                    "hm_iou": m.hm_iou.hm_iou,
                    "n_matched": m.hm_iou.n_matched,
                    "matched_iou": m.hm_iou.matched_iou,
                },
                "ncc": m.ncc,
                "pairwise_dice": self.pairwise_dice,
                "volume_cov": self.volume_cov,
            }
        )


def observer_report(
    samples: Any,
    masks: Mapping[str, Any],
    *,
    n_samples: int | None = 16,
    unbiased: bool = False,
    n_classes: int | None = None,
    scope: str = "current image",
) -> ObserverReport:
    """Observer metrics of a run's samples against the chosen raters.

    Parameters
    ----------
    samples : ndarray, shape (N, *S)
        The run's sampled label masks.
    masks : mapping of str to ndarray (*S)
        Rater name to mask.
    n_samples : int or None
        First samples used by GED/HM-IoU/NCC (16 as GED16; None: all).
    unbiased : bool
        GED without the i = j self-pairs.
    n_classes : int, optional
        Classes including background.
    scope : str

    Returns
    -------
    ObserverReport
    """
    if not masks:
        raise ValueError("masks: choose at least one rater layer")
    s = np.asarray(samples)
    refs = np.stack([np.asarray(masks[n]) for n in masks])
    if refs.dtype == bool:
        refs = refs.astype(np.uint8)
    metrics = observer_metrics(s, refs, n_samples=n_samples, unbiased=unbiased, n_classes=n_classes)
    return ObserverReport(
        metrics=metrics,
        pairwise_dice=pairwise_dice(s),
        volume_cov=volume_cov(s),
        raters=list(masks),
        n_samples_total=len(s),
        scope=scope,
    )


# ----------------------------------------------------------------------------- conformal


@dataclass
class ConformalReport:
    """Calibrated conformal bands, the masks of the current image and held-out behaviour."""

    bands: ConformalBands
    inner: np.ndarray
    outer: np.ndarray
    calibration_from: str
    coverage: BandCoverage | None = None
    heldout_from: str = ""

    def text(self) -> str:
        """Multi-line summary: thresholds, calibration size, held-out coverage."""
        b = self.bands
        lines = [
            f"α = {b.alpha:g}: outer p ≥ {b.lambda_outer:.4f} (expected missed share of the "
            f"reference ≤ α), inner p ≥ {b.lambda_inner:.4f} (expected false-positive share ≤ α)",
            f"calibrated on {b.n_calibration} image(s): {self.calibration_from}",
            f"current image: inner {int(self.inner.sum()):,} px, outer {int(self.outer.sum()):,} px",
        ]
        floor = 1.0 / (b.n_calibration + 1)
        if min(b.alpha, b.alpha_inner) < floor:
            lines.append(
                f"α < 1/(n+1) = {floor:.3f} with n = {b.n_calibration}: no threshold is provably "
                "safe, so the bands fall back to the whole image (outer) / nothing (inner); use "
                f"more calibration images or α ≥ {floor:.3f}"
            )
        c = self.coverage
        if c is None:
            lines.append("no held-out data: empirical coverage not measured")
        else:
            lines.append(
                f"held-out ({c.n_images} image(s), {self.heldout_from}): outer coverage "
                f"{c.outer:.3f} (target ≥ {1 - b.alpha:.3f}), inner false-positive share "
                f"{c.inner_false_positive:.3f} (target ≤ {b.alpha_inner:g})"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (NaN as None)."""
        b, c = self.bands, self.coverage
        return _jsonable(
            {
                "alpha": b.alpha,
                "alpha_inner": b.alpha_inner,
                "lambda_outer": b.lambda_outer,
                "lambda_inner": b.lambda_inner,
                "n_calibration": b.n_calibration,
                "calibration_from": self.calibration_from,
                "method": "conformal risk control (Angelopoulos et al. 2024) on 1 - p(background)",
                "current_image": {
                    "inner_pixels": self.inner.sum(),
                    "outer_pixels": self.outer.sum(),
                },
                "heldout": None
                if c is None
                else {
                    "n_images": c.n_images,
                    "from": self.heldout_from,
                    "outer_coverage": c.outer,
                    "inner_false_positive": c.inner_false_positive,
                },
            }
        )


def store_conformal_pairs(
    store: Any, *, exclude: Sequence[str] = (), exclude_signatures: Sequence[str] = ()
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """(probabilities, majority reference) of each store image with raters and a run.

    Parameters
    ----------
    store : ProjectStore
    exclude : sequence of str
        Image ids left out (the current image, so that it stays held out).
    exclude_signatures : sequence of str
        Image signatures (``engine.image_signature``) left out: the current image is held out
        even when it sits in the store under another id or its layer has another name.

    Returns
    -------
    pairs : list of (ndarray (K, *S), ndarray (*S))
    image_ids : list of str
    """
    from napari_probseg.engine import image_signature

    pairs, ids = [], []
    for image_id in store_images(store)[0]:
        if image_id in exclude:
            continue
        if exclude_signatures and (
            image_signature(np.asarray(store.read_image(image_id)[0])) in exclude_signatures
        ):
            continue
        try:
            data, masks = _store_image_data(store, image_id)
        except ValueError:
            continue
        pairs.append((data.probs, majority_vote(list(masks.values()))))
        ids.append(image_id)
    return pairs, ids


def conformal_report(
    pairs: Sequence[tuple[Any, Any]],
    current_probs: Any,
    *,
    alpha: float = 0.1,
    calibration_from: str = "",
    heldout: Sequence[tuple[Any, Any]] = (),
    heldout_from: str = "",
    holdout_share: float = 0.0,
    seed: int = 0,
) -> ConformalReport:
    """Calibrate :class:`ConformalBands` and apply them to the current image.

    Parameters
    ----------
    pairs : sequence of (probs (K, *S), reference (*S) int)
        Calibration images.
    current_probs : ndarray, shape (K, *S)
        Mean probabilities of the current image; the bands threshold ``1 - p(background)``.
    alpha : float
        Risk level in (0, 1) of both bands.
    calibration_from : str
        Where the calibration images came from.
    heldout : sequence of (probs, reference)
        Held-out images whose coverage is measured (e.g. the current image with its raters).
    heldout_from : str
    holdout_share : float
        Share in [0, 1) of ``pairs`` held out (seeded split) and added to ``heldout``; at least
        one image stays for calibration.
    seed : int
        Seed of the split.

    Returns
    -------
    ConformalReport
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError(
            "pairs: no calibration image (open a store with annotated images that have runs, or "
            "add rater layers to other images with runs)"
        )
    if not 0.0 <= holdout_share < 1.0:
        raise ValueError(f"holdout_share: expected a share in [0, 1), got {holdout_share}")
    heldout = list(heldout)
    n_out = min(round(holdout_share * len(pairs)), len(pairs) - 1)
    if n_out:
        order = np.random.default_rng(seed).permutation(len(pairs))
        heldout += [pairs[i] for i in order[:n_out]]
        pairs = [pairs[i] for i in sorted(order[n_out:])]
        split = f"{n_out} split off the calibration set (seed {seed})"
        heldout_from = f"{heldout_from} + {split}" if heldout_from else split
    bands = ConformalBands.calibrate([p for p, _ in pairs], [y for _, y in pairs], alpha=alpha)
    p = np.asarray(current_probs)
    inner, outer = bands.apply(1.0 - p[0].astype(np.float64))
    coverage = None
    if heldout:
        coverage = bands.coverage([h for h, _ in heldout], [y for _, y in heldout])
    return ConformalReport(bands, inner, outer, calibration_from, coverage, heldout_from)
