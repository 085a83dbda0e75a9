"""Shared argument validation and numpy/torch helpers for the core layer.

Messages start with the name of the offending argument, as in scikit-image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Tolerance on ``sum_k p_k == 1`` for probability inputs.
PROB_SUM_ATOL = 1e-3


def is_torch(x: Any) -> bool:
    """Return True if ``x`` is a torch tensor, without importing torch."""
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a numpy array (torch tensors are detached and moved to the CPU)."""
    if is_torch(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def check_ndim(
    x: Any, name: str, *, min_ndim: int, max_ndim: int | None = None, shape: str
) -> None:
    """Raise ``ValueError`` naming ``name`` if ``x.ndim`` is outside ``[min_ndim, max_ndim]``."""
    ndim = len(x.shape)
    if ndim < min_ndim or (max_ndim is not None and ndim > max_ndim):
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(x.shape)}")


def check_finite(x: Any, name: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or Inf."""
    if is_torch(x):
        import torch

        ok = bool(torch.isfinite(x).all())
    else:
        ok = bool(np.isfinite(x).all())
    if not ok:
        raise ValueError(f"{name}: contains NaN or Inf values")


def check_probs(
    probs: Any, name: str = "probs", *, class_axis: int, atol: float = PROB_SUM_ATOL
) -> None:
    """Check that ``probs`` holds finite probabilities in [0, 1] summing to 1 over ``class_axis``.

    Parameters
    ----------
    probs : ndarray or Tensor
        Probability array.
    name : str
        Argument name used in error messages.
    class_axis : int
        Axis of the classes.
    atol : float
        Tolerance on the sum over classes.

    Raises
    ------
    ValueError
        Naming ``name`` for NaN/Inf, values outside [0, 1] or sums off 1.
    """
    check_finite(probs, name)
    if is_torch(probs):
        lo, hi = float(probs.min()), float(probs.max())
        err = float((probs.sum(dim=class_axis) - 1).abs().max())
    else:
        arr = np.asarray(probs)
        lo, hi = float(arr.min()), float(arr.max())
        err = float(np.abs(arr.sum(axis=class_axis, dtype=np.float64) - 1).max())
    if lo < -atol or hi > 1 + atol:
        raise ValueError(
            f"{name}: probabilities must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]"
        )
    if err > atol:
        raise ValueError(
            f"{name}: probabilities must sum to 1 over the class axis {class_axis} "
            f"(max deviation {err:.3g} > {atol:g})"
        )


def check_masks(masks: Any, name: str = "masks", *, min_samples: int = 1) -> np.ndarray:
    """Validate a mask set ``(N, *spatial)`` of integer labels and return it as a numpy array.

    Raises
    ------
    ValueError
        If the array is not integer/bool, has fewer than 2 or more than 4 dimensions, has fewer
        than ``min_samples`` masks, or holds negative labels.
    """
    arr = to_numpy(masks)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected integer labels, got dtype {arr.dtype}")
    check_ndim(arr, name, min_ndim=3, max_ndim=4, shape="(N, *spatial) with 2 or 3 spatial axes")
    if arr.shape[0] < min_samples:
        raise ValueError(f"{name}: needs at least {min_samples} mask(s), got {arr.shape[0]}")
    # Unsigned labels cannot be negative: skip a full pass over (possibly large) mask sets.
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise ValueError(f"{name}: labels must be >= 0 (0 = background)")
    return arr


def check_positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """Return ``value`` as int, raising ``ValueError`` naming ``name`` if it is below ``minimum``."""
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(value: Any, name: str, choices: tuple[str, ...] | list[str]) -> str:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
