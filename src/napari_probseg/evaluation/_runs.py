"""Prediction runs in a project store: save an engine result, read a run back, predict a store.

A run saved by :func:`save_run` is a ``ProjectStore`` prediction group (``docs/STORE.md``) with

- arrays: ``samples`` ``(N, *S)`` (argmax labels, smallest unsigned dtype), ``mean_probs``
  ``(K, *S)``, ``variance`` ``(K, *S)``, ``predictive_entropy``, ``expected_entropy``,
  ``mutual_information`` ``(*S)`` (float32, nats);
- metadata: ``kind = "probseg-run"``, ``method``, ``source``, ``n_samples``, ``meanings``,
  ``class_names``, ``scale``, ``input_signature``, ``volumes`` (per-sample expected foreground
  volume), ``units``, ``provenance`` (card sha256, method parameters, seed, device, versions) and
  ``summary`` (the one image-level summary with its verdict, :func:`napari_probseg.engine.summarize`).

:func:`load_run` also reads runs written by other tools with fewer arrays: ``probs`` is accepted
for ``mean_probs``; without probabilities the per-pixel sample frequencies stand in for them (the
run's ``probs_from`` says which).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_probseg.core._validation import check_positive_int

__all__ = ["RUN_ARRAYS", "RunData", "latest_run_id", "load_run", "predict_store", "save_run"]

#: Map arrays written by :func:`save_run` besides ``samples``.
RUN_ARRAYS = (
    "mean_probs",
    "variance",
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
)


@dataclass
class RunData:
    """One prediction run of one image, read from a store.

    Attributes
    ----------
    image_id, run_id : str
    samples : ndarray of int, shape (N, *S)
        Sampled label masks (0 = background).
    probs : ndarray of float64, shape (K, *S)
        Predictive (mean) class probabilities.
    probs_from : {"mean_probs", "probs", "samples"}
        Where ``probs`` came from (``"samples"``: per-pixel label frequencies of the samples).
    maps : dict of str to ndarray
        Stored uncertainty maps (``predictive_entropy``, ``mutual_information``, ...).
    method : str
        Method name (``"unknown"`` when the run does not say).
    source : tuple of str
        Randomness sources (``("unknown",)`` when the run does not say).
    n_samples : int
        Stored samples N.
    metadata : dict
        The run's full metadata.
    """

    image_id: str
    run_id: str
    samples: np.ndarray
    probs: np.ndarray
    probs_from: str
    method: str
    source: tuple[str, ...]
    n_samples: int
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def save_run(
    store: Any,
    image_id: str,
    result: Any,
    *,
    run_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    reference: dict[str, Any] | None = None,
) -> str:
    """Save an engine :class:`~napari_probseg.engine.PredictionResult` as a run of ``image_id``.

    Parameters
    ----------
    store : ProjectStore
        Opened read-write.
    image_id : str
        The image the result was computed from (same spatial shape).
    result : PredictionResult
        With samples (``keep_samples=True``).
    run_id : str, optional
        Run identifier (default: the store's ``run-<time>-<random>``).
    metadata : dict, optional
        Extra JSON-able metadata merged over the run description.
    reference : dict, optional
        The model card's in-domain reference (``engine.card_reference(card)``) for the verdict of
        the saved ``summary`` (the one image-level summary, :func:`napari_probseg.engine.summarize`).

    Returns
    -------
    str
        The run id.
    """
    from napari_probseg.engine import summarize, to_jsonable

    if result.samples is None:
        raise ValueError("result: has no samples (predict with keep_samples=True)")
    maps = result.maps.to_numpy() if hasattr(result.maps, "to_numpy") else result.maps
    arrays = {"samples": np.asarray(result.samples)}
    arrays.update({name: np.asarray(getattr(maps, name)) for name in RUN_ARRAYS})
    meta = {
        "kind": "probseg-run",
        "method": result.method,
        "source": list(result.source),
        "n_samples": int(result.n_samples),
        "meanings": result.meanings,
        "class_names": list(result.class_names),
        "scale": list(result.scale),
        "input_signature": result.input_signature,
        "volumes": np.asarray(maps.volumes, np.float64),
        "units": getattr(maps, "units", "nats"),
        "provenance": result.provenance,
        "summary": summarize(result, reference=reference),
        **dict(metadata or {}),
    }
    return store.save_prediction(image_id, arrays, to_jsonable(meta), run_id=run_id)


def latest_run_id(store: Any, image_id: str) -> str | None:
    """Id of the newest run of ``image_id`` (by creation time), or None without runs."""
    runs = store.list_predictions(image_id)
    return runs[-1]["run_id"] if runs else None


def load_run(store: Any, image_id: str, run_id: str | None = None) -> RunData:
    """Read a run (default: the latest) of ``image_id``.

    Parameters
    ----------
    store : ProjectStore
    image_id : str
    run_id : str, optional
        Default: :func:`latest_run_id`.

    Returns
    -------
    RunData

    Raises
    ------
    ValueError
        ``run_id: ...`` when the image has no (such) run or the run has no ``samples`` array.
    """
    if run_id is None:
        run_id = latest_run_id(store, image_id)
        if run_id is None:
            raise ValueError(f"run_id: image {image_id!r} has no prediction run")
    arrays, meta = store.read_prediction(image_id, run_id)
    if "samples" not in arrays:
        raise ValueError(
            f"run_id: run {run_id!r} of {image_id!r} has no 'samples' array (has {sorted(arrays)})"
        )
    samples = np.asarray(arrays["samples"])
    shape = tuple(store.image_info(image_id)["shape"])
    if samples.ndim != len(shape) + 1:
        raise ValueError(f"run_id: run {run_id!r} samples have shape {samples.shape}, not (N, *S)")
    for name in ("mean_probs", "probs"):
        if name in arrays:
            probs, probs_from = np.asarray(arrays[name], np.float64), name
            break
    else:
        n_classes = max(int(samples.max(initial=0)) + 1, len(meta.get("class_names") or ()), 2)
        probs = np.stack([(samples == c).mean(axis=0) for c in range(n_classes)])
        probs_from = "samples"
    if probs.shape[1:] != shape:
        raise ValueError(f"run_id: run {run_id!r} probabilities have shape {probs.shape}")
    maps = {k: np.asarray(v) for k, v in arrays.items() if k not in ("samples", "probs")}
    source = meta.get("source") or ["unknown"]
    return RunData(
        image_id=image_id,
        run_id=run_id,
        samples=samples,
        probs=probs,
        probs_from=probs_from,
        method=str(meta.get("method", "unknown")),
        source=tuple(str(s) for s in (source if isinstance(source, list) else [source])),
        n_samples=int(samples.shape[0]),
        maps=maps,
        metadata=dict(meta),
    )


def predict_store(
    store: Any,
    model: Any,
    method: str | None = None,
    *,
    image_ids: Sequence[str] | None = None,
    n_samples: int = 16,
    seed: int = 0,
    device: str = "cpu",
    run_id: str | None = None,
    trust: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Run a model on images of a store and save each result as a run (:func:`save_run`).

    Parameters
    ----------
    store : ProjectStore
        Opened read-write.
    model : ModelCard, str or Path
        A card, a bundled model name or a card file.
    method : str, optional
        Sampling method (default: the card's default).
    image_ids : sequence of str, optional
        Images to predict (default: every image of the store).
    n_samples, seed, device
        Passed to :func:`napari_probseg.engine.run_prediction` (the same seed for every image).
    run_id : str, optional
        Run id shared by every image (default ``<model>.<method>-<random>``).
    trust : bool
        Allow TorchScript / pickled models.
    progress : callable, optional
        Called with one line per image.

    Returns
    -------
    dict of str to str
        Image id -> run id.
    """
    import uuid

    from napari_probseg import engine
    from napari_probseg.models import load_method

    n_samples = check_positive_int(n_samples, "n_samples")
    m = load_method(model, method, device="cpu", trust=trust)
    if run_id is None:
        name = m.card.name if getattr(m, "card", None) is not None else "model"
        run_id = f"{name}.{m.name}-{uuid.uuid4().hex[:6]}".replace("+", "_")
    ids = list(store.image_ids() if image_ids is None else image_ids)
    out = {}
    for i, image_id in enumerate(ids):
        image, scale = store.read_image(image_id)
        result = engine.run_prediction(
            image,
            m,
            n_samples=n_samples,
            seed=seed,
            device=device,
            scale=scale,
            slice_by_slice=image.ndim == 3 and m.spatial_dims == 2,
        )
        out[image_id] = save_run(
            store,
            image_id,
            result,
            run_id=run_id,
            reference=engine.card_reference(getattr(m, "card", None)),
        )
        if progress is not None:
            progress(f"{i + 1}/{len(ids)} {image_id}: {m.name}, N = {result.n_samples}")
    return out
