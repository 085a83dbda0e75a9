"""Streaming prediction of big volumes: lazy inputs, memory estimates, the slab-to-slab carry.

The whole-image path of :func:`napari_probseg.engine.predict` blends each sample batch into one
``(b, K, *image)`` buffer and keeps ``(2K + 1)`` float64 sums per voxel for the whole image (about
24x the input of a CT volume). The streaming path (``engine/_slabs.py``) walks the tile plan slab
by slab and, in a volume, strip by strip, finalising the voxels no later tile touches and
carrying the rest (:class:`RowCarry` between slabs, on disk beside an output store). Inputs that
are zarr or dask arrays are read slab by slab here (:class:`LazyImage`), never whole; their
normalization statistics are computed slab by slab too (:func:`frozen_normalization`).

Memory of the streaming path (:func:`estimate_memory`): the slab's input, ``b*K*P0*P1*X``
float32 strip buffer, ``N*K*P0*O1*X`` float32 column carry, ``N*K*O0*Y*X`` float32 row carry
(none in memory when an output store is given), a strip's final region of maps and the network's
activations; the outputs live in the output store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Bytes torch and the rest of the process hold before any array (measured: ~350 MB RSS after
#: ``import torch`` and a model load on Linux/CPU).
PROCESS_BASELINE_BYTES = 400e6


def is_lazy_array(image: Any) -> bool:
    """True for zarr and dask arrays (read in slabs, never loaded whole)."""
    top = type(image).__module__.split(".")[0]
    return top in ("zarr", "dask") and hasattr(image, "shape") and hasattr(image, "dtype")


class LazyImage:
    """A channel-first view ``(C, *spatial)`` of a zarr/dask array, read block by block.

    Parameters
    ----------
    source : zarr or dask array
        The image, ``(*spatial)`` (``add_channel``) or ``(C, *spatial)``.
    add_channel : bool
        Prepend a channel axis of length 1.
    """

    def __init__(self, source: Any, *, add_channel: bool) -> None:
        self.source = source
        self.add_channel = bool(add_channel)
        shape = tuple(int(s) for s in source.shape)
        self.shape = (1, *shape) if add_channel else shape
        self.dtype = np.dtype(source.dtype)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape))

    def read_slab(self, start: int, stop: int) -> np.ndarray:
        """``(C, stop - start, *rest)``: rows of the first spatial axis, as a numpy array."""
        block = self.source[start:stop] if self.add_channel else self.source[:, start:stop]
        if hasattr(block, "compute"):  # dask
            block = block.compute()
        block = np.asarray(block)
        return block[None] if self.add_channel else block


def read_rows(arr: Any, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the first spatial axis of a ``(C, *spatial)`` array or LazyImage."""
    if isinstance(arr, LazyImage):
        return arr.read_slab(start, stop)
    return np.asarray(arr[:, start:stop])


def iter_slabs(arr: Any, rows: int = 16):
    """Yield ``(start, stop, block)`` over the first spatial axis of ``arr`` (C, *spatial)."""
    n = int(arr.shape[1])
    for a in range(0, n, rows):
        yield a, min(n, a + rows), read_rows(arr, a, min(n, a + rows))


