"""The prediction generator: device, batching, tiling, streaming uncertainty, progress, cancel."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np

from napari_probseg.core._validation import check_positive_int
from napari_probseg.engine._device import (
    DEFAULT_ACTIVATION_FACTOR,
    auto_batch_size,
    bytes_per_sample,
    is_out_of_memory,
    memory_budget,
    release_cached_memory,
    resolve_device,
)
from napari_probseg.engine._domain import check_domain
from napari_probseg.engine._normalize import normalize, parse_normalization
from napari_probseg.engine._provenance import image_signature, package_versions, utc_now
from napari_probseg.engine._tiling import TilePlan, crop, pad_image, plan_tiles
from napari_probseg.engine._types import Cancelled, PredictionResult, Progress

#: Relative difference between the image spacing and the card's above which a warning is given.
SPACING_RTOL = 0.05


def predict(
    image: Any,
    method: Any,
    *,
    n_samples: int = 16,
    seed: int = 0,
    device: Any = "auto",
    batch_size: int | None = None,
    overlap: float = 0.25,
    scale: Sequence[float] | None = None,
    normalization: Any = None,
    cancel: Callable[[], bool] | threading.Event | None = None,
    keep_samples: bool = True,
    patch_size: Sequence[int] | None = None,
    slice_by_slice: bool = False,
    memory_budget_bytes: float | None = None,
) -> Generator[Progress, None, PredictionResult]:
    """Sample segmentation hypotheses of an image and stream them into uncertainty maps.

    Returns a generator that yields :class:`Progress` events between sample batches and tiles and
    returns a :class:`PredictionResult` (``result = yield from predict(...)``, or use
    :func:`run_prediction`). Cheap argument checks run at call time; the work runs as the
    generator is consumed. The same generator serves the CLI, the tests and the napari worker.

    Loop order: sample batches outer, windows (tiles, slices) inner. For sample batch ``j`` a CPU
    ``torch.Generator`` is re-seeded with the same seed for every window, so sample ``i`` of the
    batch is the same hypothesis in every tile (see the Method interface). The batch's windows are
    blended (gaussian weights) into one ``(b, K, *spatial)`` float32 buffer on the CPU, which
    updates a :class:`~napari_probseg.core.uncertainty.UncertaintyAccumulator` and is stored as
    ``uint8`` argmax labels. Peak memory: ``b*K*V`` float32 + ``(2K+1)*V`` float64 sums +
    ``N*V`` bytes of labels.

    Parameters
    ----------
    image : array_like, shape (*spatial) or (C, *spatial)
        The image, spatial axes (plane, row, column). A channel axis comes first and must have
        ``method.in_channels`` entries (single-channel images may omit it). A 3D image given to a
        2D model needs ``slice_by_slice=True``.
    method : Method
        A sampling method (``napari_probseg.models.load_method``); its ``card`` attribute, when
        present, supplies the patch size, normalization, spacing and sha256.
    n_samples : int
        Samples N to draw (forced to 1 for deterministic methods; the change is recorded).
    seed : int
        Seed (>= 0). The same seed, batch size and device give identical samples.
    device : str or torch.device
        ``"auto"`` (CUDA, then MPS, then CPU) or an explicit device.
    batch_size : int, optional
        Samples per forward pass; None picks the largest batch that fits the memory budget.
        Out-of-memory errors halve the batch and retry, then fall back to the CPU.
    overlap : float
        Overlap of neighbouring tiles, in [0, 1).
    scale : sequence of float, optional
        Voxel spacing of the image (one value per spatial axis); compared with ``card.spacing``
        (a warning on mismatch; the engine does not resample).
    normalization : None, str or mapping, optional
        Overrides ``card.normalization`` (see :mod:`napari_probseg.engine._normalize`).
    cancel : callable or threading.Event, optional
        Checked before every window and at every yield; when it is true :class:`Cancelled` is
        raised and no result is produced.
    keep_samples : bool
        Keep the ``(N, *spatial)`` uint8 labels (``result.samples``; None otherwise).
    patch_size : sequence of int, optional
        Overrides ``card.patch_size``; None and no card patch: the whole image is one input.
    slice_by_slice : bool
        Run a 2D model on each plane of a 3D image (the same hypotheses on every plane).
    memory_budget_bytes : float, optional
        Bytes one batch may use (default: half the GPU memory, 1.5 GiB on the CPU).

    Returns
    -------
    Generator[Progress, None, PredictionResult]

    Raises
    ------
    ValueError
        Bad arguments or image (naming the argument); at call time.
    Cancelled
        When ``cancel`` fires.
    MemoryError
        Out of memory on the CPU even with one sample per batch.
    """
    check_cancel = cancel_checker(cancel)
    n_req = check_positive_int(n_samples, "n_samples")
    seed = check_positive_int(seed, "seed", minimum=0)
    if batch_size is not None:
        batch_size = check_positive_int(batch_size, "batch_size")
    if not (0.0 <= float(overlap) < 1.0):
        raise ValueError(f"overlap: expected a fraction in [0, 1), got {overlap!r}")
    dev = resolve_device(device)
    arr, slice_mode = _layout(image, method, slice_by_slice=slice_by_slice)
    spatial = arr.shape[1:]
    if scale is None:
        scale_t = (1.0,) * len(spatial)
    else:
        scale_t = tuple(float(s) for s in scale)
        if len(scale_t) != len(spatial) or any(not (s > 0) for s in scale_t):
            raise ValueError(
                f"scale: expected {len(spatial)} positive spacings for spatial shape {spatial}, "
                f"got {tuple(scale)}"
            )
    card = getattr(method, "card", None)
    norm = parse_normalization(
        normalization if normalization is not None else getattr(card, "normalization", None)
    )
    if patch_size is None:
        patch_size = getattr(card, "patch_size", None)
    plan = plan_tiles(
        spatial,
        spatial_dims=int(method.spatial_dims),
        patch_size=patch_size,
        overlap=overlap,
        size_divisor=int(getattr(method, "size_divisor", 1) or 1),
    )
    check_cancel()
    return _run(
        image=image,
        arr=arr,
        method=method,
        card=card,
        plan=plan,
        norm=norm,
        n_req=n_req,
        seed=seed,
        dev=dev,
        device_requested=str(device),
        batch_size=batch_size,
        overlap=float(overlap),
        scale=scale_t,
        scale_given=scale is not None,
        check_cancel=check_cancel,
        has_cancel=cancel is not None,
        keep_samples=bool(keep_samples),
        slice_mode=slice_mode,
        budget=memory_budget_bytes,
    )


def run_prediction(
    image: Any,
    method: Any,
    *,
    callback: Callable[[Progress], None] | None = None,
    **kwargs: Any,
) -> PredictionResult:
    """Run :func:`predict` to the end and return its result.

    Parameters
    ----------
    image, method, **kwargs
        As for :func:`predict`.
    callback : callable, optional
        Called with every :class:`Progress` event.
    """
    gen = predict(image, method, **kwargs)
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)


# --------------------------------------------------------------------------------------------


def cancel_checker(cancel: Any, *, what: str = "prediction") -> Callable[[], None]:
    """Return a function raising :class:`Cancelled` once ``cancel`` says so.

    ``cancel`` is None, a callable returning True to cancel, or a ``threading.Event``. Shared by
    the engine and the training loops so both cancel the same way.
    """
    if cancel is None:
        return lambda: None
    if isinstance(cancel, threading.Event) or hasattr(cancel, "is_set"):
        test = cancel.is_set
    elif callable(cancel):
        test = cancel
    else:
        raise ValueError(f"cancel: expected a callable or a threading.Event, got {cancel!r}")

    def check() -> None:
        if test():
            raise Cancelled(f"{what} cancelled")

    return check


def _layout(image: Any, method: Any, *, slice_by_slice: bool) -> tuple[np.ndarray, bool]:
    """Return the image as (C, *spatial) and whether it runs slice by slice."""
    if type(image).__module__.split(".")[0] == "torch":
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.number)) or np.iscomplexobj(arr):
        raise ValueError(f"image: expected a real numeric array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"image: is empty (shape {arr.shape})")
    sd, c = int(method.spatial_dims), int(method.in_channels)
    nd = arr.ndim
    shape = tuple(arr.shape)
    name = getattr(method, "name", "the method")
    if nd == sd:
        if c != 1:
            raise ValueError(
                f"image: {name} expects {c} channels first, got a single-channel image {shape}"
            )
        chw, volume = arr[None], False
    elif nd == sd + 1 and shape[0] == c and (c > 1 or sd == 3 or shape[0] == 1):
        chw, volume = arr, False
    elif sd == 2 and nd == 3 and c == 1:
        chw, volume = arr[None], True
    elif sd == 2 and nd == 4 and shape[0] == c:
        chw, volume = arr, True
    elif sd == 3 and nd == 2:
        raise ValueError(f"image: {name} is a 3D model but the image is 2D {shape}")
    else:
        want = f"{'(C, ' if c > 1 else '('}{'Z, ' if sd == 3 else ''}Y, X)"
        raise ValueError(
            f"image: expected shape {want} with C = {c} channels first for this {sd}D model, "
            f"got {shape}; choose a channel (CLI: --channel) or reorder the axes"
        )
    if volume and not slice_by_slice:
        raise ValueError(
            f"image: a 3D image {shape} was given to a 2D model; run it slice by slice "
            "(slice_by_slice=True, CLI: --slice-by-slice) or use a 3D model"
        )
    if not np.isfinite(chw).all():
        raise ValueError("image: contains NaN or Inf values")
    return chw, volume


def _batch_seed(seed: int, start: int) -> int:
    """Seed of the sample batch starting at sample ``start`` (independent streams per batch)."""
    return int(np.random.SeedSequence([seed, start]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _run(
    *,
    image: Any,
    arr: np.ndarray,
    method: Any,
    card: Any,
    plan: TilePlan,
    norm: dict,
    n_req: int,
    seed: int,
    dev: Any,
    device_requested: str,
    batch_size: int | None,
    overlap: float,
    scale: tuple[float, ...],
    scale_given: bool,
    check_cancel: Callable[[], None],
    has_cancel: bool,
    keep_samples: bool,
    slice_mode: bool,
    budget: float | None,
) -> Generator[Progress, None, PredictionResult]:
    import torch

    from napari_probseg.core.uncertainty import UncertaintyAccumulator, term_meanings

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    notes: list[str] = []

    def warn(message: str, *, emit: bool = True) -> None:
        notes.append(message)
        if emit:
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    deterministic = bool(getattr(method, "deterministic", False))
    n_total = 1 if deterministic else n_req
    if deterministic and n_req != 1:
        warn(
            f"n_samples: {method.name} is deterministic; drew 1 sample instead of {n_req}",
            emit=False,
        )
    k = int(method.n_classes)
    spatial = tuple(arr.shape[1:])
    yield Progress("prepare", 0, n_total, 0, len(plan.windows), 0.0, "preparing the image")
    check_cancel()

    signature = image_signature(image)
    card_spacing = getattr(card, "spacing", None)
    if card_spacing is not None and scale_given:
        ref = tuple(float(s) for s in card_spacing)
        mine = scale[-len(ref) :]
        if len(ref) == len(mine) and any(
            abs(a - b) > SPACING_RTOL * max(abs(b), 1e-12) for a, b in zip(mine, ref)
        ):
            warn(
                f"scale: image spacing {mine} differs from the model's training spacing {ref}; "
                "the engine does not resample, so results may be off (resample the image first)"
            )
    x_norm = normalize(arr, norm)
    domain = check_domain(x_norm, card, scale=scale if scale_given else None)  # ood: input check
    notes.extend(domain["warnings"])
    x_np = pad_image(x_norm, plan.padded_shape)
    x_full = torch.from_numpy(np.ascontiguousarray(x_np))
    method = method.to(dev)
    if batch_size is None:
        per = bytes_per_sample(
            k,
            int(np.prod(plan.patch_size)),
            int(np.prod(plan.padded_shape)),
            activation_factor=float(
                getattr(method, "activation_factor", DEFAULT_ACTIVATION_FACTOR)
            ),
        )
        b = _balanced(auto_batch_size(n_total, per, budget or memory_budget(dev)), n_total)
    else:
        b = min(batch_size, n_total)
    first_batch = b
    label_dtype = np.uint8 if k <= 256 else np.uint16
    samples = np.empty((n_total, *spatial), label_dtype) if keep_samples else None
    acc = UncertaintyAccumulator(k, spatial_dims=len(spatial))
    timings["prepare"] = time.perf_counter() - t0
    check_cancel()

    t1 = time.perf_counter()
    n_windows = len(plan.windows)
    done = 0
    buffer = None
    hooks = _install_cancel_hooks(method, check_cancel) if has_cancel else []
    try:
        while done < n_total:
            bj = min(b, n_total - done)
            if buffer is None or buffer.shape[0] < bj:
                buffer = torch.zeros((bj, k, *plan.padded_shape), dtype=torch.float32)
            buf = buffer[:bj]
            buf.zero_()
            try:
                yield from _run_batch(
                    method,
                    x_full,
                    plan,
                    buf,
                    bj,
                    _batch_seed(seed, done),
                    dev,
                    check_cancel,
                    done=done,
                    n_total=n_total,
                )
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                del exc
                release_cached_memory(dev)
                if bj > 1:
                    b = max(1, bj // 2)
                    warn(f"out of memory on {dev} with {bj} samples per batch; retrying with {b}")
                elif dev.type != "cpu":
                    warn(
                        f"out of memory on {dev} even with 1 sample per batch; falling back to the CPU"
                    )
                    dev = torch.device("cpu")
                    method = method.to(dev)
                    per = bytes_per_sample(
                        k, int(np.prod(plan.patch_size)), int(np.prod(plan.padded_shape))
                    )
                    b = _balanced(
                        auto_batch_size(n_total, per, budget or memory_budget(dev)), n_total
                    )
                else:
                    raise MemoryError(
                        "out of memory on the CPU even with 1 sample per batch; use a smaller patch "
                        "size or a smaller image"
                    ) from None
                buffer = None
                continue
            if plan.tiled:
                buf /= plan.weight_sum
            probs = crop(buf, spatial).numpy()
            acc.update(probs)
            if samples is not None:
                _argmax_into(probs, samples[done : done + bj])
            done += bj
            yield Progress(
                "sample",
                done,
                n_total,
                n_windows,
                n_windows,
                done / n_total,
                f"samples {done} of {n_total}",
            )
            check_cancel()
    finally:
        for hook in hooks:
            hook.remove()
    buffer = buf = None
    timings["sample"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    yield Progress("finalize", n_total, n_total, n_windows, n_windows, 1.0, "computing the maps")
    check_cancel()
    maps = acc.result()
    source = tuple(getattr(method, "source", ("none",)))
    meanings = term_meanings(source)
    timings["finalize"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    describe = method.describe() if hasattr(method, "describe") else {}
    provenance = {
        "created": utc_now(),
        "card_sha256": getattr(card, "sha256", None),
        "card_name": getattr(card, "name", None),
        "method": method.name,
        "method_params": describe,
        "source": list(source),
        "n_samples": n_total,
        "n_samples_requested": n_req,
        "seed": seed,
        "device": str(dev),
        "device_requested": device_requested,
        "batch_size": first_batch,
        "batch_size_final": b,
        "tiling": {
            "patch_size": list(plan.patch_size),
            "overlap": overlap,
            "n_tiles": plan.n_tiles,
            "blend": "gaussian" if plan.tiled else "none",
        },
        "slice_by_slice": slice_mode,
        "normalization": norm,
        "scale": list(scale),
        "card_spacing": list(card_spacing) if card_spacing is not None else None,
        "resampled": False,
        "versions": package_versions(),
        "input_signature": signature,
        "input_shape": list(np.shape(image)),
        "input_dtype": str(np.asarray(arr).dtype),
        "timings": {key: round(val, 4) for key, val in timings.items()},
        "warnings": notes,
        "domain": domain,
    }
    return PredictionResult(
        samples=samples,
        maps=maps,
        method=method.name,
        source=source,
        n_samples=n_total,
        meanings=meanings,
        class_names=list(getattr(method, "class_names", [str(i) for i in range(k)])),
        scale=scale,
        input_signature=signature,
        provenance=provenance,
    )


def _install_cancel_hooks(method: Any, check_cancel: Callable[[], None]) -> list:
    """Check ``cancel`` before every module of the method's network runs.

    One forward of a large batch can take seconds on a CPU; forward pre-hooks make a cancel land
    within one layer (a few ms) instead of at the end of the batch, without changing the batch
    (which would change the samples). Methods without a ``network`` module get no hooks.
    """
    network = getattr(method, "network", None)
    if network is None or not hasattr(network, "modules"):
        return []

    def hook(module: Any, args: Any) -> None:
        check_cancel()

    return [m.register_forward_pre_hook(hook) for m in network.modules()]


def _argmax_into(probs: np.ndarray, out: np.ndarray) -> None:
    """Write the argmax over axis 1 of ``probs`` (b, K, *S) into ``out`` (b, *S).

    A loop over classes with a strict ``>``: ties go to the lower class (as ``np.argmax``), so
    an even split stays background. ~20x faster than ``torch.argmax(dim=1)`` on CPU (0.016 vs
    0.31 s for 16 x 2 x 256²) and 2x faster than ``np.argmax``.
    """
    best = probs[:, 0].copy()
    out[...] = 0
    for k in range(1, probs.shape[1]):
        pk = probs[:, k]
        higher = pk > best
        out[higher] = k
        np.maximum(best, pk, out=best)


def _balanced(batch: int, n: int) -> int:
    """Largest batch <= ``batch`` that splits ``n`` samples into equal-ish batches (16 = 8 + 8,
    not 15 + 1: the same number of passes with less memory and no tiny last pass)."""
    n_batches = -(-n // max(batch, 1))
    return -(-n // n_batches)


def _run_batch(
    method: Any,
    x_full: Any,
    plan: TilePlan,
    buf: Any,
    bj: int,
    batch_seed: int,
    dev: Any,
    check_cancel: Callable[[], None],
    *,
    done: int,
    n_total: int,
) -> Generator[Progress, None, None]:
    """Blend every window of one sample batch into ``buf``; yield after each window but the last."""
    import torch

    n_windows = len(plan.windows)
    k = buf.shape[1]
    for w_i, window in enumerate(plan.windows):
        check_cancel()
        x = x_full[window.source].unsqueeze(0).to(dev)
        generator = torch.Generator(device="cpu").manual_seed(batch_seed)
        with torch.inference_mode():
            out = method.sample(x, bj, generator=generator)
        expected = (bj, k, *x.shape[2:])
        if tuple(out.shape) != expected:
            raise ValueError(
                f"method: {method.name}.sample returned shape {tuple(out.shape)}, "
                f"expected {expected}"
            )
        probs = out.detach().to("cpu", torch.float32)
        if plan.tiled:
            buf[window.target] += probs * plan.importance
        else:
            buf[window.target] = probs
        del out, probs, x
        if w_i + 1 < n_windows:
            yield Progress(
                "sample",
                done,
                n_total,
                w_i + 1,
                n_windows,
                (done + bj * (w_i + 1) / n_windows) / n_total,
                f"samples {done + 1}-{done + bj} of {n_total}: tile {w_i + 1}/{n_windows}",
            )
