"""Proper scoring rules of per-pixel probabilities: negative log-likelihood and Brier score.

Reported beside the calibration errors (ECE/MCE/ACE): unlike them they are proper (minimised only
by the true probabilities) and do not depend on a binning.

Conventions (DESIGN.md "Metric conventions"): ``probs`` is ``(K, *spatial)``, class axis first
(K >= 2); ``labels`` are hard integer labels ``(*spatial)`` or soft labels ``(K, *spatial)`` (the
raters' mean one-hot labels; floating dtype). Both are means over pixels, in nats for the NLL.
Numpy or torch input (moved to numpy); results are Python floats.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_probseg.core._validation import check_finite, to_numpy

__all__ = ["NLL_EPS", "brier_score", "nll"]

#: Probabilities are clipped to at least this before the logarithm, so that one confidently wrong
#: pixel gives a large, finite penalty (-log 1e-12 = 27.6 nats) rather than infinity.
NLL_EPS = 1e-12


def _targets(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(to_numpy(probs), dtype=np.float64)
    y = to_numpy(labels)
    if p.ndim < 2 or p.shape[0] < 2:
        raise ValueError(f"probs: expected (K, *spatial) with K >= 2, got shape {p.shape}")
    check_finite(p, "probs")
    k = p.shape[0]
    if np.issubdtype(y.dtype, np.floating):
        if y.shape != p.shape:
            raise ValueError(f"labels: soft labels must have shape {p.shape}, got {y.shape}")
        check_finite(y, "labels")
        return p, y.astype(np.float64)
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
        raise ValueError(f"labels: expected integer or soft (float) labels, got dtype {y.dtype}")
    if y.shape != p.shape[1:]:
        raise ValueError(f"labels: expected shape {p.shape[1:]}, got {y.shape}")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"labels: expected values in [0, {k - 1}], got [{y.min()}, {y.max()}]")
    onehot = (np.arange(k).reshape((k,) + (1,) * y.ndim) == y[None]).astype(np.float64)
    return p, onehot


def nll(probs: Any, labels: Any, *, eps: float = NLL_EPS) -> float:
    """Mean negative log-likelihood (cross-entropy) per pixel, in nats.

    Parameters
    ----------
    probs : ndarray or Tensor, shape (K, *spatial)
        Class probabilities.
    labels : ndarray or Tensor, shape (*spatial) of int, or (K, *spatial) of float
        Hard labels, or soft labels (then ``-sum_k q_k log p_k``, the expected NLL under the
        raters' label distribution).
    eps : float, keyword-only
        Lower clip of the probabilities before the logarithm (:data:`NLL_EPS`).

    Returns
    -------
    float
        ``mean_x -sum_k q_k(x) log max(p_k(x), eps)``.

    Raises
    ------
    ValueError
        Shapes, dtypes or label values that do not match.
    """
    if not (isinstance(eps, float | int) and 0 < eps < 1):
        raise ValueError(f"eps: expected a number in (0, 1), got {eps!r}")
    p, q = _targets(probs, labels)
    logp = np.log(np.maximum(p, eps))
    return float(-(q * logp).sum(axis=0).mean())


def brier_score(probs: Any, labels: Any) -> float:
    """Mean multi-class Brier score per pixel.

    Parameters
    ----------
    probs : ndarray or Tensor, shape (K, *spatial)
        Class probabilities.
    labels : ndarray or Tensor, shape (*spatial) of int, or (K, *spatial) of float
        Hard labels (one-hot targets) or soft labels.

    Returns
    -------
    float
        ``mean_x sum_k (p_k(x) - q_k(x))**2``, in [0, 2] (Brier's original multi-class form; for
        K = 2 it is twice the binary ``(p - y)**2``).

    Raises
    ------
    ValueError
        Shapes, dtypes or label values that do not match.
    """
    p, q = _targets(probs, labels)
    return float(((p - q) ** 2).sum(axis=0).mean())
