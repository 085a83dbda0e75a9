"""Input check: is the image like the data the model was trained on?

The engine calls :func:`check_domain` on the *normalised* image (what the network sees) and stores
the answer in ``result.provenance["domain"]``; each warning is also appended to
``provenance["warnings"]``, so every surface (CLI text and ``--json``, napari notification, review
summary) shows it, and the verdict of the summary reads ``in_domain``.

Two comparisons with the card's ``training_distribution``:

- **Intensity.** The card's five quantiles (0.01, 0.05, 0.5, 0.95, 0.99) of the normalised training
  intensities cut the intensity axis into six bins holding 1, 4, 45, 45, 4 and 1 % of the training
  pixels. The image's shares of pixels in the same bins are compared with those by the population
  stability index ``PSI = sum (obs - exp) * log(obs / exp)`` (a symmetrised KL divergence of the
  binned distributions). On 48 held-out in-domain synthetic images PSI stays below 0.29 (lesion
  load moves the upper bins); scikit-image's camera, cell, coins, moon and microaneurysms and
  nibabel's anatomical.nii score 0.36-1.5. Above `PSI_THRESHOLD` the image is out of domain. The
  check sees intensity statistics only: shifts that keep them (blur, noise at the same histogram)
  are left to the epistemic scores, compared with the card's ``reference`` by the verdict.
- **Spacing.** When the caller gives the image spacing, it is compared with the card's training
  spacing (relative tolerance `SPACING_RTOL`); a mismatch makes ``in_domain`` false (the engine,
  which does not resample, already warns about it, so no second warning is added here).

Cards without ``training_distribution`` get ``checked: False`` and ``in_domain: None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["PSI_THRESHOLD", "SPACING_RTOL", "check_domain", "intensity_psi"]

#: Population stability index above which the intensities are called out of domain (see above).
PSI_THRESHOLD = 0.35
#: Relative spacing difference above which the spacing is called out of domain.
SPACING_RTOL = 0.05
# floor of an observed bin share in the PSI (an empty bin would give log 0)
_PSI_FLOOR = 1e-4


def intensity_psi(x: np.ndarray, quantiles: dict[str, float]) -> tuple[float, list[float]]:
    """Population stability index of ``x``'s intensities against the training quantiles.

    Parameters
    ----------
    x : ndarray
        Normalised intensities (any shape; all channels pooled, like the training quantiles).
    quantiles : dict of str to float
        ``{"0.01": v, ...}``: training quantile levels (as strings) to values, increasing.

    Returns
    -------
    psi : float
    observed : list of float
        The image's pixel shares in the ``len(quantiles) + 1`` bins the quantiles delimit.
    """
    levels = sorted(quantiles, key=float)
    edges = np.array([float(quantiles[k]) for k in levels])
    expected = np.diff([0.0, *(float(k) for k in levels), 1.0])
    flat = np.sort(np.asarray(x, dtype=np.float64).ravel())
    counts = np.searchsorted(flat, edges, side="left") / max(flat.size, 1)
    observed = np.diff([0.0, *counts, 1.0])
    obs = np.maximum(observed, _PSI_FLOOR)
    psi = float(np.sum((obs - expected) * np.log(obs / expected)))
    return psi, [float(v) for v in observed]


def check_domain(
    x: np.ndarray,
    card: Any,
    *,
    scale: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Compare a normalised image with the model card's training distribution.

    Parameters
    ----------
    x : ndarray, shape (C, *spatial)
        The image after the card's normalisation (before padding).
    card : ModelCard or None
        Its ``training_distribution`` (None: nothing to compare with).
    scale : sequence of float, optional
        The image's spacing as given by the caller (None: not given, not compared).

    Returns
    -------
    dict
        ``checked`` (bool), ``in_domain`` (bool, or None when not checked), ``trained_on`` (str),
        ``synthetic`` (bool), ``warnings`` (list of str) and ``details`` (``psi``, ``psi_threshold``,
        ``bins_observed``, ``bins_expected``, ``intensity_quantiles`` of the image and of the
        training data, ``spacing``, ``training_spacing``, ``spacing_matches``).
    """
    td = getattr(card, "training_distribution", None)
    name = getattr(card, "name", None) or "the model"
    if not td:
        return {
            "checked": False,
            "in_domain": None,
            "trained_on": "unknown (the model card records no training distribution)",
            "synthetic": False,
            "warnings": [],
            "details": {},
        }
    train_q = {str(k): float(v) for k, v in td["intensity_quantiles"].items()}
    psi, observed = intensity_psi(x, train_q)
    levels = sorted(train_q, key=float)
    image_q = np.quantile(np.asarray(x, dtype=np.float64), [float(k) for k in levels])
    details: dict[str, Any] = {
        "psi": round(psi, 4),
        "psi_threshold": PSI_THRESHOLD,
        "bins_observed": [round(v, 4) for v in observed],
        "bins_expected": [
            round(v, 4) for v in np.diff([0.0, *(float(k) for k in levels), 1.0]).tolist()
        ],
        "intensity_quantiles": {k: round(float(v), 4) for k, v in zip(levels, image_q)},
        "training_intensity_quantiles": train_q,
        "spacing": list(scale) if scale is not None else None,
        "training_spacing": list(td.get("spacing") or []),
        "spacing_matches": None,
    }
    intensity_ok = psi <= PSI_THRESHOLD
    spacing_ok = True
    ref = td.get("spacing")
    if scale is not None and ref:
        mine = [float(s) for s in list(scale)[-len(ref) :]]
        spacing_ok = len(mine) == len(ref) and all(
            abs(a - b) <= SPACING_RTOL * max(abs(float(b)), 1e-12) for a, b in zip(mine, ref)
        )
        details["spacing_matches"] = spacing_ok
    warnings: list[str] = []
    if not intensity_ok:
        warnings.append(
            f"domain: the image is far from {name}'s training data (normalised intensity "
            f"histogram differs: PSI {psi:.2f} > {PSI_THRESHOLD}); the segmentation and its "
            "uncertainty are unreliable here"
        )
    synthetic = bool(td.get("synthetic", False))
    if synthetic:
        warnings.append(
            f"model: {name} was trained on synthetic lesions only ({td.get('data')}); "
            "it is a demonstration model, not validated on real images"
        )
    return {
        "checked": True,
        "in_domain": bool(intensity_ok and spacing_ok),
        "trained_on": str(td.get("data", "")),
        "synthetic": synthetic,
        "warnings": warnings,
        "details": details,
    }
