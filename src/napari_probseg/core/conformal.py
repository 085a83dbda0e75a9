"""Conformal bands: an outer mask that covers the reference and an inner mask that is foreground.

Pixel-wise conformal risk control (Angelopoulos et al., "Conformal Risk Control", ICLR 2024),
calibrated on images with reference masks. For a foreground probability map ``p``:

- outer mask ``{p >= lambda_outer}``; its loss on an image is the share of reference-foreground
  pixels it misses (0 for an image without reference foreground). The loss grows with lambda, and
  ``lambda_outer`` is the largest candidate with ``n/(n+1) R(lambda) + 1/(n+1) <= alpha``, where R
  is the mean loss over the n calibration images. Then, for an exchangeable new image,
  E[missed share] <= alpha, i.e. the expected coverage of the reference foreground is >= 1 - alpha.
- inner mask ``{p >= lambda_inner}``; the loss is the false-positive share of the mask (reference
  background pixels / mask pixels, 0 for an empty mask). That share is not monotone in lambda, so
  it is replaced by its monotone upper envelope ``sup_{l >= lambda} FDP(l)`` (conformal risk
  control needs a monotone loss); ``lambda_inner`` is the smallest candidate with
  ``n/(n+1) R(lambda) + 1/(n+1) <= alpha_inner``. Hence E[false-positive share] <= alpha_inner.

Candidates are the union of an even grid on [0, 1] and quantiles of the calibration reference-
foreground probabilities (so saturated maps still get fine thresholds), plus the always-safe ends
(0 = whole image for the outer mask, just above 1 = empty inner mask). If no candidate but the safe
end satisfies the bound (``alpha < 1/(n+1)``) the safe end is returned.

Probability inputs are ``(*spatial)`` foreground maps or ``(K, *spatial)`` class probabilities
(foreground = ``1 - p[0]``); references are integer masks, foreground = label > 0. Lists may mix
image sizes; stacked arrays ``(n, *spatial)`` work too. Numpy or torch (moved to numpy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validation import check_finite, check_positive_int, to_numpy

__all__ = ["BandCoverage", "ConformalBands"]

_ABOVE_ONE = float(np.nextafter(1.0, 2.0))


@dataclass(frozen=True)
class BandCoverage:
    """Empirical behaviour of conformal bands on held-out images.

    Attributes
    ----------
    outer : float
        Mean over images of the share of reference-foreground pixels inside the outer mask
        (images without reference foreground count as 1). Target: >= 1 - alpha.
    inner_false_positive : float
        Mean over images of the share of inner-mask pixels that are reference background
        (empty inner masks count as 0). Target: <= alpha_inner.
    n_images : int
        Number of held-out images.
    """

    outer: float
    inner_false_positive: float
    n_images: int


@dataclass(frozen=True)
class ConformalBands:
    """Calibrated thresholds of the inner and outer masks (build with :meth:`calibrate`).

    Attributes
    ----------
    lambda_outer : float
        Outer mask = ``p >= lambda_outer``.
    lambda_inner : float
        Inner mask = ``p >= lambda_inner``.
    alpha : float
        Risk level of the outer mask (expected missed share of the reference foreground).
    alpha_inner : float
        Risk level of the inner mask (expected false-positive share).
    n_calibration : int
        Number of calibration images.
    """

    lambda_outer: float
    lambda_inner: float
    alpha: float
    alpha_inner: float
    n_calibration: int

    @classmethod
    def calibrate(
        cls,
        probs_list: Sequence[Any] | Any,
        refs_list: Sequence[Any] | Any,
        *,
        alpha: float,
        alpha_inner: float | None = None,
        n_grid: int = 1001,
    ) -> ConformalBands:
        """Calibrate the thresholds on images with reference masks.

        Parameters
        ----------
        probs_list : sequence of ndarray/Tensor, each (*spatial) or (K, *spatial); or an array
            Foreground probability maps (or class probabilities) of the calibration images.
        refs_list : sequence of ndarray/Tensor of int, each (*spatial); or an array (n, *spatial)
            Reference masks, foreground = label > 0.
        alpha : float
            Risk level in (0, 1) of the outer mask: expected missed share of the reference
            foreground <= alpha.
        alpha_inner : float, optional
            Risk level of the inner mask (expected false-positive share); default ``alpha``.
        n_grid : int
            Size of the even grid and of the quantile set of candidate thresholds.

        Returns
        -------
        ConformalBands
        """
        alpha = _check_alpha(alpha, "alpha")
        alpha_inner = alpha if alpha_inner is None else _check_alpha(alpha_inner, "alpha_inner")
        n_grid = check_positive_int(n_grid, "n_grid", minimum=2)
        pairs = _pairs(probs_list, refs_list)
        n = len(pairs)
        fg_values = [p[y] for p, y in pairs]
        pooled = np.concatenate(fg_values) if fg_values else np.empty(0)
        grid = np.linspace(0.0, 1.0, n_grid)
        if pooled.size:
            grid = np.union1d(grid, np.quantile(pooled, np.linspace(0.0, 1.0, n_grid)))
        grid = np.union1d(grid, [0.0, _ABOVE_ONE])

        # Outer: missed share L_i(lam) = #(fg with p < lam) / #fg, nondecreasing in lam.
        risk_out = np.zeros(grid.size)
        for v in fg_values:
            if v.size:
                risk_out += np.searchsorted(np.sort(v), grid, side="left") / v.size
        risk_out /= n
        ok = n / (n + 1) * risk_out + 1 / (n + 1) <= alpha
        ok[0] = True  # lam = 0: the whole image, zero loss
        lambda_outer = float(grid[np.flatnonzero(ok)[-1]])

        # Inner: monotone envelope of the false-positive share, nonincreasing in lam.
        risk_in = np.zeros(grid.size)
        for p, y in pairs:
            risk_in += _fdp_envelope(p, y, grid)
        risk_in /= n
        ok = n / (n + 1) * risk_in + 1 / (n + 1) <= alpha_inner
        ok[-1] = True  # lam just above 1: the empty mask, zero loss
        lambda_inner = float(grid[np.flatnonzero(ok)[0]])
        return cls(
            lambda_outer=lambda_outer,
            lambda_inner=lambda_inner,
            alpha=alpha,
            alpha_inner=alpha_inner,
            n_calibration=n,
        )

    def apply(self, prob: Any) -> tuple[np.ndarray, np.ndarray]:
        """Inner and outer masks of one image.

        Parameters
        ----------
        prob : ndarray or Tensor, shape (*spatial)
            Foreground probability map (for class probabilities pass ``1 - probs[0]``).

        Returns
        -------
        inner, outer : ndarray of bool, shape (*spatial)
            ``p >= max(lambda_inner, lambda_outer)`` and ``p >= lambda_outer``: at loose levels
            the thresholds may cross, and the inner mask is then clipped to the outer one. The
            guarantee holds for the clipped mask too, since the controlled loss is the supremum
            of the false-positive share over all higher thresholds.
        """
        p = _foreground(prob, "prob")
        outer = p >= self.lambda_outer
        inner = (p >= self.lambda_inner) & outer
        return inner, outer

    def coverage(
        self, probs_list: Sequence[Any] | Any, refs_list: Sequence[Any] | Any
    ) -> BandCoverage:
        """Empirical coverage of the outer mask and false-positive share of the inner mask.

        Parameters
        ----------
        probs_list, refs_list
            Held-out images, as for :meth:`calibrate`.

        Returns
        -------
        BandCoverage
        """
        pairs = _pairs(probs_list, refs_list)
        covered, false_pos = [], []
        for p, y in pairs:
            inner, outer = self.apply(p)
            n_fg = int(y.sum())
            covered.append(np.count_nonzero(outer & y) / n_fg if n_fg else 1.0)
            n_in = int(inner.sum())
            false_pos.append(np.count_nonzero(inner & ~y) / n_in if n_in else 0.0)
        return BandCoverage(
            outer=float(np.mean(covered)),
            inner_false_positive=float(np.mean(false_pos)),
            n_images=len(pairs),
        )


def _fdp_envelope(p: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """``sup_{l >= lam} FDP({p >= l})`` at each ``lam`` of the sorted ``grid`` (FDP(empty) = 0)."""
    order = np.argsort(-p, kind="stable")
    p_desc = p[order]
    bg = (~y[order]).astype(np.int64)
    k = np.arange(1, p.size + 1)
    fdp = np.cumsum(bg) / k
    # Only the ends of tie groups are reachable masks {p >= l}; others must not raise the sup.
    reachable = np.append(p_desc[1:] != p_desc[:-1], True)
    fdp = np.where(reachable, fdp, 0.0)
    env = np.maximum.accumulate(fdp)
    # Mask size at lam = #(p >= lam); the envelope over thresholds >= lam is env[size - 1].
    size = p.size - np.searchsorted(p_desc[::-1], grid, side="left")
    return np.where(size > 0, env[np.maximum(size - 1, 0)], 0.0)


def _check_alpha(alpha: float, name: str) -> float:
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"{name}: expected a value in (0, 1), got {alpha!r}")
    return float(alpha)


def _foreground(prob: Any, name: str, ref_shape: tuple[int, ...] | None = None) -> np.ndarray:
    p = to_numpy(prob)
    if not np.issubdtype(p.dtype, np.floating):
        raise ValueError(f"{name}: expected floating probabilities, got dtype {p.dtype}")
    check_finite(p, name)
    if ref_shape is not None and p.shape != ref_shape:
        if p.ndim == len(ref_shape) + 1 and p.shape[1:] == ref_shape:
            p = 1.0 - p[0]
        else:
            raise ValueError(f"{name}: shape {p.shape} does not match the reference {ref_shape}")
    return p


def _pairs(probs_list: Any, refs_list: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    probs = list(probs_list)
    refs = list(refs_list)
    if len(probs) != len(refs):
        raise ValueError(f"refs_list: expected {len(probs)} references, got {len(refs)}")
    if not probs:
        raise ValueError("probs_list: expected at least one image")
    out = []
    for i, (p, r) in enumerate(zip(probs, refs)):
        y = to_numpy(r)
        if not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
            raise ValueError(f"refs_list: image {i}: expected integer labels, got {y.dtype}")
        fg = _foreground(p, f"probs_list: image {i}", y.shape)
        out.append((fg.reshape(-1), (y > 0).reshape(-1)))
    return out
