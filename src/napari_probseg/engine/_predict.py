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
    after_out_of_memory,
    auto_batch_size,
    bytes_per_sample,
    is_out_of_memory,
    memory_budget,
    resolve_device,
)
from napari_probseg.engine._domain import check_domain
from napari_probseg.engine._normalize import normalize, parse_normalization
from napari_probseg.engine._provenance import image_signature, package_versions, utc_now
from napari_probseg.engine._slabs import geometry, run_slab_mode
from napari_probseg.engine._stream import (
    LazyImage,
    MemoryEstimate,
    available_memory,
    estimate_memory,
    is_lazy_array,
    signature_of,
)
from napari_probseg.engine._tiling import TilePlan, crop, pad_image, plan_tiles
from napari_probseg.engine._types import Cancelled, PredictionResult, Progress
from napari_probseg.engine._windows import (
    BodyCache,
    accepts_first_index,
    argmax_into,
    balanced,
    batch_seed,
    blend_windows,
    install_cancel_hooks,
    keeps_bodies,
)

#: Relative difference between the image spacing and the card's above which a warning is given.
SPACING_RTOL = 0.05
#: Most hypotheses one prediction may draw: time, the carried overlap rows and the uint8
#: samples all grow linearly with N, and beyond ~1000 the Monte-Carlo error of the maps no
#: longer shrinks visibly (it falls as 1/sqrt(N)). ``predict`` refuses more before computing.
MAX_SAMPLES = 1024


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
    output: Any = None,
    streaming: bool | None = None,
    map_dtype: str = "float32",
) -> Generator[Progress, None, PredictionResult]:
    """Sample segmentation hypotheses of an image and stream them into uncertainty maps.

    Returns a generator that yields :class:`Progress` events between sample batches and tiles and
    returns a :class:`PredictionResult` (``result = yield from predict(...)``, or use
    :func:`run_prediction`). Cheap argument checks run at call time; the work runs as the
    generator is consumed. The same generator serves the CLI, the tests and the napari worker.

    Loop order (whole-image path): sample batches outer, windows (tiles, slices) inner. A CPU
    ``torch.Generator`` is re-seeded with ``seed`` for every window and batch, and
    ``method.sample`` gets the global index of the batch's first hypothesis (``first_index``), so
    hypothesis ``i`` is the same in every tile and whatever the batch size or memory budget (see
    the Method interface). The batch's windows are blended (edge-ramp weights, see
    engine/_tiling.py) into one ``(b, K, *spatial)`` float32 buffer on the CPU, which updates a
    :class:`~napari_probseg.core.uncertainty.UncertaintyAccumulator` and is stored as ``uint8``
    argmax labels. Peak memory: ``b*K*V`` float32 + ``(2K+1)*V`` float64 sums + ``N*V`` bytes.

    Before computing, the memory of that path is estimated (image size, K, N, tile plan, dtype)
    and compared with what the process may still allocate; when it does not fit, the engine
    streams slab by slab instead (``engine/_slabs.py``: memory of one strip of tiles of a slab,
    outputs optionally on disk via ``output``), and when even that does not fit it raises
    ``MemoryError`` at once, saying how much is needed and how much is available. Methods whose
    network body is shared by the hypotheses (``Method.body``: SSN, prob. U-Net, Laplace) run it
    once per tile whatever N: within a batch it serves all the batch's hypotheses, and when N
    takes several batches each tile's body is kept between them (``engine/_windows.BodyCache``,
    given at most half the batch budget; when it does not fit, the result's warnings say that the
    body ran once per tile and batch).

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
        Samples N to draw, 1 to :data:`MAX_SAMPLES` (forced to 1 for deterministic methods;
        the change is recorded).
    seed : int
        Seed (>= 0). The same seed and device give the same samples whatever the batch size or
        memory budget.
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
    output : str or path-like, optional
        A zarr directory to create (the :func:`save_result` layout): maps and uint8 samples are
        written into it slab by slab and ``result.maps`` / ``result.samples`` are zarr arrays
        read from it (implies ``streaming``). Must not exist.
    map_dtype : {"float32", "float16"}
        Storage dtype of the maps in the ``output`` store (in-memory maps are float32).
    streaming : bool, optional
        Walk the image slab by slab (``engine/_slabs.py``: memory of a strip, not of the image).
        None (default): only when the whole-image path would not fit in the available memory
        (estimated before computing), the input is a zarr/dask array, or ``output`` is given.
        The samples are the same either way (up to float rounding of the maps).

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
        Out of memory on the CPU even with one sample per batch, or (before any work) the
        estimated memory exceeds what is available even slab by slab; the message gives both.
    """
    check_cancel = cancel_checker(cancel)
    n_req = check_samples(n_samples)
    if getattr(method, "whole_image", False):  # nnU-Net, MONAI bundle: models/protocol.py
        from napari_probseg.engine._external import predict_whole_image

        return predict_whole_image(image, method, n_samples=n_samples, seed=seed, device=device,
                                   scale=scale, check_cancel=check_cancel, keep_samples=keep_samples)  # fmt: skip
    if map_dtype not in ("float32", "float16"):
        raise ValueError(f"map_dtype: expected 'float32' or 'float16', got {map_dtype!r}")
    if output is not None:
        from pathlib import Path

        if Path(output).exists():
            raise ValueError(f"output: {output} exists; give a new path")
        if streaming is False:
            raise ValueError("streaming: an output store streams; pass streaming=None or True")
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
        output=output,
        streaming=streaming,
        map_dtype=map_dtype,
    )