def frozen_normalization(arr: Any, norm: dict) -> dict | None:
    """Return a pointwise normalization equal to ``norm`` on this image, or None.

    Image statistics (z-score without ``mean``/``std``, percentiles, min/max) are computed once,
    slab by slab (percentiles from up to 2**22 evenly strided voxels per channel on images
    larger than that), and written into an explicit ``zscore``/``window`` specification that
    :func:`napari_probseg.engine.normalize` applies to any block with the same result.
    None when ``norm`` has a kind not known here (the caller then normalises the whole image).
    """
    kind = norm.get("kind", "none")
    c = int(arr.shape[0])
    if kind == "none" or kind == "window":
        return dict(norm)
    if kind == "zscore" and norm.get("mean") is not None and norm.get("std") is not None:
        return dict(norm)
    if kind not in ("zscore", "minmax", "percentile"):
        return None
    if kind == "percentile":
        lo_q = float(norm.get("low", norm.get("lower", 1.0)))
        hi_q = float(norm.get("high", norm.get("upper", 99.0)))
        sample = _strided_sample(arr, 1 << 22)
        lo = [float(np.percentile(sample[i], lo_q)) for i in range(c)]
        hi = [float(np.percentile(sample[i], hi_q)) for i in range(c)]
        if norm.get("clip", False):
            return {"kind": "window", "window": [lo[0], hi[0]]} if c == 1 else None
        return {"kind": "zscore", "mean": lo, "std": [max(h - lo_, 1e-8) for lo_, h in zip(lo, hi)]}
    total = np.zeros(c)
    total2 = np.zeros(c)
    mins = np.full(c, np.inf)
    maxs = np.full(c, -np.inf)
    count = 0
    for _a, _b, block in iter_slabs(arr):
        x = block.reshape(c, -1).astype(np.float64)
        total += x.sum(1)
        total2 += np.square(x).sum(1)
        mins = np.minimum(mins, x.min(1))
        maxs = np.maximum(maxs, x.max(1))
        count += x.shape[1]
    if kind == "minmax":
        return {
            "kind": "zscore",
            "mean": mins.tolist(),
            "std": [max(float(h - lo), 1e-8) for lo, h in zip(mins, maxs)],
        }
    mean = total / count
    std = np.sqrt(np.maximum(total2 / count - mean**2, 0.0))
    mean_spec = norm.get("mean") if norm.get("mean") is not None else mean.tolist()
    std_spec = norm.get("std") if norm.get("std") is not None else std.tolist()
    return {"kind": "zscore", "mean": mean_spec, "std": std_spec}


def _strided_sample(arr: Any, max_voxels: int) -> np.ndarray:
    """Per channel, up to ``max_voxels`` voxels taken at an even stride: ``(C, m)``."""
    c = int(arr.shape[0])
    per_channel = int(np.prod(arr.shape[1:]))
    if per_channel <= max_voxels:
        parts = [b.reshape(c, -1) for _a, _b, b in iter_slabs(arr)]
        return np.concatenate(parts, axis=1)
    step = max(1, int(np.ceil(per_channel / max_voxels)))
    parts = []
    offset = 0
    for _a, _b, block in iter_slabs(arr):
        flat = block.reshape(c, -1)
        first = (-offset) % step
        parts.append(flat[:, first::step])
        offset += flat.shape[1]
    return np.concatenate(parts, axis=1)


def signature_of(arr: Any) -> str:
    """:func:`image_signature` of a lazy image, hashed slab by slab (the same digest)."""
    import hashlib

    source = arr.source if isinstance(arr, LazyImage) else arr
    digest = hashlib.sha256()
    shape = tuple(int(s) for s in source.shape)
    dtype = np.dtype(source.dtype)
    digest.update(str(shape).encode())
    digest.update(dtype.str.encode())
    n0 = shape[0]
    for a in range(0, n0, 16):
        block = source[a : min(n0, a + 16)]
        if hasattr(block, "compute"):
            block = block.compute()
        block = np.ascontiguousarray(np.asarray(block))
        digest.update(memoryview(block.reshape(-1).view(np.uint8)))
    text = "x".join(str(s) for s in shape)
    return f"{text}|{dtype.name}|sha256:{digest.hexdigest()}"


# -- memory ---------------------------------------------------------------------------------


