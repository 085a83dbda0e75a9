"""Device choice, out-of-memory detection and the memory budget that sizes sample batches."""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable
from typing import Any

#: Default activation factor: bytes of intermediate activations per byte of output probabilities.
#: Calibrated on the bundled 3D BasicUNet (features 8-64): ~330 MB of peak RSS per sample of a
#: 64³ tile with K = 2, i.e. ~160x the 2 MB of float32 output (bench_engine "memory").
#: Methods may set an ``activation_factor`` attribute to override it.
DEFAULT_ACTIVATION_FACTOR = 160.0

#: CPU budget for one sample batch when none is given (bytes). Fixed, not read from the free
#: memory, so that the automatic batch size (and therefore the samples for a seed) is the same on
#: every run on a machine.
DEFAULT_CPU_BUDGET = 1.5 * 2**30

#: Largest automatic batch (larger batches stop paying off on CPUs and GPUs alike).
MAX_AUTO_BATCH = 32


def resolve_device(device: Any = "auto") -> Any:
    """Return the ``torch.device`` to run on.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` picks CUDA, then Apple MPS, then the CPU. Anything else is parsed by
        ``torch.device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).

    Raises
    ------
    ValueError
        ``device: ...`` when the string is not a device or the device is not available.
    """
    import torch

    if device is None or (isinstance(device, str) and device.lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device: expected 'auto', 'cpu', 'cuda[:i]' or 'mps', got {device!r}"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: CUDA was asked for but is not available (use 'auto' or 'cpu')")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device: MPS was asked for but is not available (use 'auto' or 'cpu')")
    return dev


#: Messages of out-of-memory errors that arrive as a plain ``RuntimeError``: MPS and CUDA
#: ("out of memory"), torch's CPU allocator ("DefaultCPUAllocator: can't allocate memory: you
#: tried to allocate ...", "not enough memory") and ENOMEM from the OS.
OOM_MESSAGES = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "not enough memory",
    "defaultcpuallocator",
    "failed to allocate",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Return True if ``exc`` is an out-of-memory error: CUDA, MPS, torch's CPU allocator
    (a ``RuntimeError`` saying "can't allocate memory"), or Python/numpy's ``MemoryError``."""
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    if isinstance(exc, OSError) and getattr(exc, "errno", None) == 12:  # ENOMEM
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in text for m in OOM_MESSAGES)


def release_cached_memory(device: Any) -> None:
    """Return cached blocks to the driver after an out-of-memory error (no-op on the CPU)."""
    import torch

    if getattr(device, "type", None) == "cuda":
        torch.cuda.empty_cache()
    elif getattr(device, "type", None) == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


#: The error when one sample does not fit the CPU (both prediction paths).
ONE_SAMPLE_OUT_OF_MEMORY = (
    "out of memory on the CPU even with 1 sample per batch; use a smaller patch size, fewer "
    "samples or a smaller image"
)


def after_out_of_memory(
    exc: BaseException,
    *,
    batch: int,
    device: Any,
    cpu_batch: Callable[[], int],
    warn: Callable[[str], None],
) -> tuple[int, Any]:
    """What a sample loop does after the out-of-memory error ``exc`` (:func:`is_out_of_memory`)
    from a batch of ``batch`` samples on ``device``.

    Both prediction paths (whole image, slab by slab) follow this one policy: with more than one
    sample, retry with half the batch on the same device; with one sample on an accelerator,
    fall back to the CPU with ``cpu_batch()`` samples per batch. The failed pass's frames are
    cleared and cached accelerator memory is released first; every decision goes to ``warn``.

    Returns
    -------
    (int, torch.device)
        The batch size and device to go on with.

    Raises
    ------
    MemoryError
        :data:`ONE_SAMPLE_OUT_OF_MEMORY`, when one sample does not fit the CPU either.
    """
    import torch

    # the traceback holds the failed forward pass's tensors: free them before releasing
    traceback.clear_frames(exc.__traceback__)
    release_cached_memory(device)
    if batch > 1:
        smaller = max(1, batch // 2)
        warn(f"out of memory on {device} with {batch} samples per batch; retrying with {smaller}")
        return smaller, device
    if getattr(device, "type", "cpu") != "cpu":
        warn(f"out of memory on {device} even with 1 sample per batch; falling back to the CPU")
        return cpu_batch(), torch.device("cpu")
    raise MemoryError(ONE_SAMPLE_OUT_OF_MEMORY) from None


def memory_budget(device: Any) -> float:
    """Return the bytes one sample batch may use on ``device``.

    CUDA: half of the device's total memory (fixed per machine, so batches are reproducible);
    MPS and CPU: :data:`DEFAULT_CPU_BUDGET`.
    """
    import torch

    if getattr(device, "type", None) == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return 0.5 * float(total)
    return DEFAULT_CPU_BUDGET


def bytes_per_sample(
    n_classes: int,
    tile_voxels: int,
    image_voxels: int,
    *,
    itemsize: int = 4,
    activation_factor: float = DEFAULT_ACTIVATION_FACTOR,
) -> float:
    """Estimate the memory one sample of a batch needs.

    Parameters
    ----------
    n_classes : int
        K, the number of classes.
    tile_voxels : int
        Voxels of one network input (a tile, or the whole image when untiled).
    image_voxels : int
        Voxels of the whole image (the blend buffer holds K of these per sample).
    itemsize : int
        Bytes per value of the network's output (4 for float32).
    activation_factor : float
        Bytes of activations per byte of output probabilities.

    Returns
    -------
    float
        Bytes: network activations for one tile plus the sample's share of the blend buffer.
    """
    network = n_classes * tile_voxels * itemsize * activation_factor
    blend = n_classes * image_voxels * 4
    return float(network + blend)


def auto_batch_size(n_samples: int, per_sample: float, budget: float) -> int:
    """Return the number of samples per batch that fits ``budget`` (at least 1, at most N)."""
    fits = math.floor(budget / max(per_sample, 1.0))
    return max(1, min(n_samples, fits, MAX_AUTO_BATCH))
