"""Observer-variability metrics: IoU matrices, GED, HM-IoU and NCC of samples against raters.

Conventions (DESIGN.md "Metric conventions")
--------------------------------------------
- Mask sets are ``(N, *spatial)`` integer labels, 0 = background, 2-D or 3-D; numpy arrays or torch
  tensors (moved to numpy). ``samples`` are model hypotheses, ``references`` the raters' masks.
- IoU of two masks is averaged over the foreground classes present in either mask; two masks without
  any foreground have IoU 1 (IoU(empty, empty) = 1). The distance is ``d = 1 - IoU``.
- All pairwise intersections (samples x samples, samples x raters, raters x raters) come at once
  from one "matrix product" per class over the flattened indicator masks of samples and raters
  stacked together, never from loops over pixels. It runs on bit-packed masks (AND + popcount,
  ~2.5x faster than a float32 BLAS product here) when numpy >= 2.0, else as float32 products of
  chunks of at most 2**24 pixels (so every partial count is an exact integer); totals are int64.
  Memory is bounded by the chunk, not the volume: 20 masks of 128**3 voxels need a few MB of
  scratch besides the input.
- ``n_samples`` (default 16, as GED16/HM-IoU16 in the literature): the *first* ``n_samples`` samples
  are used; with fewer samples all are used. ``n_samples=None`` uses all. Every result reports the
  number of samples and raters actually used, because the biased estimators depend on it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._validation import check_masks, check_positive_int

__all__ = [
    "GEDResult",
    "HMIoUResult",
    "MetricSummary",
    "ObserverMetrics",
    "ged",
    "hm_iou",
    "iou_matrix",
    "ncc",
    "observer_metrics",
    "summarize",
    "variance_map",
]

# Float32 matmul is exact for integer counts below 2**24, so chunks never exceed that.
_MAX_CHUNK = 1 << 24
_DEFAULT_CHUNK = 1 << 18


@dataclass(frozen=True)
class GEDResult:
    """Generalized energy distance between samples and raters.

    ``ged`` is the *squared* distance D²_GED = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')], with
    ``d = 1 - IoU``, as reported by Kohl et al. (probabilistic U-Net) and later work. The
    expectations are means over all pairs: ``cross`` over the N x M sample/rater pairs,
    ``within_samples`` over N x N sample pairs and ``within_raters`` over M x M rater pairs. The
    default (``unbiased=False``) includes the i = j self-pairs (d = 0), as the literature does: the
    value is then biased upward by O(1/N) and depends on N. ``unbiased=True`` excludes self-pairs
    (a U-statistic; it can be slightly negative).

    Attributes
    ----------
    ged : float
        D²_GED (squared). ``distance`` gives its square root.
    cross, within_samples, within_raters : float
        The three mean distances.
    n_samples, n_raters : int
        Masks used.
    unbiased : bool
        Whether self-pairs were excluded.
    kernel : {"iou", "dice"}
        ``d = 1 - IoU`` (default) or ``d = 1 - Dice``.
    absent : {"present", "one"}
        Class-absent convention: ``"present"`` (default) averages the per-class score over the
        foreground classes present in either mask (1 when none is); ``"one"`` (PHiSeg's
        ``dist_fct``) scores a class absent from both masks as 1 and averages over every foreground
        class ``1 .. n_classes - 1``.
    """

    ged: float
    cross: float
    within_samples: float
    within_raters: float
    n_samples: int
    n_raters: int
    unbiased: bool
    kernel: str = "iou"
    absent: str = "present"

    @property
    def distance(self) -> float:
        """D_GED, the square root of ``ged`` (clamped at 0)."""
        return math.sqrt(max(self.ged, 0.0))


@dataclass(frozen=True)
class HMIoUResult:
    """Hungarian-matched IoU.

    Attributes
    ----------
    hm_iou : float
        Mean IoU of the optimal one-to-one matching after replicating samples and raters to
        ``n_matched = lcm(n_samples, n_raters)`` each.
    matched_iou : ndarray, shape (n_matched,)
        IoU of each matched pair.
    n_samples, n_raters, n_matched : int
        Masks used and size of the matching.
    """

    hm_iou: float
    matched_iou: np.ndarray
    n_samples: int
    n_raters: int
    n_matched: int


@dataclass(frozen=True)
class ObserverMetrics:
    """GED, HM-IoU and NCC from one shared set of intersection counts (:func:`observer_metrics`)."""

    ged: GEDResult
    hm_iou: HMIoUResult
    ncc: float
    n_samples: int
    n_raters: int


@dataclass(frozen=True)
class MetricSummary:
    """Mean of per-image values that skips NaNs and says how many it skipped.

    Attributes
    ----------
    mean, std : float
        Mean and population standard deviation (ddof = 0) of the finite values (NaN if none).
    n : int
        Number of values used.
    n_nan : int
        Number of NaN values skipped (e.g. NCC of images with a constant variance map).
    """

    mean: float
    std: float
    n: int
    n_nan: int


def iou_matrix(
    masks: Any,
    others: Any = None,
    *,
    n_classes: int | None = None,
    chunk_pixels: int = _DEFAULT_CHUNK,
) -> np.ndarray:
    """IoU of every mask of ``masks`` with every mask of ``others`` (the package's one IoU matrix).

    Parameters
    ----------
    masks : ndarray or Tensor, shape (N, *spatial)
        Integer labels, 0 = background.
    others : ndarray or Tensor, shape (M, *spatial), optional
        Second mask set (default ``masks``).
    n_classes : int, optional
        Number of classes including background (default: largest label + 1).
    chunk_pixels : int
        Pixels per chunk of the matrix product (at most 2**24).

    Returns
    -------
    ndarray of float64, shape (N, M)
        IoU averaged over the foreground classes present in either mask; 1 where both are empty.
    """
    chunk_pixels = min(check_positive_int(chunk_pixels, "chunk_pixels"), _MAX_CHUNK)
    a = check_masks(masks, "masks")
    b = a if others is None else check_masks(others, "others")
    _check_same_spatial(a, b, "others")
    if others is None:
        return _iou_from_counts(_intersections([a], n_classes, chunk_pixels))
    inter = _intersections([a, b], n_classes, chunk_pixels, cross_only=True)
    n = len(a)
    return _iou_from_counts(inter)[:n, n:]


def ged(
    samples: Any,
    references: Any,
    *,
    n_samples: int | None = 16,
    unbiased: bool = False,
    n_classes: int | None = None,
    kernel: str = "iou",
    absent: str = "present",
) -> GEDResult:
    """Generalized energy distance D²_GED with kernel ``d = 1 - IoU`` (default) or ``1 - Dice``.

    Parameters
    ----------
    samples : ndarray or Tensor, shape (N, *spatial)
        Sampled masks (integer labels, 0 = background).
    references : ndarray or Tensor, shape (M, *spatial)
        Rater masks.
    n_samples : int or None
        Use the first ``n_samples`` samples (all if fewer, or if None). Default 16 (GED16).
    unbiased : bool
        Exclude the i = j self-pairs from the within-set means (needs N >= 2 and M >= 2). The
        default includes them, as in the literature (see :class:`GEDResult`).
    n_classes : int, optional
        Number of classes including background (default: largest label + 1).
    kernel : {"iou", "dice"}, keyword-only
        Per-class similarity of the distance ``d = 1 - similarity``. Default ``"iou"`` (Kohl et
        al. and most later work); ``"dice"`` as some papers report.
    absent : {"present", "one"}, keyword-only
        Class-absent convention (see :class:`GEDResult`). Default ``"present"``; ``"one"``
        reproduces PHiSeg (Baumgartner et al.): a class absent from both masks scores 1 and the
        mean runs over every foreground class. Both agree for binary masks.

    Returns
    -------
    GEDResult
        ``ged`` is the squared distance D²_GED.
    """
    _check_kernel(kernel, absent)
    s, r = _prepare(samples, references, n_samples)
    if unbiased and (len(s) < 2 or len(r) < 2):
        raise ValueError(
            f"unbiased: needs at least 2 samples and 2 references, got {len(s)} and {len(r)}"
        )
    inter = _intersections([s, r], n_classes, _DEFAULT_CHUNK)
    sim = _similarity_from_counts(inter, kernel=kernel, absent=absent)
    out = _ged_from_iou(sim, len(s), unbiased)
    return dataclasses.replace(out, kernel=kernel, absent=absent)


def hm_iou(
    samples: Any,
    references: Any,
    *,
    n_samples: int | None = 16,
    n_classes: int | None = None,
) -> HMIoUResult:
    """Hungarian-matched IoU between samples and raters.

    Samples and raters are replicated to ``L = lcm(N, M)`` each, the one-to-one matching
    minimizing the total cost ``1 - IoU`` is found by ``scipy.optimize.linear_sum_assignment``, and
    the mean matched IoU is reported.

    Parameters
    ----------
    samples : ndarray or Tensor, shape (N, *spatial)
        Sampled masks.
    references : ndarray or Tensor, shape (M, *spatial)
        Rater masks.
    n_samples : int or None
        Use the first ``n_samples`` samples (default 16, HM-IoU16; all if None or fewer).
    n_classes : int, optional
        Number of classes including background (default: largest label + 1).

    Returns
    -------
    HMIoUResult
    """
    s, r = _prepare(samples, references, n_samples)
    inter = _intersections([s, r], n_classes, _DEFAULT_CHUNK, cross_only=True)
    return _hm_from_iou(_iou_from_counts(inter)[: len(s), len(s) :])


def variance_map(masks: Any, *, n_classes: int | None = None) -> np.ndarray:
    """Per-pixel variance of the foreground indicators across a mask set.

    For each foreground class c, ``p_c = mean_i [mask_i == c]`` and its (population) variance is
    ``p_c (1 - p_c)``; the map is the mean over the foreground classes ``1 .. n_classes - 1``.

    Parameters
    ----------
    masks : ndarray or Tensor, shape (N, *spatial)
        Integer labels, 0 = background.
    n_classes : int, optional
        Number of classes including background (default: largest label + 1, at least 2).

    Returns
    -------
    ndarray of float64, shape (*spatial)
    """
    m = check_masks(masks)
    return _variance_map(m, _n_classes([m], n_classes))


def ncc(
    samples: Any,
    references: Any,
    *,
    n_samples: int | None = 16,
    n_classes: int | None = None,
) -> float:
    """Normalized cross-correlation of the sample and rater variance maps.

    Pearson correlation (population, ddof = 0) of :func:`variance_map` of the samples and of the
    raters. Multi-class maps are the mean over foreground classes of the per-class indicator
    variance (the mean or the sum give the same correlation). NaN when either map is constant
    (e.g. all raters agree everywhere); use :func:`summarize` to average over images and count the
    NaNs. Note: Monteiro et al. (SSN) correlate maps of expected cross-entropy instead; this is the
    variance-map variant of DESIGN.md.

    Parameters
    ----------
    samples : ndarray or Tensor, shape (N, *spatial)
        Sampled masks.
    references : ndarray or Tensor, shape (M, *spatial)
        Rater masks.
    n_samples : int or None
        Use the first ``n_samples`` samples (default 16; all if None or fewer).
    n_classes : int, optional
        Number of classes including background (default: largest label + 1).

    Returns
    -------
    float
        Correlation in [-1, 1], or NaN.
    """
    s, r = _prepare(samples, references, n_samples)
    k = _n_classes([s, r], n_classes)
    return _pearson_counts(_variance_counts(s, k), _variance_counts(r, k))


def observer_metrics(
    samples: Any,
    references: Any,
    *,
    n_samples: int | None = 16,
    unbiased: bool = False,
    n_classes: int | None = None,
    ged_kernel: str = "iou",
    ged_absent: str = "present",
) -> ObserverMetrics:
    """GED, HM-IoU and NCC at once, sharing one matrix product for all pairwise IoUs.

    Parameters are those of :func:`ged` (``ged_kernel`` and ``ged_absent`` are its ``kernel`` and
    ``absent``, for the GED only: HM-IoU always matches on the IoU); see :func:`ged`,
    :func:`hm_iou` and :func:`ncc`.

    Returns
    -------
    ObserverMetrics
    """
    s, r = _prepare(samples, references, n_samples)
    if unbiased and (len(s) < 2 or len(r) < 2):
        raise ValueError(
            f"unbiased: needs at least 2 samples and 2 references, got {len(s)} and {len(r)}"
        )
    _check_kernel(ged_kernel, ged_absent)
    k = _n_classes([s, r], n_classes)
    inter = _intersections([s, r], k, _DEFAULT_CHUNK)
    iou = _iou_from_counts(inter)
    sim = (
        iou
        if (ged_kernel, ged_absent) == ("iou", "present")
        else (_similarity_from_counts(inter, kernel=ged_kernel, absent=ged_absent))
    )
    n = len(s)
    ged_result = dataclasses.replace(
        _ged_from_iou(sim, n, unbiased), kernel=ged_kernel, absent=ged_absent
    )
    return ObserverMetrics(
        ged=ged_result,
        hm_iou=_hm_from_iou(iou[:n, n:]),
        ncc=_pearson_counts(_variance_counts(s, k), _variance_counts(r, k)),
        n_samples=n,
        n_raters=len(r),
    )


def summarize(values: Iterable[float]) -> MetricSummary:
    """Mean and std (ddof = 0) of per-image values, skipping and counting NaNs.

    Parameters
    ----------
    values : iterable of float
        Per-image metric values, e.g. NCC.

    Returns
    -------
    MetricSummary
    """
    v = np.asarray(list(values), dtype=np.float64).reshape(-1)
    finite = ~np.isnan(v)
    used = v[finite]
    if used.size == 0:
        return MetricSummary(float("nan"), float("nan"), 0, int((~finite).sum()))
    return MetricSummary(
        float(used.mean()), float(used.std()), int(used.size), int((~finite).sum())
    )


# --------------------------------------------------------------------------------------- helpers


def _prepare(samples: Any, references: Any, n_samples: int | None) -> tuple[np.ndarray, np.ndarray]:
    s = check_masks(samples, "samples")
    r = check_masks(references, "references")
    _check_same_spatial(s, r, "references")
    if n_samples is not None:
        s = s[: check_positive_int(n_samples, "n_samples")]
    return s, r


def _check_same_spatial(a: np.ndarray, b: np.ndarray, name: str) -> None:
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"{name}: spatial shape {tuple(b.shape[1:])} differs from {tuple(a.shape[1:])}"
        )


def _n_classes(sets: list[np.ndarray], n_classes: int | None) -> int:
    top = max(int(m.max()) if m.size else 0 for m in sets)
    if n_classes is None:
        return max(top + 1, 2)
    n_classes = check_positive_int(n_classes, "n_classes", minimum=2)
    if top >= n_classes:
        raise ValueError(f"n_classes: label {top} found but n_classes={n_classes}")
    return n_classes


def _intersections(
    sets: list[np.ndarray],
    n_classes: int | None,
    chunk: int,
    *,
    method: str = "auto",
    cross_only: bool = False,
) -> np.ndarray:
    """Intersection counts ``(C - 1, L, L)`` (int64) of all masks of ``sets`` stacked, per class.

    The diagonal holds the per-mask areas. ``method="matmul"``: one float32 matrix product
    ``X @ X.T`` per class and chunk of flattened indicator masks. ``method="popcount"``: the same
    product on bit-packed masks (AND + popcount, one call per row and block of words); on 20
    masks of 128**3 it is ~3x faster than the float32 BLAS product (benchmarks/bench_metrics.py),
    so ``"auto"`` uses it whenever numpy has ``bitwise_count`` (numpy >= 2.0).
    ``cross_only`` (two sets, popcount only): fill just the areas and the first-set x second-set
    block, leaving the within-set blocks at 0 (HM-IoU and two-set IoU matrices need no more).
    """
    k = _n_classes(sets, n_classes)
    if method == "auto":
        method = "popcount" if hasattr(np, "bitwise_count") else "matmul"
    flat = [m.reshape(len(m), -1) for m in sets]
    n_masks = sum(len(f) for f in flat)
    n_pix = flat[0].shape[1]
    total = np.zeros((k - 1, n_masks, n_masks), dtype=np.int64)
    if method == "popcount":
        for c in range(1, k):
            split = len(flat[0]) if cross_only and len(flat) == 2 else None
            total[c - 1] = _popcount_gram(_pack(flat, c, k == 2), split=split)
        return total
    for start in range(0, n_pix, chunk):
        stop = min(start + chunk, n_pix)
        block = np.concatenate([f[:, start:stop] for f in flat])
        for c in range(1, k):
            x = (block == c).astype(np.float32)
            # Exact: every entry of one chunk's product is an integer below 2**24.
            total[c - 1] += (x @ x.T).round().astype(np.int64)
    return total


def _pack(flat: list[np.ndarray], c: int, binary: bool) -> np.ndarray:
    """Indicator masks of class ``c`` packed to 64-bit words ``(L, ceil(P / 64))``.

    Packed in pixel chunks (multiples of 64) so that the boolean temporaries stay small; 0/1
    uint8 or bool masks of a binary problem pack directly (packbits keeps nonzero as 1).
    """
    n_pix = flat[0].shape[1]
    n_words = -(-n_pix // 64)
    out = np.zeros((sum(len(f) for f in flat), n_words * 8), dtype=np.uint8)
    step = 1 << 20  # pixels per packing chunk, a multiple of 64
    row = 0
    for f in flat:
        direct = binary and f.dtype in (np.uint8, np.bool_)
        for start in range(0, n_pix, step):
            block = f[:, start : start + step]
            bits = np.packbits(block if direct else block == c, axis=1)
            out[row : row + len(f), start // 8 : start // 8 + bits.shape[1]] = bits
        row += len(f)
    return out.view(np.uint64)


def _popcount_gram(words: np.ndarray, block: int = 4096, split: int | None = None) -> np.ndarray:
    """``G[i, j] = popcount(words[i] & words[j])`` summed over words (int64), symmetric.

    All pairs, or with ``split`` only the areas and the pairs ``i < split <= j``. Blocks of 4096
    words (32 KiB per mask) keep the operands in cache; buffers are reused.
    """
    n, n_words = words.shape
    gram = np.zeros((n, n), dtype=np.int64)
    tmp = np.empty((n, min(block, n_words)), dtype=np.uint64)
    cnt = np.empty(tmp.shape, dtype=np.uint8)
    rows = range(n) if split is None else range(split)
    for start in range(0, n_words, block):
        w = words[:, start : start + block]
        m = w.shape[1]
        if split is not None:
            c = cnt[:, :m]
            np.bitwise_count(w, out=c)
            gram[np.arange(n), np.arange(n)] += c.sum(axis=1, dtype=np.int64)
        for i in rows:
            lo = i if split is None else split
            t, c = tmp[: n - lo, :m], cnt[: n - lo, :m]
            np.bitwise_and(w[i], w[lo:], out=t)
            np.bitwise_count(t, out=c)
            gram[i, lo:] += c.sum(axis=1, dtype=np.int64)
    return np.triu(gram) + np.triu(gram, 1).T


GED_KERNELS = ("iou", "dice")
GED_ABSENT = ("present", "one")


def _check_kernel(kernel: str, absent: str) -> None:
    if kernel not in GED_KERNELS:
        raise ValueError(f"kernel: expected one of {GED_KERNELS}, got {kernel!r}")
    if absent not in GED_ABSENT:
        raise ValueError(f"absent: expected one of {GED_ABSENT}, got {absent!r}")


def _similarity_from_counts(inter: np.ndarray, *, kernel: str, absent: str) -> np.ndarray:
    """IoU or Dice matrix ``(L, L)`` from per-class intersections, with a class-absent convention."""
    if kernel == "iou" and absent == "present":
        return _iou_from_counts(inter)
    area = np.diagonal(inter, axis1=1, axis2=2)  # (C - 1, L)
    total = area[:, :, None] + area[:, None, :]
    union = total - inter
    present = union > 0
    num, den = (inter, union) if kernel == "iou" else (2 * inter, total)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(present, num / np.where(present, den, 1), 0.0)
    if absent == "one":
        # PHiSeg: a class absent from both masks agrees perfectly; mean over every class.
        if ratio.shape[0] == 0:
            return np.ones(ratio.shape[1:])
        return np.where(present, ratio, 1.0).mean(axis=0)
    n_present = present.sum(axis=0)
    return np.where(n_present > 0, ratio.sum(axis=0) / np.maximum(n_present, 1), 1.0)


def _iou_from_counts(inter: np.ndarray) -> np.ndarray:
    """IoU matrix ``(L, L)`` from per-class intersection counts ``(C - 1, L, L)``."""
    area = np.diagonal(inter, axis1=1, axis2=2)  # (C - 1, L)
    union = area[:, :, None] + area[:, None, :] - inter
    present = union > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(present, inter / np.where(present, union, 1), 0.0)
    n_present = present.sum(axis=0)
    # IoU(empty, empty) = 1: no foreground class in either mask.
    return np.where(n_present > 0, ratio.sum(axis=0) / np.maximum(n_present, 1), 1.0)


def _ged_from_iou(iou: np.ndarray, n: int, unbiased: bool) -> GEDResult:
    d = 1.0 - iou
    m = iou.shape[0] - n
    cross = float(d[:n, n:].mean())
    dss, drr = d[:n, :n], d[n:, n:]
    if unbiased:
        within_s = float((dss.sum() - np.trace(dss)) / (n * (n - 1)))
        within_r = float((drr.sum() - np.trace(drr)) / (m * (m - 1)))
    else:
        within_s, within_r = float(dss.mean()), float(drr.mean())
    return GEDResult(
        ged=2 * cross - within_s - within_r,
        cross=cross,
        within_samples=within_s,
        within_raters=within_r,
        n_samples=n,
        n_raters=m,
        unbiased=bool(unbiased),
    )


def _hm_from_iou(cross_iou: np.ndarray) -> HMIoUResult:
    from scipy.optimize import linear_sum_assignment

    n, m = cross_iou.shape
    size = math.lcm(n, m)
    rows = np.tile(np.arange(n), size // n)
    cols = np.tile(np.arange(m), size // m)
    cost = 1.0 - cross_iou[np.ix_(rows, cols)]
    r_idx, c_idx = linear_sum_assignment(cost)
    matched = cross_iou[rows[r_idx], cols[c_idx]]
    return HMIoUResult(
        hm_iou=float(matched.mean()), matched_iou=matched, n_samples=n, n_raters=m, n_matched=size
    )


def _variance_counts(masks: np.ndarray, n_classes: int) -> np.ndarray:
    """``sum_c k_c (N - k_c)`` per pixel (int64), k_c = masks of class c: N**2 (C-1) x variance map.

    Integer maps keep NCC exact (Pearson is scale-invariant) and cost fewer float passes.
    """
    n = len(masks)
    out = np.zeros(masks.shape[1:], dtype=np.int64)
    # A narrow accumulator makes the reduction over N ~3x faster than count_nonzero.
    acc = np.uint16 if n < 1 << 16 else np.int64
    for c in range(1, n_classes):
        ind = masks if n_classes == 2 and masks.dtype in (np.uint8, np.bool_) else masks == c
        k = np.add.reduce(ind.view(np.uint8), axis=0, dtype=acc).astype(np.int64)
        out += k * (n - k)
    return out


def _variance_map(masks: np.ndarray, n_classes: int) -> np.ndarray:
    return _variance_counts(masks, n_classes) / (len(masks) ** 2 * (n_classes - 1))


def _pearson_counts(a: np.ndarray, b: np.ndarray) -> float:
    """Population Pearson correlation of two integer maps, in exact integer arithmetic."""
    a, b = a.ravel(), b.ravel()
    n = a.size
    sa, sb = int(a.sum()), int(b.sum())
    var_a = n * int(np.dot(a, a)) - sa * sa  # n**2 x population variance, exact
    var_b = n * int(np.dot(b, b)) - sb * sb
    if n == 0 or var_a == 0 or var_b == 0:  # a constant map
        return float("nan")
    cov = n * int(np.dot(a, b)) - sa * sb
    return float(np.clip(cov / math.sqrt(var_a * var_b), -1.0, 1.0))
