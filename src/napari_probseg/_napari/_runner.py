"""The job a run panel starts: load the method, run the engine's generator, build the layers.

Plain Python (no Qt): the napari worker wraps :func:`run_job`, the demo and tests call the same
generator. Everything slow (model loading, sampling, contours, regions) happens here, off the GUI
thread; the GUI thread only adds the finished layers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_probseg._napari._layers import LayerData, Placement, prediction_layers


class JobError(Exception):
    """A run failed; ``__cause__`` holds the original exception.

    Wraps ``RuntimeError`` (torch errors, CUDA out of memory) because superqt's generator worker
    takes a ``RuntimeError`` for "worker deleted" and then never reports the end of the run.
    """


@dataclass
class RunRequest:
    """What the user asked for in the run panel.

    Attributes
    ----------
    model : str or Method
        Bundled model name or path of a model card (or an already loaded ``Method``, for scripts
        and tests).
    method : str
        Method name supported by the model (``"mc_dropout"``, ``"ssn"``, ...).
    n_samples, seed : int
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
    quantile : float
        Share of voxels highlighted as most uncertain.
    trust : bool
        Allow TorchScript/pickled weights (only when the user explicitly trusts the file).
    batch_size : int or None
        Samples per forward pass (None: the engine sizes batches to the memory budget).
    """

    model: Any
    method: str
    n_samples: int = 16
    seed: int = 0
    device: str = "auto"
    quantile: float = 0.05
    trust: bool = False
    batch_size: int | None = None


@dataclass
class RunOutput:
    """A finished run: the result, its layers and what it was computed from."""

    result: Any
    layers: list[LayerData]
    placement: Placement
    request: RunRequest
    extra: dict = field(default_factory=dict)


def check_image(image: Any, name: str = "image") -> np.ndarray:
    """Return the image as a float array, raising ``ValueError`` for NaN/Inf or unusable shapes.

    Parameters
    ----------
    image : array_like, shape (*spatial)
        2D or 3D single-channel image.
    """
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name}: expected a 2D or 3D single-channel image, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name}: contains {bad} NaN or Inf value(s); fix or mask them first")
    return arr


def run_job(
    image: Any,
    request: RunRequest,
    placement: Placement,
    *,
    cancel: threading.Event | Callable[[], bool] | None = None,
) -> Generator[Any, None, RunOutput]:
    """Run a prediction and build its layers; yields the engine's ``Progress`` events.

    Parameters
    ----------
    image : ndarray, shape (*spatial)
        The image layer's data (2D or 3D, single channel).
    request : RunRequest
        Model, method, N, seed, device, highlight quantile.
    placement : Placement
        Name, scale and translate of the image layer (the result's layers follow it).
    cancel : threading.Event or callable, keyword-only
        Checked by the engine between batches and tiles, and here between stages; when set, the
        engine raises ``engine.Cancelled`` and no result is produced.

    Returns
    -------
    RunOutput
        The ``PredictionResult`` and the layer-data tuples of :func:`prediction_layers`.

    Raises
    ------
    ValueError
        Bad image (NaN, shape), model card or argument; the message names it.
    engine.Cancelled
        When ``cancel`` fires; nothing is returned.
    JobError
        Any ``RuntimeError`` (e.g. CUDA out of memory), kept as ``__cause__``.
    """
    try:
        return (yield from _job(image, request, placement, cancel))
    except RuntimeError as exc:
        raise JobError(str(exc)) from exc


def _job(
    image: Any,
    request: RunRequest,
    placement: Placement,
    cancel: threading.Event | Callable[[], bool] | None,
) -> Generator[Any, None, RunOutput]:
    from napari_probseg import engine
    from napari_probseg.engine._device import resolve_device
    from napari_probseg.models import load_method

    arr = check_image(image)
    is_cancelled = _as_check(cancel)
    device = resolve_device(request.device)
    if isinstance(request.model, str | Path):
        # Loading (imports, weights) takes seconds on a first run: say so instead of "Running…".
        yield engine.Progress(
            "prepare", 0, request.n_samples, 0, 0, 0.0,
            f"loading model {Path(str(request.model)).name} ({request.method}) on {device}…",
        )  # fmt: skip
        method = load_method(request.model, request.method, device=device, trust=request.trust)
    else:
        method = request.model
    if is_cancelled():
        raise engine.Cancelled("cancelled before sampling")
    result = yield from engine.predict(
        arr,
        method,
        n_samples=request.n_samples,
        seed=request.seed,
        device=device,
        scale=tuple(placement.scale),
        cancel=is_cancelled,
        batch_size=request.batch_size,
    )
    if is_cancelled():
        raise engine.Cancelled("cancelled before drawing the layers")
    yield engine.Progress(
        "finalize", request.n_samples, request.n_samples, 0, 0, 1.0,
        "drawing contours, regions and maps…",
    )  # fmt: skip
    layers = prediction_layers(result, placement, quantile=request.quantile)
    # The one summary (scores, verdict, warnings), computed here off the GUI thread; the review
    # panel only renders it.
    summary = engine.summarize(
        result,
        reference=engine.card_reference(getattr(method, "card", None)),
        highlight_share=min(max(request.quantile, 1e-6), 1 - 1e-6),
    )
    return RunOutput(
        result=result,
        layers=layers,
        placement=placement,
        request=request,
        extra={"summary": summary},
    )


def _as_check(cancel: threading.Event | Callable[[], bool] | None) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    if isinstance(cancel, threading.Event):
        return cancel.is_set
    return cancel
