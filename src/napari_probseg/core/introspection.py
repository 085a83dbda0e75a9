"""Introspection metrics: does the uncertainty know when the prediction is wrong?

- :func:`pavpu`: patch accuracy vs patch uncertainty (Mukhoti & Gal, 2018) at one threshold;
  :func:`pavpu_curve`: over a range of thresholds, with the area under the curve.
- :func:`aurc`: area under the risk-coverage curve over images (Geifman et al., 2019), with the
  excess AURC (E-AURC) over an oracle ranking.
- :func:`dice_risk`: the per-image risk ``1 - Dice`` that :func:`aurc` usually ranks.

Arrays are ``(*spatial)`` maps, 2-D or 3-D, numpy or torch (moved to numpy); masks are integer labels
with 0 = background.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validation import check_finite, check_positive_int, to_numpy

__all__ = ["AURCResult", "PAvPUCurve", "PAvPUResult", "aurc", "dice_risk", "pavpu", "pavpu_curve"]


@dataclass(frozen=True)
class PAvPUResult:
    """Patch accuracy vs patch uncertainty.

    Attributes
    ----------
    pavpu : float
        ``(n_ac + n_iu) / (n_ac + n_au + n_ic + n_iu)``.
    p_accurate_given_certain : float
        ``n_ac / (n_ac + n_ic)`` (NaN when no patch is certain).
    p_uncertain_given_inaccurate : float
        ``n_iu / (n_ic + n_iu)`` (NaN when no patch is inaccurate).
    n_ac, n_au, n_ic, n_iu : int
        Patches accurate-certain, accurate-uncertain, inaccurate-certain, inaccurate-uncertain.
    patch_size : tuple of int
        Patch shape used.
    accuracy_threshold, uncertainty_threshold : float
        Thresholds used (accurate: accuracy >= threshold; uncertain: mean uncertainty >= threshold).
    n_cropped : int
        Pixels outside whole patches, left out.
    """

    pavpu: float
    p_accurate_given_certain: float
    p_uncertain_given_inaccurate: float
    n_ac: int
    n_au: int
    n_ic: int
    n_iu: int
    patch_size: tuple[int, ...]
    accuracy_threshold: float
    uncertainty_threshold: float
    n_cropped: int


@dataclass(frozen=True)
class AURCResult:
    """Area under the risk-coverage curve.

    Attributes
    ----------
    aurc : float
        ``(1/n) sum_k r(k)`` where ``r(k)`` is the mean risk of the ``k`` most confident images.
    e_aurc : float
        ``aurc`` minus the AURC of the oracle ranking by risk (0 for a perfect ranking).
    optimal_aurc : float
        AURC of the oracle ranking.
    coverage : ndarray, shape (n,)
        ``k / n`` for k = 1..n.
    selective_risk : ndarray, shape (n,)
        ``r(k)``, the risk-coverage curve.
    n_images : int
        Number of images.
    """

    aurc: float
    e_aurc: float
    optimal_aurc: float
    coverage: np.ndarray
    selective_risk: np.ndarray
    n_images: int


def pavpu(
    prediction: Any,
    reference: Any,
    uncertainty: Any,
    *,
    uncertainty_threshold: float,
    patch_size: int | tuple[int, ...] = 4,
    accuracy_threshold: float = 0.5,
) -> PAvPUResult:
    """Patch accuracy vs patch uncertainty (PAvPU, Mukhoti & Gal 2018).

    The map is cut into non-overlapping patches of ``patch_size`` (4 x 4 in 2-D, 4 x 4 x 4 in
    3-D by default). A patch is *accurate* when its pixel accuracy (share of pixels where
    ``prediction == reference``) is ``>= accuracy_threshold`` and *uncertain* when its mean
    uncertainty is ``>= uncertainty_threshold`` (both inclusive, ``>=``). Partial patches at the
    far edges are cropped away (``n_cropped`` reports the pixels left out).

    Parameters
    ----------
    prediction : ndarray or Tensor of int, shape (*spatial)
        Predicted labels.
    reference : ndarray or Tensor of int, shape (*spatial)
        Reference labels.
    uncertainty : ndarray or Tensor of float, shape (*spatial)
        Uncertainty map (e.g. predictive entropy).
    uncertainty_threshold : float
        u_T; a patch with mean uncertainty ``>= u_T`` is uncertain.
    patch_size : int or tuple of int
        Patch edge (same on every axis) or one edge per spatial axis.
    accuracy_threshold : float
        A patch with accuracy ``>= accuracy_threshold`` is accurate (default 0.5).

    Returns
    -------
    PAvPUResult
    """
    if not np.isfinite(uncertainty_threshold):
        raise ValueError(
            f"uncertainty_threshold: expected a finite number, got {uncertainty_threshold}"
        )
    correct, mean_unc, patch, n_cropped = _patch_stats(
        prediction, reference, uncertainty, patch_size, accuracy_threshold
    )
    accurate = correct >= accuracy_threshold
    uncertain = mean_unc >= uncertainty_threshold
    n_ac = int(np.sum(accurate & ~uncertain))
    n_au = int(np.sum(accurate & uncertain))
    n_ic = int(np.sum(~accurate & ~uncertain))
    n_iu = int(np.sum(~accurate & uncertain))
    return PAvPUResult(
        pavpu=(n_ac + n_iu) / (n_ac + n_au + n_ic + n_iu),
        p_accurate_given_certain=_ratio(n_ac, n_ac + n_ic),
        p_uncertain_given_inaccurate=_ratio(n_iu, n_ic + n_iu),
        n_ac=n_ac,
        n_au=n_au,
        n_ic=n_ic,
        n_iu=n_iu,
        patch_size=patch,
        accuracy_threshold=float(accuracy_threshold),
        uncertainty_threshold=float(uncertainty_threshold),
        n_cropped=n_cropped,
    )


def _patch_stats(
    prediction: Any, reference: Any, uncertainty: Any, patch_size: Any, accuracy_threshold: float
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], int]:
    """Per-patch accuracy and mean uncertainty, the patch shape and the pixels cropped away."""
    pred = to_numpy(prediction)
    ref = to_numpy(reference)
    unc = to_numpy(uncertainty).astype(np.float64, copy=False)
    if pred.ndim not in (2, 3):
        raise ValueError(f"prediction: expected 2 or 3 spatial axes, got shape {pred.shape}")
    for name, arr in (("reference", ref), ("uncertainty", unc)):
        if arr.shape != pred.shape:
            raise ValueError(f"{name}: expected shape {pred.shape}, got {arr.shape}")
    check_finite(unc, "uncertainty")
    if not 0.0 <= accuracy_threshold <= 1.0:
        raise ValueError(
            f"accuracy_threshold: expected a value in [0, 1], got {accuracy_threshold}"
        )
    if isinstance(patch_size, int | np.integer):
        patch = (check_positive_int(patch_size, "patch_size"),) * pred.ndim
    else:
        patch = tuple(check_positive_int(p, "patch_size") for p in patch_size)
        if len(patch) != pred.ndim:
            raise ValueError(f"patch_size: expected {pred.ndim} values, got {len(patch)}")
    counts = tuple(s // p for s, p in zip(pred.shape, patch))
    if 0 in counts:
        raise ValueError(f"patch_size: {patch} is larger than the map {pred.shape}")
    crop = tuple(slice(0, c * p) for c, p in zip(counts, patch))
    blocked = tuple(x for c, p in zip(counts, patch) for x in (c, p))
    inner_axes = tuple(range(1, 2 * pred.ndim, 2))
    correct = (pred[crop] == ref[crop]).reshape(blocked).mean(axis=inner_axes)
    mean_unc = unc[crop].reshape(blocked).mean(axis=inner_axes)
    return correct, mean_unc, patch, int(pred.size - correct.size * int(np.prod(patch)))


@dataclass(frozen=True)
class PAvPUCurve:
    """PAvPU over a range of uncertainty thresholds, and the area under it.

    Attributes
    ----------
    thresholds : ndarray, shape (T,)
        Uncertainty thresholds u_T, increasing.
    pavpu, p_accurate_given_certain, p_uncertain_given_inaccurate : ndarray, shape (T,)
        The three PAvPU quantities at each threshold (NaN where undefined).
    area : float
        Area under the PAvPU curve divided by the threshold range (trapezoid rule), i.e. the mean
        PAvPU over ``[thresholds[0], thresholds[-1]]``; in [0, 1].
    patch_size : tuple of int
    accuracy_threshold : float
    n_patches : int
    """

    thresholds: np.ndarray
    pavpu: np.ndarray
    p_accurate_given_certain: np.ndarray
    p_uncertain_given_inaccurate: np.ndarray
    area: float
    patch_size: tuple[int, ...]
    accuracy_threshold: float
    n_patches: int


def pavpu_curve(
    prediction: Any,
    reference: Any,
    uncertainty: Any,
    *,
    thresholds: Any = None,
    n_thresholds: int = 51,
    patch_size: int | tuple[int, ...] = 4,
    accuracy_threshold: float = 0.5,
) -> PAvPUCurve:
    """PAvPU as a curve over the uncertainty threshold u_T, and its normalised area.

    One value of u_T is arbitrary; the curve (Mukhoti & Gal plot it against u_T) and its area do
    not depend on that choice. Patches, accuracy and the ``>=`` comparisons are those of
    :func:`pavpu`, which this equals at every threshold.

    Parameters
    ----------
    prediction, reference : ndarray or Tensor of int, shape (*spatial)
        Predicted and reference labels.
    uncertainty : ndarray or Tensor of float, shape (*spatial)
        Uncertainty map.
    thresholds : array-like, shape (T,), optional
        Increasing thresholds (T >= 2). Default: ``n_thresholds`` evenly spaced from the smallest
        to the largest patch-mean uncertainty (so the curve runs from "every patch uncertain" to
        "only the most uncertain patch").
    n_thresholds : int, keyword-only
        Number of default thresholds (51).
    patch_size, accuracy_threshold
        As in :func:`pavpu`.

    Returns
    -------
    PAvPUCurve
    """
    correct, mean_unc, patch, _ = _patch_stats(
        prediction, reference, uncertainty, patch_size, accuracy_threshold
    )
    if thresholds is None:
        n_thresholds = check_positive_int(n_thresholds, "n_thresholds")
        if n_thresholds < 2:
            raise ValueError(f"n_thresholds: expected at least 2, got {n_thresholds}")
        lo, hi = float(mean_unc.min()), float(mean_unc.max())
        t = np.linspace(lo, hi if hi > lo else lo + 1.0, n_thresholds)
    else:
        t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
        if t.size < 2 or not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
            raise ValueError("thresholds: expected at least 2 finite, increasing values")
    accurate = (correct >= accuracy_threshold).reshape(-1)
    unc = mean_unc.reshape(-1)
    uncertain = unc[None, :] >= t[:, None]  # (T, P)
    n_ac = (accurate & ~uncertain).sum(axis=1)
    n_ic = (~accurate & ~uncertain).sum(axis=1)
    n_iu = (~accurate & uncertain).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        pv = (n_ac + n_iu) / accurate.size
        pac = np.where(n_ac + n_ic > 0, n_ac / np.maximum(n_ac + n_ic, 1), np.nan)
        pui = np.where(n_ic + n_iu > 0, n_iu / np.maximum(n_ic + n_iu, 1), np.nan)
    area = float(np.trapezoid(pv, t) / (t[-1] - t[0]))
    return PAvPUCurve(
        thresholds=t,
        pavpu=pv,
        p_accurate_given_certain=pac,
        p_uncertain_given_inaccurate=pui,
        area=area,
        patch_size=patch,
        accuracy_threshold=float(accuracy_threshold),
        n_patches=int(accurate.size),
    )


def aurc(risks: Any, confidences: Any) -> AURCResult:
    """Area under the risk-coverage curve of a per-image ranking.

    Images are ranked by decreasing confidence (typically minus an aggregated uncertainty); the
    selective risk at coverage ``k/n`` is the mean risk of the ``k`` most confident images and AURC
    is the mean of the selective risks over k = 1..n. Ties in confidence are resolved by their
    expectation over random order (risks within a tie are replaced by their mean), so the value
    does not depend on the input order. E-AURC subtracts the AURC of the oracle ranking by risk.

    Parameters
    ----------
    risks : array-like, shape (n,)
        Per-image risk, e.g. :func:`dice_risk` ``= 1 - Dice`` against the reference.
    confidences : array-like, shape (n,)
        Per-image confidence; higher = more confident (e.g. ``-uncertainty``).

    Returns
    -------
    AURCResult
    """
    r = np.asarray(to_numpy(risks), dtype=np.float64).reshape(-1)
    c = np.asarray(to_numpy(confidences), dtype=np.float64).reshape(-1)
    if r.size == 0:
        raise ValueError("risks: expected at least one image")
    if c.shape != r.shape:
        raise ValueError(f"confidences: expected {r.size} values like risks, got {c.size}")
    check_finite(r, "risks")
    check_finite(c, "confidences")
    order = np.argsort(-c, kind="stable")
    r_sorted, c_sorted = r[order], c[order]
    # Expected cumulative risk under random tie order = replace tied risks by their mean.
    _, group, sizes = np.unique(c_sorted, return_inverse=True, return_counts=True)
    group_mean = np.bincount(group, weights=r_sorted) / sizes
    r_sorted = group_mean[group]
    k = np.arange(1, r.size + 1)
    selective = np.cumsum(r_sorted) / k
    optimal = float(np.mean(np.cumsum(np.sort(r)) / k))
    value = float(selective.mean())
    return AURCResult(
        aurc=value,
        e_aurc=value - optimal,
        optimal_aurc=optimal,
        coverage=k / r.size,
        selective_risk=selective,
        n_images=int(r.size),
    )


def dice_risk(prediction: Any, reference: Any) -> float:
    """Risk ``1 - Dice`` of one predicted mask against a reference.

    Dice is averaged over the foreground classes present in either mask; two masks without
    foreground have Dice 1 (risk 0).

    Parameters
    ----------
    prediction, reference : ndarray or Tensor of int, shape (*spatial)
        Label masks, 0 = background.

    Returns
    -------
    float
        ``1 - Dice`` in [0, 1].
    """
    a = to_numpy(prediction)
    b = to_numpy(reference)
    if a.shape != b.shape:
        raise ValueError(f"reference: expected shape {a.shape}, got {b.shape}")
    n = int(max(a.max(initial=0), b.max(initial=0))) + 1
    scores = []
    for c in range(1, n):
        x, y = a == c, b == c
        denom = int(x.sum()) + int(y.sum())
        if denom:
            scores.append(2.0 * np.count_nonzero(x & y) / denom)
    return 1.0 - (float(np.mean(scores)) if scores else 1.0)


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")