def available_memory() -> float:
    """Bytes this process may still allocate: the smallest of free RAM (``MemAvailable``), the
    cgroup limit minus its usage, and the address-space limit (``ulimit -v``) minus the
    process's virtual size."""
    import resource

    candidates = []
    try:
        import psutil

        candidates.append(float(psutil.virtual_memory().available))
        vms = float(psutil.Process().memory_info().vms)
    except Exception:  # psutil missing or /proc unreadable
        vms = 0.0
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            with open(limit_file) as f:
                text = f.read().strip()
            if text != "max" and int(text) < 1 << 60:
                with open(usage_file) as f:
                    used = int(f.read().strip())
                candidates.append(float(int(text) - used))
            break
        except (OSError, ValueError):
            continue
    for which in (resource.RLIMIT_AS, getattr(resource, "RLIMIT_DATA", None)):
        if which is None:
            continue
        soft, _hard = resource.getrlimit(which)
        if soft != resource.RLIM_INFINITY and vms > 0:
            candidates.append(float(soft) - vms)
    env = os.environ.get("PROBSEG_MEMORY_LIMIT")  # for tests and shared machines
    if env:
        candidates.append(float(env))
    return max(0.0, min(candidates)) if candidates else float("inf")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a prediction needs, by part (see :func:`estimate_memory`)."""

    parts: dict
    mode: str

    @property
    def total(self) -> float:
        return float(sum(self.parts.values()))

    @property
    def additional(self) -> float:
        """Bytes still to be allocated: the total without the process and the input (which
        already live in this process when the estimate is made)."""
        return self.total - self.parts.get("process", 0.0) - self.parts.get("input", 0.0)

    def describe(self) -> str:
        gib = 2.0**30
        items = ", ".join(f"{k} {v / gib:.2f}" for k, v in self.parts.items() if v > 0.005 * gib)
        return f"~{self.total / gib:.2f} GiB ({items} GiB)"


def estimate_memory(
    *,
    mode: str,
    n_classes: int,
    n_samples: int,
    batch: int,
    image_shape: tuple[int, ...],
    padded_shape: tuple[int, ...],
    tile_voxels: int,
    input_bytes: float,
    input_in_memory: bool,
    stream: dict,
    keep_samples: bool,
    outputs_in_memory: bool,
    activation_bytes: float,
    body_cache_bytes: float = 0.0,
) -> MemoryEstimate:
    """Estimate the peak memory of a prediction before running it.

    ``mode`` is ``"whole"`` (whole-image buffers) or ``"slab"`` (``engine/_slabs.py``);
    ``stream`` the voxels per sample and class of the streaming buffers
    (:func:`napari_probseg.engine._slabs.geometry`); ``activation_bytes`` the network's working
    memory for one batch on one tile; ``body_cache_bytes`` the network bodies kept between sample
    batches (``engine/_windows.BodyCache``). The slab-to-slab carry lives on disk when the
    outputs do.
    """
    k, n, b = int(n_classes), int(n_samples), int(batch)
    v = float(np.prod(image_shape))
    parts: dict[str, float] = {"process": PROCESS_BASELINE_BYTES}
    parts["input"] = input_bytes if input_in_memory else 0.0
    if mode == "whole":
        vp = float(np.prod(padded_shape))
        parts["normalized input"] = vp * 4 * 2  # float64 pass inside normalize, float32 result
        parts["blend buffer"] = b * k * vp * 4
        parts["weight sums"] = vp * 4
        parts["accumulator"] = (2 * k + 1) * v * 8
    else:
        plane = float(np.prod(padded_shape[1:])) if len(padded_shape) > 1 else 1.0
        parts["normalized input"] = stream["slab_input"] * 4.0 * 2 + 8 * plane * 8
        parts["blend buffer"] = b * k * stream["buffer"] * 4.0
        row_carry = 0.0 if not outputs_in_memory else n * k * stream["row_carry"] * 4.0
        parts["carry"] = row_carry + n * k * stream["col_carry"] * 4.0
        final = float(stream["final"])
        parts["accumulator"] = (2 * k + 1) * final * 8 + (2 * k + 4) * final * 4
    parts["network"] = float(activation_bytes) + b * k * tile_voxels * 4
    parts["network bodies"] = float(body_cache_bytes)
    parts["samples"] = n * v if keep_samples and outputs_in_memory else 0.0
    parts["maps"] = (2 * k + 3) * v * 4 if outputs_in_memory else 0.0
    return MemoryEstimate(parts=parts, mode=mode)


def _libc() -> Any:
    """glibc, or None (other C libraries, other systems)."""
    global _LIBC
    if _LIBC is None:
        _LIBC = False
        try:
            import ctypes
            import ctypes.util

            name = ctypes.util.find_library("c")
            lib = ctypes.CDLL(name) if name else None
            if lib is not None and hasattr(lib, "malloc_trim") and hasattr(lib, "mallopt"):
                _LIBC = lib
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC or None


_LIBC: Any = None
#: Blocks of at least this many bytes come from (and go back to) the system directly.
MMAP_THRESHOLD = 4 << 20


def large_blocks_from_the_system() -> None:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` (``mallopt(M_MMAP_THRESHOLD)``).

    By default glibc raises the threshold up to 32 MB after large frees, so the tens-of-MB
    tensors of every tile's network pass are carved from the heap arenas, which fragment and do
    not shrink: the RSS of a volume grew strip after strip (1.06 -> 1.43 GB over 8 strips of a
    512^2 slab). With a fixed threshold they are mapped and unmapped whole. Process-wide and
    idempotent; a no-op without glibc.
    """
    global _THRESHOLD_SET
    lib = _libc()
    if lib is not None and not _THRESHOLD_SET:
        _THRESHOLD_SET = bool(lib.mallopt(-3, MMAP_THRESHOLD))  # -3: M_MMAP_THRESHOLD


