"""The streaming path of :func:`napari_probseg.engine.predict`: slabs, strips, carries.

The tile plan is walked one *slab* at a time (the tiles that share their span along the first
spatial axis, or one plane in slice-by-slice mode) and, in a volume, each slab one *strip* at a
time (the slab's tiles that also share their span along the second axis). For every sample
batch a strip's tiles are blended (``engine/_windows.py``) into a ``(b, K, P0, P1, X)`` buffer
and the voxels no later tile touches are finalised at once: uncertainty maps of the region
(all N samples), uint8 argmax labels, written into the output arrays (numpy, or zarr on disk).
Blended rows that later tiles still add to are *carried*: the strip's last columns to the next
strip (``(N, K, P0, O1, X)``, in memory) and the slab's last rows to the next slab
(:class:`~napari_probseg.engine._stream.RowCarry`, ``(N, K, O0, Y, X)``, on disk beside the
output store when there is one). Hypothesis ``i`` is the same in every tile and batch
(``Method.sample(..., first_index=i)``), so the result equals the whole-image path's up to float
rounding of the blend sums.

A network body shared by the hypotheses (SSN, prob. U-Net, Laplace; ``Method.body``) runs once
per tile whatever N: with every sample in one batch because the strip buffer is what makes that
batch fit (``N*K*P0*P1*X`` floats instead of ``N*K*P0*Y*X`` for a whole slab), and with several
batches because the strip's bodies are kept between them (``engine/_windows.BodyCache``, about
``(R + 2) * K`` floats per voxel of the strip's tiles for an SSN of rank R).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import replace
from typing import Any

import numpy as np

from napari_probseg.engine._device import (
    ONE_SAMPLE_OUT_OF_MEMORY,
    after_out_of_memory,
    is_out_of_memory,
)
from napari_probseg.engine._normalize import normalize
from napari_probseg.engine._stream import (
    LazyImage,
    RowCarry,
    frozen_normalization,
    large_blocks_from_the_system,
    read_rows,
    release_freed_memory,
)
from napari_probseg.engine._tiling import Slab, TilePlan, group_windows, pad_image, slabs
from napari_probseg.engine._types import Progress
from napari_probseg.engine._windows import (
    BodyCache,
    accepts_first_index,
    argmax_into,
    batch_seed,
    blend_windows,
    install_cancel_hooks,
)

#: Most rows of the first axis finalised at a time (the accumulator's float64 temporaries).
FINAL_CHUNK_ROWS = 8
#: Most probabilities (samples x classes x voxels) finalised at a time.
FINAL_CHUNK_VALUES = 1 << 20


def strip_plan(plan: TilePlan, spatial_dims: int) -> bool:
    """Whether slabs of ``plan`` are split into strips (tiled volumes run by a 3D model)."""
    n_lead = len(plan.padded_shape) - int(spatial_dims)
    return n_lead == 0 and len(plan.padded_shape) == 3 and plan.tiled


def strips_of(slab: Slab, plan: TilePlan, split: bool) -> list[Slab]:
    """The strips of ``slab`` (along the second axis), or the whole slab as one strip."""
    length = int(plan.padded_shape[1])
    if split:
        return group_windows(slab.windows, axis=1, length=length)
    return [Slab(lo=0, final=length, hi=length, windows=slab.windows)]


def geometry(plan: TilePlan, spatial_dims: int) -> dict:
    """Sizes of the streaming buffers (voxels per sample and class), for the memory estimate:
    ``buffer`` (a strip), ``row_carry`` (slab to slab), ``col_carry`` (strip to strip),
    ``final`` (the region one strip finalises) and ``slab_input`` (a slab's input rows); and
    ``strip_windows``, the most windows of a strip (the bodies kept between its batches)."""
    split = strip_plan(plan, spatial_dims)
    padded = tuple(plan.padded_shape)
    rest = int(np.prod(padded[2:])) if len(padded) > 2 else 1
    plane = int(np.prod(padded[1:]))
    out = dict(buffer=0, row_carry=0, col_carry=0, final=0, slab_input=0, strip_windows=0)
    for slab in slabs(plan):
        rows = slab.hi - slab.lo
        out["row_carry"] = max(out["row_carry"], (slab.hi - slab.final) * plane)
        out["slab_input"] = max(out["slab_input"], rows * plane)
        for strip in strips_of(slab, plan, split):
            cols = strip.hi - strip.lo
            out["buffer"] = max(out["buffer"], rows * cols * rest)
            out["strip_windows"] = max(out["strip_windows"], len(strip.windows))
            out["col_carry"] = max(out["col_carry"], rows * (strip.hi - strip.final) * rest)
            out["final"] = max(
                out["final"], (slab.final - slab.lo) * (strip.final - strip.lo) * rest
            )
    return out


def _shift(window: Any, lo: int, col_lo: int) -> Any:
    """``window`` moved into a strip's buffer: first spatial index ``-lo`` (source and target),
    second ``-col_lo`` (target only: the source is the slab's full-width input)."""

    def shift(index: tuple, axis: int, by: int) -> tuple:
        first = index[axis]
        if isinstance(first, (int, np.integer)):
            moved: Any = int(first) - by
        else:
            moved = slice(first.start - by, first.stop - by)
        return (*index[:axis], moved, *index[axis + 1 :])

    target = shift(shift(window.target, 2, lo), 3, col_lo)
    return replace(window, source=shift(window.source, 1, lo), target=target)


def _normalize_rows(block: np.ndarray, spec: dict, rows: int = 8) -> np.ndarray:
    """Apply a pointwise normalization to ``block`` (C, n, ...) a few rows at a time (the
    normalization works in float64; this keeps that copy to ``rows`` rows)."""
    out = np.empty(block.shape, np.float32)
    for a in range(0, block.shape[1], rows):
        out[:, a : a + rows] = normalize(block[:, a : a + rows], spec)
    return out


def _region_maps(k: int, shape: tuple[int, ...]) -> dict:
    """float32 maps of one finalised region, filled chunk by chunk, written at once."""
    out = {name: np.empty((k, *shape), np.float32) for name in ("mean_probs", "variance")}
    for name in ("predictive_entropy", "expected_entropy", "mutual_information"):
        out[name] = np.empty(shape, np.float32)
    return out


def _fill_maps(region_maps: dict, maps: Any, rows: slice) -> np.ndarray:
    """Copy a chunk's maps into ``rows`` of the region's maps; return its per-sample volumes."""
    for name, dst in region_maps.items():
        if name in ("mean_probs", "variance"):
            dst[:, rows] = getattr(maps, name)
        elif not name.startswith("_"):
            dst[rows] = getattr(maps, name)
    region_maps.setdefault("_foreground_classes", tuple(maps.foreground_classes))
    region_maps.setdefault("_units", maps.units)
    return np.asarray(maps.volumes, np.float64)


def _write_maps(outputs: dict, region_maps: dict, region: tuple) -> None:
    """Write a region's maps into ``outputs`` (numpy or zarr arrays)."""
    for name in ("mean_probs", "variance"):
        outputs[name][(slice(None), *region)] = region_maps[name]
    for name in ("predictive_entropy", "expected_entropy", "mutual_information"):
        outputs[name][region] = region_maps[name]
    if "_foreground_classes" in region_maps:
        outputs.setdefault("foreground_classes", region_maps["_foreground_classes"])
        outputs.setdefault("units", region_maps["_units"])


def run_slabs(
    *,
    method: Any,
    arr: Any,
    norm_frozen: dict,
    plan: TilePlan,
    n_total: int,
    batch: int,
    seed: int,
    invariant: bool,
    dev: Any,
    check_cancel: Callable[[], None],
    outputs: dict,
    warn: Callable[..., None],
    scratch: Any = None,
    bodies: BodyCache | None = None,
    cpu_batch: Callable[[], int] = lambda: 1,
) -> Generator[Progress, None, tuple[Any, int, Any]]:
    """Slab by slab, strip by strip: blend, finalise and write; return (volumes, batch, device).

    ``outputs`` holds the arrays to fill (numpy or zarr): ``mean_probs``, ``variance`` (K, *S),
    ``predictive_entropy``, ``expected_entropy``, ``mutual_information`` (*S) and ``samples``
    (N, *S) or None. ``scratch``: a folder for the slab-to-slab carry (None: in memory).
    ``bodies``: keeps each strip's network bodies between its sample batches (None: each batch
    runs them). Out of memory: ``engine._device.after_out_of_memory`` (``cpu_batch``: the batch
    after falling back from an accelerator to the CPU; the device returned is the last used).
    Progress events count (window, batch) passes: ``tiles_done`` of ``tiles_total`` windows of
    the plan, ``samples_done`` = N once the last strip is complete.
    """
    import torch

    from napari_probseg.core.uncertainty import UncertaintyAccumulator

    spatial = tuple(arr.shape[1:])
    k = int(method.n_classes)
    padded = tuple(plan.padded_shape)
    n_lead = len(padded) - int(method.spatial_dims)
    split = strip_plan(plan, int(method.spatial_dims))
    groups = slabs(plan)
    n_windows = len(plan.windows)
    volumes = np.zeros(n_total, np.float64)
    carry_max = max(g.hi - g.final for g in groups)
    row_carry = (
        RowCarry(n_total, k, carry_max, padded[1:], directory=scratch) if carry_max else None
    )
    carried = 0  # rows the previous slab left in row_carry
    passes = [0]  # (window, batch) passes so far
    b = batch

    def acc() -> Any:
        return UncertaintyAccumulator(k, spatial_dims=len(spatial))

    large_blocks_from_the_system()  # tile tensors mapped and unmapped whole: no fragmentation

    try:
        for gi, slab in enumerate(groups):
            check_cancel()
            rows = slab.hi - slab.lo
            # the slab's input rows, normalised and padded like the whole image would be
            img_hi = min(slab.hi, spatial[0])
            block = read_rows(arr, slab.lo, img_hi)
            x_block = pad_image(_normalize_rows(block, norm_frozen), (rows, *padded[1:]))
            x_block = torch.from_numpy(np.ascontiguousarray(x_block))
            del block
            n_final = min(slab.final, spatial[0]) - slab.lo  # image rows this slab finalises
            carry_out = slab.hi - slab.final
            strips = strips_of(slab, plan, split)
            # blended columns one strip hands to the next, (N, K, rows, cols, *rest); in place
            col_max = max(st.hi - st.final for st in strips)
            col_carry = (
                np.empty((n_total, k, rows, col_max, *padded[2:]), np.float32) if col_max else None
            )
            col_in = 0
            for si, strip in enumerate(strips):
                cols = strip.hi - strip.lo
                n_cols = strip.final - strip.lo  # padded columns this strip completes
                img_cols = max(0, min(strip.final, spatial[1]) - strip.lo)  # of them in the image
                col_out = strip.hi - strip.final
                local = [_shift(w, slab.lo, strip.lo) for w in strip.windows]
                region = (
                    slice(slab.lo, slab.lo + n_final),
                    slice(strip.lo, strip.lo + img_cols),
                )
                finalise = n_final > 0 and img_cols > 0
                per_row = max(1, img_cols * int(np.prod(spatial[2:])))  # voxels of a final row
                ws = None
                if finalise and plan.tiled:
                    inner = region[n_lead:]  # over the model's axes (a plane in slice mode)
                    ws = plan.weight_sum_region(
                        (*inner, *(slice(None),) * (int(method.spatial_dims) - len(inner)))
                    )
                # rows finalised at a time: their float64 temporaries stay ~8 MB per sample
                step = max(1, min(FINAL_CHUNK_ROWS, FINAL_CHUNK_VALUES // (n_total * k * per_row)))
                chunks = range(0, n_final, step) if finalise else range(0)
                accs = [acc() for _ in chunks]  # for batches of fewer than N samples
                maps = _region_maps(k, (n_final, img_cols, *spatial[2:])) if finalise else None
                done = 0
                if bodies is not None:
                    bodies.clear()  # a new strip: new windows
                while done < n_total:
                    bj = min(b, n_total - done)
                    buf = torch.zeros((bj, k, rows, cols, *padded[2:]), dtype=torch.float32)
                    bnp = buf.numpy()
                    if col_in:
                        bnp[:, :, :, :col_in] += col_carry[done : done + bj, :, :, :col_in]
                    if row_carry is not None and carried:
                        row_carry.add_into(bnp, done, done + bj, strip.lo, strip.final, carried)
                    label = (
                        f"slab {gi + 1}/{len(groups)}"
                        + (f", strip {si + 1}/{len(strips)}" if split else "")
                        + f": samples {done + 1}-{done + bj} of {n_total}"
                    )
                    last = gi + 1 == len(groups) and si + 1 == len(strips) and done + bj == n_total
                    on_window = _pass_event(
                        passes,
                        n_windows=n_windows,
                        total=n_windows * -(-n_total // b),
                        samples_done=n_total if last else 0,
                        n_total=n_total,
                        label=label,
                        n_local=len(local),
                    )
                    try:
                        yield from blend_windows(
                            method,
                            x_block,
                            local,
                            plan,
                            buf,
                            bj=bj,
                            seed=seed if invariant else batch_seed(seed, done),
                            first_index=done if invariant else None,
                            dev=dev,
                            check_cancel=check_cancel,
                            on_window=on_window,
                            bodies=bodies if bj < n_total else None,  # kept only to be reused
                        )
                    except Exception as exc:
                        if not is_out_of_memory(exc):
                            raise
                        buf = bnp = None
                        b, to = after_out_of_memory(
                            exc, batch=bj, device=dev, cpu_batch=cpu_batch, warn=warn
                        )
                        del exc
                        if to != dev:
                            dev, method = to, method.to(to)
                            if bodies is not None:
                                bodies.clear()  # computed on the other device
                        continue
                    if col_out > 0:  # in place: this batch's incoming columns were added above
                        col_carry[done : done + bj, :, :, :col_out] = bnp[:, :, :, cols - col_out :]
                    if carry_out > 0:
                        row_carry.store(
                            bnp[:, :, rows - carry_out :, :n_cols], done, done + bj, strip.lo
                        )
                    if finalise:
                        fin = buf[:, :, :n_final, :img_cols]
                        if ws is not None:
                            fin /= ws  # in place: the carried rows and columns were copied out
                        fin = fin[(Ellipsis, *(slice(0, s) for s in spatial[2:]))]
                        probs_np = fin.numpy()  # a view: no copy of the strip's samples
                        keep = outputs.get("samples") is not None
                        labels = (
                            np.empty((bj, *probs_np.shape[2:]), outputs["samples"].dtype)
                            if keep
                            else None
                        )
                        for c, a in enumerate(chunks):
                            rows_c = slice(a, a + step)
                            if bj == n_total:  # every sample at once: the chunk's maps now
                                part = acc()
                                part.update(probs_np[:, :, rows_c])
                                volumes += _fill_maps(maps, part.result(), rows_c)
                            else:
                                accs[c].update(probs_np[:, :, rows_c])
                            if keep:
                                argmax_into(probs_np[:, :, rows_c], labels[:, rows_c])
                        if keep:
                            outputs["samples"][(slice(done, done + bj), *region)] = labels
                        del fin, probs_np, labels
                    buf = bnp = None
                    done += bj
                for c, a in enumerate(chunks):  # batches of fewer than N samples: now complete
                    if accs[c].n_samples:
                        volumes += _fill_maps(maps, accs[c].result(), slice(a, a + step))
                    accs[c] = None  # free each chunk's sums once used
                if finalise:
                    _write_maps(outputs, maps, region)  # one write per strip and map
                if bodies is not None:
                    bodies.clear()
                col_in = col_out
                release_freed_memory()  # the strip's buffers, back to the system
            carried = carry_out
            del x_block
    finally:
        if row_carry is not None:
            row_carry.close()
    return volumes, b, dev


def _pass_event(
    passes: list,
    *,
    n_windows: int,
    total: int,
    samples_done: int,
    n_total: int,
    label: str,
    n_local: int,
) -> Callable[[int], Progress]:
    """The event after each window pass of a strip's batch (``passes[0]`` counts them all)."""

    def event(wi: int) -> Progress:
        passes[0] += 1
        return Progress(
            "sample",
            samples_done,
            n_total,
            min(passes[0], n_windows),
            n_windows,
            min(0.999, passes[0] / max(total, 1)),
            f"{label}, tile {wi + 1}/{n_local}",
        )

    return event


def run_slab_mode(
    *,
    method: Any,
    arr: Any,
    norm: dict,
    plan: TilePlan,
    n_total: int,
    batch: int,
    seed: int,
    dev: Any,
    check_cancel: Callable[[], None],
    has_cancel: bool,
    keep_samples: bool,
    output: Any,
    label_dtype: Any,
    warn: Callable[..., None],
    map_dtype: str = "float32",
    bodies: BodyCache | None = None,
    cpu_batch: Callable[[], int] = lambda: 1,
) -> Generator[Progress, None, tuple]:
    """Allocate the outputs (numpy, or a zarr store at ``output``), run the slabs, build maps;
    return ``(maps, samples, batch, output_path, device)``."""
    from napari_probseg.core.uncertainty import UncertaintyMaps
    from napari_probseg.engine._io import finish_stream_store, open_stream_store

    spatial = tuple(arr.shape[1:])
    k = int(method.n_classes)
    frozen = frozen_normalization(arr, norm)
    if frozen is None:
        if isinstance(arr, LazyImage):
            raise ValueError(
                f"normalization: {norm.get('kind')!r} cannot be applied slab by slab to a "
                "zarr/dask image; load it into memory first"
            )
        arr, frozen = normalize(arr, norm), {"kind": "none"}
    tmp = None
    if output is not None:
        tmp, outputs = open_stream_store(
            output,
            n_samples=n_total,
            n_classes=k,
            spatial=spatial,
            keep_samples=keep_samples,
            label_dtype=label_dtype,
            map_dtype=map_dtype,
        )
    else:
        outputs = {
            "mean_probs": np.zeros((k, *spatial), np.float32),
            "variance": np.zeros((k, *spatial), np.float32),
            "predictive_entropy": np.zeros(spatial, np.float32),
            "expected_entropy": np.zeros(spatial, np.float32),
            "mutual_information": np.zeros(spatial, np.float32),
            "samples": np.zeros((n_total, *spatial), label_dtype) if keep_samples else None,
        }
    hooks = install_cancel_hooks(method, check_cancel) if has_cancel else []
    try:
        volumes, b, dev = yield from run_slabs(
            method=method,
            arr=arr,
            norm_frozen=frozen,
            plan=plan,
            n_total=n_total,
            batch=batch,
            seed=seed,
            invariant=accepts_first_index(method),
            dev=dev,
            check_cancel=check_cancel,
            outputs=outputs,
            warn=warn,
            scratch=tmp,
            bodies=bodies,
            cpu_batch=cpu_batch,
        )
    except Exception as exc:
        if tmp is not None:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, MemoryError) and str(exc) == ONE_SAMPLE_OUT_OF_MEMORY:
            raise
        if is_out_of_memory(exc):  # outside a sample pass (a strip's buffers, a carry)
            raise MemoryError(
                "out of memory on the CPU while streaming slab by slab; use a smaller patch "
                "size or fewer samples"
            ) from None
        raise
    finally:
        for hook in hooks:
            hook.remove()
    n_windows = len(plan.windows)
    yield Progress("finalize", n_total, n_total, n_windows, n_windows, 1.0, "writing the maps")
    fg = tuple(outputs.get("foreground_classes", tuple(range(1, k))))
    units = outputs.get("units", "nats")
    output_path = None
    if tmp is not None:
        outputs, output_path = finish_stream_store(tmp, output, volumes=volumes)
    maps = UncertaintyMaps(
        mean_probs=outputs["mean_probs"],
        predictive_entropy=outputs["predictive_entropy"],
        expected_entropy=outputs["expected_entropy"],
        mutual_information=outputs["mutual_information"],
        variance=outputs["variance"],
        volumes=volumes,
        n_samples=n_total,
        units=units,
        foreground_classes=fg,
    )
    return maps, outputs.get("samples"), b, output_path, dev
