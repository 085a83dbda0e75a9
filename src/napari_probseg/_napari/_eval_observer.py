"""Qt-free logic of the observer-variability and conformal panels (see :mod:`._eval_model`).

- :func:`observer_report`: GED, HM-IoU and NCC of a run's samples against chosen raters, with
  the samples' pairwise Dice and volume CoV;
- :func:`conformal_report`: conformal inner/outer bands calibrated on images with references
  (:func:`store_conformal_pairs` from a project store), applied to the current image, with the
  empirical coverage on held-out images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_probseg._napari._eval_model import _jsonable, _store_image_data, store_images
from napari_probseg.core.conformal import BandCoverage, ConformalBands
from napari_probseg.core.observer import ObserverMetrics, observer_metrics
from napari_probseg.core.structure import pairwise_dice, volume_cov
from napari_probseg.store import majority_vote

__all__ = [
    "ConformalReport",
    "ObserverReport",
    "conformal_report",
    "observer_report",
    "store_conformal_pairs",
]


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
