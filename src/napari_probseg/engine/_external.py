"""Whole-image prediction for methods that preprocess and tile themselves (nnU-Net, MONAI bundles).

:func:`napari_probseg.engine.predict` dispatches here when ``method.whole_image`` is true
(`napari_probseg.models.protocol.WholeImageMethod`). The model's own code does what it defines
(normalisation, resampling, sliding window, export back to the image geometry); everything after
the probabilities is the engine's: the same `UncertaintyAccumulator`, uint8 argmax samples,
`Progress` events, cancellation and provenance keys, so the summary, CLI and napari render the
result exactly like one of our own models.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np

from napari_probseg.core._validation import check_positive_int
from napari_probseg.engine._device import resolve_device
from napari_probseg.engine._provenance import image_signature, package_versions, utc_now
from napari_probseg.engine._types import PredictionResult, Progress

__all__ = ["predict_whole_image"]


def _layout(image: Any, method: Any) -> tuple[np.ndarray, bool]:
    """Return the image as (C, *spatial) and whether a 2D model runs over a 3D volume."""
    if type(image).__module__.split(".")[0] == "torch":
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"image: expected a real numeric array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"image: is empty (shape {arr.shape})")
    c, sd = int(method.in_channels), int(method.spatial_dims)
    if c == 1 and arr.ndim in (2, 3):
        chw = arr[None]
    elif arr.ndim in (3, 4) and arr.shape[0] == c:
        chw = arr
    else:
        raise ValueError(
            f"image: expected {'(C, ' if c > 1 else '('}[Z, ]Y, X) with C = {c} channels first "
            f"for {method.name}, got {arr.shape}; choose a channel (CLI: --channel)"
        )
    if sd == 3 and chw.ndim == 3:
        raise ValueError(f"image: {method.name} is a 3D model but the image is 2D {arr.shape}")
    if not np.isfinite(chw).all():
        raise ValueError("image: contains NaN or Inf values")
    return chw, sd == 2 and chw.ndim == 4


def predict_whole_image(
    image: Any,
    method: Any,
    *,
    n_samples: int = 16,
    seed: int = 0,
    device: Any = "auto",
    scale: Sequence[float] | None = None,
    check_cancel: Callable[[], None],
    keep_samples: bool = True,
    first_index: int = 0,
) -> Generator[Progress, None, PredictionResult]:
    """Run a `WholeImageMethod` on ``image``; the same events and result as ``engine.predict``.

    Hypotheses ``first_index .. first_index + N - 1`` are drawn; ``N`` is capped at the method's
    ``n_hypotheses`` distinct hypotheses (more would only repeat them; the cap is recorded in the
    provenance warnings), 1 for deterministic methods. ``seed`` is recorded (the hypotheses of
    folds and mirrorings are not random).
    """
    n_req = check_positive_int(n_samples, "n_samples")
    seed = check_positive_int(seed, "seed", minimum=0)
    dev = resolve_device(device)
    arr, volume_2d = _layout(image, method)
    spatial = tuple(arr.shape[1:])
    if scale is not None:
        scale_t: tuple[float, ...] | None = tuple(float(s) for s in scale)
        if len(scale_t) != len(spatial) or any(not (s > 0) for s in scale_t):
            raise ValueError(
                f"scale: expected {len(spatial)} positive spacings for spatial shape {spatial}, "
                f"got {tuple(scale)}"
            )
    else:
        scale_t = None
    check_cancel()
    return _run(
        image, arr, method, n_req, seed, dev, str(device), scale_t, check_cancel,
        keep_samples, volume_2d, int(first_index),
    )  # fmt: skip


def _run(
    image: Any,
    arr: np.ndarray,
    method: Any,
    n_req: int,
    seed: int,
    dev: Any,
    device_requested: str,
    scale: tuple[float, ...] | None,
    check_cancel: Callable[[], None],
    keep_samples: bool,
    volume_2d: bool,
    first_index: int,
) -> Generator[Progress, None, PredictionResult]:
    from napari_probseg.core.uncertainty import UncertaintyAccumulator, term_meanings

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []
    n_distinct = max(1, int(getattr(method, "n_hypotheses", 1)))
    if bool(getattr(method, "deterministic", False)):
        n_distinct = 1
    n_total = min(n_req, n_distinct)
    if n_total < n_req:
        notes.append(
            f"n_samples: {method.name} of {method.model_name} has {n_distinct} distinct "
            f"hypothes{'is' if n_distinct == 1 else 'es'}; drew {n_total} instead of {n_req}"
        )
    spatial = tuple(arr.shape[1:])
    k = int(method.n_classes)
    yield Progress("prepare", 0, n_total, 0, 1, 0.0, "preparing the image")
    check_cancel()
    signature = image_signature(image)
    method = method.to(dev)
    label_dtype = np.uint8 if k <= 256 else np.uint16
    samples = np.empty((n_total, *spatial), label_dtype) if keep_samples else None
    acc = UncertaintyAccumulator(k, spatial_dims=len(spatial))
    timings["prepare"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    indices = [first_index + j for j in range(n_total)]
    done = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # nnU-Net / MONAI internals
        for rows, probs in method.predict_hypotheses(
            arr, scale=scale, indices=indices, check_cancel=check_cancel
        ):
            probs = np.asarray(probs, dtype=np.float32)
            expected = (len(rows), k, *spatial)
            if tuple(probs.shape) != expected:
                raise ValueError(
                    f"method: {method.name} returned probabilities of shape {probs.shape}, "
                    f"expected {expected}"
                )
            acc.update(probs)
            if samples is not None:
                for row, p in zip(rows, probs):
                    samples[row] = np.argmax(p, axis=0)
            done += len(rows)
            yield Progress(
                "sample", done, n_total, 1, 1, done / n_total, f"samples {done} of {n_total}"
            )
            check_cancel()
    if done != n_total:
        raise ValueError(f"method: {method.name} produced {done} of {n_total} hypotheses")
    timings["sample"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    yield Progress("finalize", n_total, n_total, 1, 1, 1.0, "computing the maps")
    check_cancel()
    maps = acc.result()
    source = tuple(method.source)
    timings["finalize"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    describe = method.describe()
    scale_out = scale if scale is not None else (1.0,) * len(spatial)
    provenance = {
        "created": utc_now(),
        "card_sha256": method.model_sha256,
        "card_name": method.model_name,
        "model_kind": describe.get("model_kind"),
        "method": method.name,
        "method_params": describe,
        "source": list(source),
        "n_samples": n_total,
        "n_samples_requested": n_req,
        "first_index": first_index,
        "seed": seed,
        "device": str(dev),
        "device_requested": device_requested,
        "batch_size": 1,
        "batch_size_final": 1,
        "tiling": {"by": describe.get("model_kind", "model"), "whole_image": True},
        "slice_by_slice": volume_2d,
        "normalization": {"kind": "model", "by": describe.get("model_kind", "model")},
        "scale": list(scale_out),
        "card_spacing": None,
        "resampled": "by the model's own preprocessing",
        "versions": package_versions(),
        "input_signature": signature,
        "input_shape": list(np.shape(image)),
        "input_dtype": str(arr.dtype),
        "timings": {key: round(val, 4) for key, val in timings.items()},
        "warnings": notes,
    }
    return PredictionResult(
        samples=samples,
        maps=maps,
        method=method.name,
        source=source,
        n_samples=n_total,
        meanings=term_meanings(source),
        class_names=list(method.class_names),
        scale=tuple(scale_out),
        input_signature=signature,
        provenance=provenance,
    )