def check_samples(n_samples: Any) -> int:
    """Return ``n_samples`` as an int in 1..:data:`MAX_SAMPLES`, else raise ``ValueError``."""
    n = check_positive_int(n_samples, "n_samples")
    if n > MAX_SAMPLES:
        raise ValueError(
            f"n_samples: at most {MAX_SAMPLES} samples per prediction, got {n} (time and "
            "memory grow linearly with N; the maps' Monte-Carlo error falls only as 1/sqrt(N))"
        )
    return n


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
    """Return the image as (C, *spatial) (a LazyImage for zarr/dask) and whether it runs slice by
    slice."""
    if type(image).__module__.split(".")[0] == "torch":
        image = image.detach().cpu().numpy()
    lazy = is_lazy_array(image)
    arr = image if lazy else np.asarray(image)
    if arr.dtype == bool and not lazy:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.number)) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"image: expected a real numeric array, got dtype {arr.dtype}")
    if int(np.prod(arr.shape)) == 0:
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
        chw, volume = (LazyImage(arr, add_channel=True) if lazy else arr[None]), False
    elif nd == sd + 1 and shape[0] == c and (c > 1 or sd == 3 or shape[0] == 1):
        chw, volume = (LazyImage(arr, add_channel=False) if lazy else arr), False
    elif sd == 2 and nd == 3 and c == 1:
        chw, volume = (LazyImage(arr, add_channel=True) if lazy else arr[None]), True
    elif sd == 2 and nd == 4 and shape[0] == c:
        chw, volume = (LazyImage(arr, add_channel=False) if lazy else arr), True
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
    if not lazy and not np.isfinite(chw).all():  # lazy images: checked slab by slab
        raise ValueError("image: contains NaN or Inf values")
    return chw, volume


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
    output: Any = None,
    streaming: bool | None = None,
    map_dtype: str = "float32",
) -> Generator[Progress, None, PredictionResult]:
    import torch

    from napari_probseg.core.uncertainty import UncertaintyAccumulator

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

    lazy = isinstance(arr, LazyImage)
    signature = signature_of(arr) if lazy else image_signature(image)
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
    domain = _domain_check(arr, norm, card, scale=scale if scale_given else None)
    notes.extend(domain["warnings"])
    method = method.to(dev)
    label_dtype = np.uint8 if k <= 256 else np.uint16
    stream = geometry(plan, int(method.spatial_dims))  # streaming buffer sizes (engine/_slabs.py)
    shared = bool(getattr(method, "shared_body", False))
    factor = float(getattr(method, "activation_factor", DEFAULT_ACTIVATION_FACTOR))
    tile_vox = int(np.prod(plan.patch_size))

    def activations(bb: int) -> float:
        # shared-body methods (SSN, prob. U-Net, Laplace, softmax) run the body once per batch
        return k * tile_vox * 4 * factor * (1 if shared else bb)

    # a shared body is kept between the sample batches of a group of windows (the whole image,
    # or one strip of a slab) when there are several batches: once per tile whatever N
    body_bytes = int(method.body_bytes(tuple(plan.patch_size))) if keeps_bodies(method) else 0

    def bodies_bytes(mode: str) -> float:
        return body_bytes * (len(plan.windows) if mode == "whole" else stream["strip_windows"])

    def estimate(mode: str, bb: int, keep_bodies: bool = False) -> MemoryEstimate:
        return estimate_memory(
            mode=mode,
            n_classes=k,
            n_samples=n_total,
            batch=bb,
            image_shape=spatial,
            padded_shape=tuple(plan.padded_shape),
            tile_voxels=tile_vox,
            input_bytes=float(np.prod(arr.shape)) * np.dtype(arr.dtype).itemsize,
            input_in_memory=not lazy,
            stream=stream,
            keep_samples=keep_samples,
            outputs_in_memory=output is None,
            activation_bytes=activations(bb),
            body_cache_bytes=bodies_bytes(mode) if keep_bodies else 0.0,
        )

    available = available_memory()
    mode = "slab" if (streaming or output is not None or lazy) else "whole"
    if streaming is None and mode == "whole" and estimate("whole", 1).additional > available:
        mode = "slab"
        warn(
            f"memory: the whole-image path needs {estimate('whole', 1).describe()} but "
            f"{available / 2**30:.2f} GiB are available; streaming slab by slab instead"
        )
    if estimate(mode, 1).additional > available:
        raise MemoryError(
            f"image: predicting {n_total} sample(s) of a {'x'.join(map(str, spatial))} image "
            f"needs {estimate(mode, 1).describe()} but only {available / 2**30:.2f} GiB more are "
            "available; write to an output store (output=..., CLI --out streams to disk), "
            "pass keep_samples=False, or use fewer samples or a smaller patch"
        )
    batch_budget = budget or memory_budget(dev)
    on_cpu = getattr(dev, "type", "cpu") == "cpu"
    # the bodies are kept on the CPU and take at most half of its batch budget (the rest keeps
    # the batches large); on an accelerator they leave its batch budget alone
    host_budget = batch_budget if on_cpu else memory_budget(torch.device("cpu"))
    bodies_fit = 0 < bodies_bytes(mode) <= host_budget / 2

    def per_sample(mode: str) -> float:
        # the blend buffer of one sample: the whole image, or one strip of a slab
        buffer_voxels = int(np.prod(plan.padded_shape)) if mode == "whole" else stream["buffer"]
        return bytes_per_sample(
            k, tile_vox, buffer_voxels, activation_factor=8.0 if shared else factor
        )

    def fitted(bb: int, keep_bodies: bool) -> int:
        # halve the batch until the estimate fits what the process may still allocate
        while bb > 1 and estimate(mode, bb, keep_bodies).additional > available:
            bb = balanced(max(1, bb // 2), n_total)
        return bb

    def cpu_batch(mode: str) -> int:
        # the batch after one sample did not fit an accelerator
        cpu_budget = budget or memory_budget(torch.device("cpu"))
        bb = balanced(auto_batch_size(n_total, per_sample(mode), cpu_budget), n_total)
        return fitted(bb, bodies is not None)

    if batch_size is None:
        per = per_sample(mode)
        b = auto_batch_size(n_total, per, batch_budget)
        if b < n_total and bodies_fit and on_cpu:
            b = auto_batch_size(n_total, per, batch_budget - bodies_bytes(mode))
        b = balanced(b, n_total)
    else:
        b = min(batch_size, n_total)
    b = fitted(b, False)
    # several batches (from the start, or after fitting the memory): keep the bodies if they fit
    keep_bodies = b < n_total and bodies_fit
    if keep_bodies and estimate(mode, b, True).additional > available:
        with_bodies = fitted(b, True)
        keep_bodies = estimate(mode, with_bodies, True).additional <= available
        b = with_bodies if keep_bodies else b
    if b < n_total and body_bytes and not keep_bodies:
        warn(
            f"memory: the network bodies of a tile group ({bodies_bytes(mode) / 2**20:.0f} MiB) "
            f"do not fit beside the sample batches; the body runs once per tile and batch "
            f"({-(-n_total // b)} batches of {b})",
            emit=False,
        )
    bodies = BodyCache(bodies_bytes(mode)) if keep_bodies else None
    first_batch = b
    memory_info = {
        "mode": mode,
        "estimate_bytes": round(estimate(mode, b, keep_bodies).total),
        "additional_bytes": round(estimate(mode, b, keep_bodies).additional),
        "available_bytes": None if available == float("inf") else round(available),
        "body_cache_bytes": round(bodies_bytes(mode)) if keep_bodies else 0,
        "body_passes": None,  # bodies computed, when they are kept between batches
    }

    def finish(maps: Any, samples: Any, b: int, output_path: Any) -> PredictionResult:
        # the one call both paths end with (late binding: values as at the call)
        if bodies is not None:
            memory_info["body_passes"] = bodies.passes
        return _finish(
            image=image,
            arr=arr,
            method=method,
            card=card,
            plan=plan,
            norm=norm,
            maps=maps,
            samples=samples,
            n_total=n_total,
            n_req=n_req,
            seed=seed,
            dev=dev,
            device_requested=device_requested,
            first_batch=first_batch,
            b=b,
            overlap=overlap,
            scale=scale,
            card_spacing=card_spacing,
            slice_mode=slice_mode,
            signature=signature,
            timings=timings,
            t0=t0,
            notes=notes,
            memory_info=memory_info,
            output_path=output_path,
            domain=domain,
        )

    if mode == "slab":
        result = yield from run_slab_mode(
            method=method,
            arr=arr,
            norm=norm,
            plan=plan,
            n_total=n_total,
            batch=b,
            seed=seed,
            dev=dev,
            check_cancel=check_cancel,
            has_cancel=has_cancel,
            keep_samples=keep_samples,
            output=output,
            label_dtype=label_dtype,
            map_dtype=map_dtype,
            warn=warn,
            bodies=bodies,
            cpu_batch=lambda: cpu_batch(mode),
        )
        maps, samples, b, output_path, dev = result
        timings["sample"] = time.perf_counter() - t0
        return finish(maps, samples, b, output_path)
    x_np = pad_image(normalize(arr, norm), plan.padded_shape)
    x_full = torch.from_numpy(np.ascontiguousarray(x_np))
    del x_np
    samples = np.empty((n_total, *spatial), label_dtype) if keep_samples else None
    acc = UncertaintyAccumulator(k, spatial_dims=len(spatial))
    timings["prepare"] = time.perf_counter() - t0
    check_cancel()

    t1 = time.perf_counter()
    n_windows = len(plan.windows)
    done = 0
    buffer = None
    hooks = install_cancel_hooks(method, check_cancel) if has_cancel else []
    invariant = accepts_first_index(method)
    if not invariant:
        warn(
            f"method: {method.name}.sample takes no first_index; its samples depend on the "
            "batch size",
            emit=False,
        )
    try:
        while done < n_total:
            bj = min(b, n_total - done)
            if buffer is None or buffer.shape[0] < bj:
                buffer = torch.zeros((bj, k, *plan.padded_shape), dtype=torch.float32)
            buf = buffer[:bj]
            buf.zero_()
            try:
                yield from blend_windows(
                    method,
                    x_full,
                    plan.windows,
                    plan,
                    buf,
                    bj=bj,
                    seed=seed if invariant else batch_seed(seed, done),
                    first_index=done if invariant else None,
                    dev=dev,
                    check_cancel=check_cancel,
                    on_window=_window_progress(done, bj, n_total, n_windows),
                    bodies=bodies if bj < n_total else None,  # kept only to be reused
                )
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                b, to = after_out_of_memory(
                    exc, batch=bj, device=dev, cpu_batch=lambda: cpu_batch(mode), warn=warn
                )
                del exc
                if to != dev:
                    dev, method = to, method.to(to)
                    if bodies is not None:
                        bodies.clear()  # computed on the other device
                buffer = None
                continue
            if plan.tiled:
                buf /= plan.weight_sum
            probs = crop(buf, spatial).numpy()
            acc.update(probs)
            if samples is not None:
                argmax_into(probs, samples[done : done + bj])
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
        if bodies is not None:
            bodies.clear()  # before the maps are computed
    buffer = buf = None
    timings["sample"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    yield Progress("finalize", n_total, n_total, n_windows, n_windows, 1.0, "computing the maps")
    check_cancel()
    maps = acc.result()
    timings["finalize"] = time.perf_counter() - t2
    return finish(maps, samples, b, None)


def _domain_check(arr: Any, norm: dict, card: Any, *, scale: Any) -> dict:
    """The input check of ``engine._domain`` on a strided subsample (at most ~2**21 voxels), so
    that it costs no copy of a large (or lazy, zarr-backed) volume."""
    spatial = tuple(arr.shape[1:])
    step = max(1, int(np.ceil((float(np.prod(spatial)) / 2**21) ** (1 / max(len(spatial), 1)))))
    try:
        sub = np.asarray(arr[(slice(None), *(slice(None, None, step) for _ in spatial))])
    except (TypeError, IndexError, ValueError):
        sub = None
    if sub is None or sub.size == 0:
        return check_domain(np.zeros((1,) * (1 + len(spatial)), np.float32), None, scale=scale)
    return check_domain(normalize(sub, norm), card, scale=scale)


def _finish(
    *,
    domain: dict,
    image,
    arr,
    method,
    card,
    plan,
    norm,
    maps,
    samples,
    n_total,
    n_req,
    seed,
    dev,
    device_requested,
    first_batch,
    b,
    overlap,
    scale,
    card_spacing,
    slice_mode,
    signature,
    timings,
    t0,
    notes,
    memory_info,
    output_path,
) -> PredictionResult:
    """Build the :class:`PredictionResult` (provenance) of either path."""
    from napari_probseg.core.uncertainty import term_meanings

    k = int(method.n_classes)
    source = tuple(getattr(method, "source", ("none",)))
    meanings = term_meanings(source)
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
            "blend": "edge-ramp" if plan.tiled else "none",
        },
        "memory": memory_info,
        "slice_by_slice": slice_mode,
        "normalization": norm,
        "scale": list(scale),
        "card_spacing": list(card_spacing) if card_spacing is not None else None,
        "resampled": False,
        "versions": package_versions(),
        "input_signature": signature,
        "input_shape": list(np.shape(image)),
        "input_dtype": str(np.dtype(arr.dtype)),
        "timings": {key: round(val, 4) for key, val in timings.items()},
        "warnings": notes,
        "domain": domain,
    }
    if output_path is not None:
        provenance["output"] = str(output_path)
    result = PredictionResult(
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
    if output_path is not None:
        from napari_probseg.engine._io import write_result_attrs

        write_result_attrs(result, output_path)
    return result


def _window_progress(done: int, bj: int, n_total: int, n_windows: int) -> Callable:
    """The whole-image path's event after every window of a batch but the last."""

    def event(w_i: int) -> Progress | None:
        if w_i + 1 >= n_windows:
            return None
        return Progress(
            "sample",
            done,
            n_total,
            w_i + 1,
            n_windows,
            (done + bj * (w_i + 1) / n_windows) / n_total,
            f"samples {done + 1}-{done + bj} of {n_total}: tile {w_i + 1}/{n_windows}",
        )

    return event