_THRESHOLD_SET = False


def release_freed_memory() -> None:
    """Hand memory freed in the C allocator's arenas back to the system (glibc
    ``malloc_trim``; a no-op elsewhere)."""
    lib = _libc()
    if lib is not None:
        lib.malloc_trim(0)


class RowCarry:
    """The blended overlap rows one slab hands to the next: ``(N, K, O, C1, *rest)`` float32.

    ``O`` rows of the first spatial axis (the most any slab carries), ``C1`` columns of the
    second. Read and written by sample and column ranges (a strip of a slab at a time), in place:
    a strip reads the rows the previous slab left for its columns, then writes its own. In
    memory, or (``directory`` given: an output store streams to disk) in a scratch file laid out
    column by column, so the largest buffer of a volume (``N*K*O`` planes) never lives in RAM.
    """

    def __init__(
        self,
        n_samples: int,
        n_classes: int,
        rows: int,
        plane: tuple[int, ...],
        *,
        directory: Any = None,
    ) -> None:
        self.n, self.k, self.rows = int(n_samples), int(n_classes), int(rows)
        self.cols, self.rest = int(plane[0]), tuple(int(s) for s in plane[1:])
        self.block = (self.k, self.rows, *self.rest)  # one sample of one column
        self.block_bytes = int(np.prod(self.block)) * 4
        self.path = None
        self.array = None
        self.fd = -1
        if directory is None:
            self.array = np.zeros((self.n, self.k, self.rows, self.cols, *self.rest), np.float32)
        else:
            from pathlib import Path

            self.path = Path(directory) / ".row-carry.scratch"
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.ftruncate(self.fd, self.cols * self.n * self.block_bytes)  # sparse zeros

    def add_into(self, out: np.ndarray, s0: int, s1: int, c0: int, c1: int, rows: int) -> None:
        """``out[:, :, :rows, :c1 - c0] +=`` the carried rows of samples ``s0:s1``, columns
        ``c0:c1``."""
        if self.array is not None:
            out[:, :, :rows, : c1 - c0] += self.array[s0:s1, :, :rows, c0:c1]
            return
        nbytes = (s1 - s0) * self.block_bytes
        for c in range(c0, c1):
            raw = os.pread(self.fd, nbytes, (c * self.n + s0) * self.block_bytes)
            blk = np.frombuffer(raw, np.float32).reshape(s1 - s0, *self.block)
            out[:, :, :rows, c - c0] += blk[:, :, :rows]

    def store(self, data: np.ndarray, s0: int, s1: int, c0: int) -> None:
        """Keep ``data`` ``(s1 - s0, K, r, c, *rest)`` (r <= O rows) for the next slab."""
        r, c = data.shape[2], data.shape[3]
        if self.array is not None:
            self.array[s0:s1, :, :r, c0 : c0 + c] = data
            return
        blk = np.zeros((s1 - s0, *self.block), np.float32)
        for j in range(c):
            blk[:, :, :r] = data[:, :, :, j]
            os.pwrite(self.fd, blk.tobytes(), ((c0 + j) * self.n + s0) * self.block_bytes)

    def close(self) -> None:
        """Free the rows (delete the scratch file)."""
        self.array = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.path is not None:
            self.path.unlink(missing_ok=True)
