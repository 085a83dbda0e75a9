"""Temperature scaling of a model card on the annotated images of a project store.

The softmax method's probabilities at temperature 1 come from the engine (tiling, normalization as
for any prediction). The engine returns probabilities, not logits, but that suffices:
``log p = z - logsumexp(z)`` differs from the logits ``z`` by a per-pixel constant, and softmax
is invariant to it, so ``softmax(log p / T) = softmax(z / T)`` and
:func:`~napari_probseg.core.calibration.fit_temperature` on ``log p`` fits the same T. (Tiles are
blended as probabilities, so in tile overlaps this is the blend's log, a close approximation.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_probseg.core.calibration import calibration, fit_temperature

__all__ = ["TemperatureReport", "calibrate_card"]

# float32 probabilities underflow to 0 far out in the tails; log of the smallest normal float32.
_LOG_FLOOR = float(np.log(np.finfo(np.float32).tiny))


@dataclass(frozen=True)
class TemperatureReport:
    """Result of :func:`calibrate_card`.

    Attributes
    ----------
    temperature : float
        The fitted T written to the new card (``methods.softmax.temperature``).
    previous_temperature : float
        The card's temperature before (1 if it had none).
    ece_before, ece_after : float
        Top-label ECE (``n_bins`` bins) against the reference at the card's previous T and at the
        fitted T; ``ece_t1`` at T = 1.
    nll_before, nll_after : float
        Mean pixel NLL at the previous T and at the fitted T.
    n_images, n_pixels : int
        Images and (pixel, label) pairs used.
    reference : str
        ``"majority"`` or ``"all"`` (every rater's mask as a separate label set).
    card_path : Path
        The written card.
    """

    temperature: float
    previous_temperature: float
    ece_before: float
    ece_after: float
    ece_t1: float
    nll_before: float
    nll_after: float
    n_images: int
    n_pixels: int
    reference: str
    card_path: Path

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        out = dict(self.__dict__)
        out["card_path"] = str(self.card_path)
        return out


def calibrate_card(
    store: Any,
    model: Any,
    out: str | os.PathLike,
    *,
    image_ids: Sequence[str] | None = None,
    reference: str = "majority",
    n_bins: int = 15,
    name: str | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> TemperatureReport:
    """Fit the softmax temperature of a model on a store's annotated images; write a new card.

    Parameters
    ----------
    store : ProjectStore
    model : ModelCard, str or Path
        Card, bundled model name or card file; it must support the ``softmax`` method.
    out : path
        The new card (``.json``, or ``.yaml``/``.yml``). File paths of the card (weights, Laplace
        curvature) are rewritten relative to its folder.
    image_ids : sequence of str, optional
        Images to fit on (default: every image with annotations).
    reference : {"majority", "all"}
        Labels of the NLL: the raters' majority vote, or every rater's mask (each pixel counted
        once per rater, which fits the raters' mean distribution).
    n_bins : int
        Bins of the reported ECE.
    name : str, optional
        Name of the new card (default ``<name>-calibrated``).
    device : str
        Device of the predictions.
    overwrite : bool
        Replace an existing ``out``.
    progress : callable, optional
        Called with one line per image.

    Returns
    -------
    TemperatureReport
    """
    from napari_probseg import engine
    from napari_probseg.models import ModelCard, load_method, resolve_card
    from napari_probseg.store import majority_vote

    if reference not in ("majority", "all"):
        raise ValueError(f"reference: expected 'majority' or 'all', got {reference!r}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"out: {out} exists (pass overwrite=True / --overwrite)")
    card = resolve_card(model)
    if "softmax" not in card.methods:
        raise ValueError(
            f"model: card {card.name!r} has no softmax method (methods: {', '.join(card.methods)})"
        )
    previous = float(card.methods["softmax"].get("temperature", 1.0))
    ids = list(image_ids) if image_ids is not None else store.image_ids()
    ids = [i for i in ids if store.raters(i)] if image_ids is None else ids
    if not ids:
        raise ValueError("store: no annotated images to fit the temperature on")
    unit = card.to_dict()
    unit["methods"]["softmax"]["temperature"] = 1.0
    method = load_method(ModelCard.from_dict(unit, path=card.path), "softmax", device="cpu")
    logps, labels = [], []
    for i, image_id in enumerate(ids):
        raters = store.raters(image_id)
        if not raters:
            raise ValueError(f"image_ids: {image_id!r} has no annotations")
        image, scale = store.read_image(image_id)
        result = engine.run_prediction(
            image,
            method,
            n_samples=1,
            device=device,
            scale=scale,
            keep_samples=False,
            slice_by_slice=image.ndim == 3 and method.spatial_dims == 2,
        )
        p = np.asarray(result.maps.mean_probs, np.float64)
        with np.errstate(divide="ignore"):
            logp = np.maximum(np.log(np.clip(p, 0.0, None)), _LOG_FLOOR)
        masks = [store.latest(image_id, r)[0] for r in raters]
        refs = masks if reference == "all" else [majority_vote(masks)]
        for ref in refs:
            logps.append(logp.reshape(len(p), -1))
            labels.append(np.asarray(ref).reshape(-1).astype(np.int64))
        if progress is not None:
            progress(f"{i + 1}/{len(ids)} {image_id}")
    z = np.concatenate(logps, axis=1)  # (K, P): pixels of every image (and rater) in a row
    y = np.concatenate(labels)
    fit = fit_temperature(z, y, n_bins=n_bins)
    ece_before = _ece(z, y, previous, n_bins)
    new = card.to_dict()
    new["name"] = name or f"{card.name}-calibrated"
    new["methods"]["softmax"]["temperature"] = round(fit.temperature, 6)
    new["methods"]["softmax"]["fitted_on"] = (
        f"store {store.path}: {len(ids)} images, NLL vs {reference} (probseg calibrate)"
    )
    _relink(new, card, out)
    new.setdefault("metrics", {})["temperature_scaling"] = {
        "temperature": fit.temperature,
        "previous_temperature": previous,
        "ece_before": ece_before,
        "ece_after": fit.ece_after,
        "ece_t1": fit.ece_before,
        "n_pixels": fit.n_pixels,
        "n_images": len(ids),
        "reference": reference,
        "n_bins": n_bins,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    ModelCard.from_dict(new).save(out)
    return TemperatureReport(
        temperature=fit.temperature,
        previous_temperature=previous,
        ece_before=ece_before,
        ece_after=fit.ece_after,
        ece_t1=fit.ece_before,
        nll_before=_nll(z, y, previous),
        nll_after=fit.nll_after,
        n_images=len(ids),
        n_pixels=fit.n_pixels,
        reference=reference,
        card_path=out,
    )


def _softmax(z: np.ndarray, t: float) -> np.ndarray:
    s = z / t
    e = np.exp(s - s.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def _ece(z: np.ndarray, y: np.ndarray, t: float, n_bins: int) -> float:
    return calibration(_softmax(z, t), y, n_bins=n_bins).ece


def _nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    s = z / t
    m = s.max(axis=0)
    lse = np.log(np.exp(s - m).sum(axis=0)) + m
    return float(np.mean(lse - s[y, np.arange(y.size)]))


def _relink(new: dict[str, Any], card: Any, out: Path) -> None:
    """Make the card's file references valid from the new card's folder."""
    folder = out.parent.resolve()

    def rel(name: str) -> str:
        target = Path(card.resolve(name)).resolve()
        try:
            return os.path.relpath(target, folder)
        except ValueError:  # another drive on Windows
            return str(target)

    new["weights"]["path"] = rel(card.weights["path"])
    lap = new["methods"].get("laplace")
    if lap and "curvature" in lap:
        lap["curvature"] = rel(lap["curvature"])
