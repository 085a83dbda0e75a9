"""Temperature scaling: fit one scalar T so that ``softmax(logits / T)`` minimizes the pixel NLL.

The package's one temperature fit (training, evaluation and the napari calibration panel call it).
Reports the NLL and the top-label ECE (:func:`napari_probseg.core.calibration.calibration`) before
and after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_probseg.core._validation import check_finite, check_positive_int, to_numpy

__all__ = ["TemperatureFit", "fit_temperature"]


@dataclass(frozen=True)
class TemperatureFit:
    """Result of :func:`fit_temperature`.

    Attributes
    ----------
    temperature : float
        Fitted T > 0; calibrated probabilities are ``softmax(logits / T)``.
    nll_before, nll_after : float
        Mean negative log-likelihood (nats per pixel) at T = 1 and at the fitted T.
    ece_before, ece_after : float
        Top-label ECE (15 bins) at T = 1 and at the fitted T.
    n_pixels : int
        Pixels used.
    """

    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    n_pixels: int


def fit_temperature(
    logits: Any,
    labels: Any,
    *,
    max_iter: int = 100,
    n_bins: int = 15,
    mask: Any = None,
) -> TemperatureFit:
    """Fit a scalar temperature T > 0 minimizing the mean pixel NLL of ``softmax(logits / T)``.

    L-BFGS-B (scipy) on ``log T`` with the analytic gradient
    ``d NLL / d log T = mean(z_y - E_softmax(z/T)[z]) / T``; the NLL is convex in ``1/T``.

    Parameters
    ----------
    logits : ndarray or Tensor, shape (K, *spatial), (B, K, *spatial) or (*spatial)
        Class logits (class axis first, or second after a batch axis). A logit map with the same
        shape as ``labels`` is a binary foreground logit, read as the logits ``(0, z)``.
    labels : ndarray or Tensor of int, shape (*spatial) or (B, *spatial)
        Hard labels.
    max_iter : int
        Maximum optimizer iterations.
    n_bins : int
        Bins for the reported ECE.
    mask : ndarray or Tensor of bool, shape like ``labels``, optional
        Pixels to use.

    Returns
    -------
    TemperatureFit

    Notes
    -----
    Works on float64 copies of the logits (a few arrays of ``n_pixels x K``); for large volumes
    pass a ``mask`` that subsamples the pixels.
    """
    from scipy.optimize import minimize

    from napari_probseg.core.calibration import calibration

    max_iter = check_positive_int(max_iter, "max_iter")
    z = to_numpy(logits)
    y = to_numpy(labels)
    check_finite(z, "logits")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
        raise ValueError(f"labels: expected integer hard labels, got dtype {y.dtype}")
    if z.shape == y.shape:  # foreground logit map -> logits (0, z)
        z = np.stack([np.zeros_like(z), z], axis=-1)
    elif z.ndim == y.ndim + 1 and z.shape[:1] + z.shape[2:] == y.shape:  # (B, K, *S)
        z = np.moveaxis(z, 1, -1)
    elif z.ndim == y.ndim + 1 and z.shape[1:] == y.shape:  # (K, *S)
        z = np.moveaxis(z, 0, -1)
    else:
        raise ValueError(
            f"logits: shape {tuple(z.shape)} does not match labels {tuple(y.shape)} as "
            "(K, *spatial), (B, K, *spatial) or (*spatial)"
        )
    k = z.shape[-1]
    z = z.reshape(-1, k).astype(np.float64)
    y = y.reshape(-1).astype(np.int64)
    if mask is not None:
        keep = to_numpy(mask).reshape(-1).astype(bool)
        z, y = z[keep], y[keep]
    if y.size == 0:
        raise ValueError("labels: no pixels to fit")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels: expected values in [0, {k - 1}], got [{y.min()}, {y.max()}]")
    z_y = z[np.arange(y.size), y]

    def nll_grad(log_t: np.ndarray) -> tuple[float, np.ndarray]:
        t = float(np.exp(log_t[0]))
        s = z / t
        m = s.max(axis=1, keepdims=True)
        e = np.exp(s - m)
        den = e.sum(axis=1)
        lse = np.log(den) + m[:, 0]
        nll = float(np.mean(lse - z_y / t))
        expected_z = (e * z).sum(axis=1) / den
        grad = float(np.mean(z_y - expected_z)) / t
        return nll, np.array([grad])

    nll_before = nll_grad(np.zeros(1))[0]
    res = minimize(
        nll_grad,
        np.zeros(1),
        jac=True,
        method="L-BFGS-B",
        bounds=[(np.log(1e-3), np.log(1e3))],
        options={"maxiter": max_iter},
    )
    temperature = float(np.exp(res.x[0]))
    nll_after = nll_grad(res.x)[0]

    def ece_at(t: float) -> float:
        s = z / t
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return calibration(p.T, y, n_bins=n_bins).ece

    return TemperatureFit(
        temperature=temperature,
        nll_before=nll_before,
        nll_after=min(nll_after, nll_before),
        ece_before=ece_at(1.0),
        ece_after=ece_at(temperature),
        n_pixels=int(y.size),
    )
