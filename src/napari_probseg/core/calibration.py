"""Calibration metrics: ECE, MCE, ACE, adaptive ECE and a streaming accumulator.

Temperature scaling lives apart, in :mod:`napari_probseg.core.temperature` (re-exported here).

Conventions (DESIGN.md "Metric conventions")
--------------------------------------------
- ``probs`` is ``(K, *spatial)`` with the class axis first (K >= 2), or a single foreground
  probability map ``(*spatial)`` of a binary problem, read as ``(1 - p, p)``: its predicted class is
  foreground when ``p > 0.5`` (ties go to background, exactly as ``argmax`` of ``(1 - p, p)``).
- ``labels`` is either *hard*: integer (or bool) labels ``(*spatial)`` from one rater or a majority
  vote; or *soft*: a floating array with the rater mean per class, ``(K, *spatial)`` (or
  ``(*spatial)`` foreground share for a foreground map). The dtype decides: integer/bool = hard,
  floating = soft. Shapes decide whether ``probs`` is a foreground map: with hard labels when
  ``probs.shape == labels.shape``; with soft labels of the same shape as ``probs`` the class axis is
  assumed unless ``probs`` is 2-D or ``foreground_map=True`` is passed (a 3-D foreground map with
  soft labels is otherwise indistinguishable from a 2-D ``(K, H, W)`` stack). With soft labels the "accuracy" of a pixel is the expected agreement, i.e. the
  soft label probability of the predicted class.
- Confidence is the top-label confidence ``max_k p_k`` (``confidence="top_label"``). For binary
  problems ``confidence="foreground"`` instead bins ``p(foreground)`` against the foreground
  indicator (the convention of torchmetrics' ``BinaryCalibrationError``).
- Bins are equal-width on [0, 1]: bin ``b`` holds ``[b/B, (b+1)/B)`` (computed as
  ``floor(conf * B)`` in the input's precision, so a confidence on an edge follows float rounding
  of the product) and the last bin is closed, so a confidence of exactly 1.0 falls in the last
  bin. (torchmetrics keeps an extra bin for exactly 1.0; both agree whenever no confidence
  equals 1.0.)
- ECE = sum_b n_b/N |acc_b - conf_b|; MCE = max over non-empty bins; ACE = unweighted mean of
  |acc_b - conf_b| over non-empty bins ("average calibration error", not the adaptive ECE);
  the adaptive (equal-mass bins) ECE is :func:`adaptive_ece`.

Input may be numpy arrays or torch tensors (any device): the class reduction runs where the data
lives, the per-bin sums are float64 numpy (exact for up to 2**53 pixels) and results are floats.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._validation import check_choice, check_positive_int, is_torch, to_numpy

__all__ = [
    "CalibrationAccumulator",
    "CalibrationResult",
    "TemperatureFit",
    "adaptive_ece",
    "calibration",
    "fit_temperature",
]

CONFIDENCES = ("top_label", "foreground")


@dataclass(frozen=True)
class CalibrationResult:
    """Calibration errors and reliability-diagram data.

    Attributes
    ----------
    ece, mce, ace : float
        Expected, maximum and average calibration error (NaN when no pixel was seen).
    bin_edges : ndarray, shape (n_bins + 1,)
        Equal-width edges on [0, 1]; the last bin is closed at 1.0.
    counts : ndarray of int64, shape (n_bins,)
        Pixels per bin.
    mean_confidence, accuracy : ndarray of float64, shape (n_bins,)
        Mean confidence and mean accuracy (expected agreement for soft labels) per bin; NaN for
        empty bins.
    n_pixels : int
        Number of pixels counted.
    label_kind : {"hard", "soft"}
        Whether the labels were hard labels or soft rater means.
    reference : str
        Free description of the reference, e.g. ``"majority of 4 raters"``.
    confidence : {"top_label", "foreground"}
        Which confidence was binned.
    """

    ece: float
    mce: float
    ace: float
    bin_edges: np.ndarray
    counts: np.ndarray
    mean_confidence: np.ndarray
    accuracy: np.ndarray
    n_pixels: int
    label_kind: str
    reference: str = ""
    confidence: str = "top_label"

    @property
    def n_bins(self) -> int:
        """Number of bins."""
        return len(self.counts)


@dataclass
class CalibrationAccumulator:
    """Streaming, mergeable per-bin sums for ECE/MCE/ACE.

    Three bincount accumulators per bin (pixel count, sum of confidence, sum of correctness) are
    all that the binned metrics need, so images or tiles of any size stream through in bounded
    memory and accumulators from different workers merge by addition.

    Parameters
    ----------
    n_bins : int
        Number of equal-width bins on [0, 1] (last bin closed at 1.0).
    confidence : {"top_label", "foreground"}
        Confidence to bin (see the module docstring).
    reference : str
        Free description of the labels, copied into the result.

    Examples
    --------
    >>> acc = CalibrationAccumulator(n_bins=10)
    >>> fg = np.array([[0.8, 0.8]])  # foreground probability map, 1 x 2 pixels
    >>> _ = acc.update(fg, np.array([[1, 0]])).update(fg, np.array([[1, 1]]))
    >>> round(acc.result().ece, 6)  # confidence 0.8, accuracy 3/4
    0.05
    """

    n_bins: int = 15
    confidence: str = "top_label"
    reference: str = ""
    counts: np.ndarray = field(init=False, repr=False)
    sum_confidence: np.ndarray = field(init=False, repr=False)
    sum_correct: np.ndarray = field(init=False, repr=False)
    label_kind: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.n_bins = check_positive_int(self.n_bins, "n_bins")
        check_choice(self.confidence, "confidence", CONFIDENCES)
        self.counts = np.zeros(self.n_bins, dtype=np.int64)
        self.sum_confidence = np.zeros(self.n_bins, dtype=np.float64)
        self.sum_correct = np.zeros(self.n_bins, dtype=np.float64)

    def update(
        self, probs: Any, labels: Any, *, mask: Any = None, foreground_map: bool | None = None
    ) -> CalibrationAccumulator:
        """Add the pixels of one image or tile.

        Parameters
        ----------
        probs : ndarray or Tensor, shape (K, *spatial) or (*spatial)
            Class probabilities, or a foreground probability map.
        labels : ndarray or Tensor, shape (*spatial) integer, or (K, *spatial) / (*spatial) float
            Hard labels or soft rater means (see the module docstring).
        mask : ndarray or Tensor of bool, shape (*spatial), optional
            Pixels to count (default all).
        foreground_map : bool, optional
            Force (True) or forbid (False) reading ``probs`` as a foreground map; default from
            the shapes (module docstring).

        Returns
        -------
        CalibrationAccumulator
            ``self``, for chaining.
        """
        kind, blocks = _confidence_blocks(probs, labels, self.confidence, mask, foreground_map)
        if self.label_kind not in (None, kind):
            raise ValueError(
                f"labels: mixing {self.label_kind} and {kind} labels in one accumulator"
            )
        n = self.n_bins
        # Sum into temporaries first so that an invalid block leaves the accumulator unchanged.
        counts = np.zeros(n, dtype=np.int64)
        sum_conf = np.zeros(n)
        sum_correct = np.zeros(n)
        for conf, correct in blocks:
            idx = _bin_index(conf, n)
            sum_conf += np.bincount(idx, weights=conf, minlength=n)
            if correct.dtype == bool:
                # Hard labels: one bincount over (bin, correct) gives both the counts and the
                # correct sums, cheaper than a second weighted bincount.
                idx += n * correct
                both = np.bincount(idx, minlength=2 * n)
                counts += both[:n] + both[n:]
                sum_correct += both[n:]
            else:
                counts += np.bincount(idx, minlength=n)
                sum_correct += np.bincount(idx, weights=correct, minlength=n)
        self.counts += counts
        self.sum_confidence += sum_conf
        self.sum_correct += sum_correct
        self.label_kind = kind
        return self

    def merge(self, other: CalibrationAccumulator) -> CalibrationAccumulator:
        """Add the sums of ``other`` (same ``n_bins`` and ``confidence``) into ``self``."""
        if other.n_bins != self.n_bins or other.confidence != self.confidence:
            raise ValueError(
                f"other: cannot merge an accumulator with n_bins={other.n_bins}, "
                f"confidence={other.confidence!r} into n_bins={self.n_bins}, "
                f"confidence={self.confidence!r}"
            )
        if None not in (self.label_kind, other.label_kind) and self.label_kind != other.label_kind:
            raise ValueError(f"other: holds {other.label_kind} labels, self {self.label_kind}")
        self.counts += other.counts
        self.sum_confidence += other.sum_confidence
        self.sum_correct += other.sum_correct
        self.label_kind = self.label_kind or other.label_kind
        return self

    def result(self) -> CalibrationResult:
        """Return the :class:`CalibrationResult` of everything seen so far."""
        counts = self.counts.copy()
        nonempty = counts > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_conf = np.where(nonempty, self.sum_confidence / counts, np.nan)
            acc = np.where(nonempty, self.sum_correct / counts, np.nan)
        gap = np.abs(acc - mean_conf)[nonempty]
        total = int(counts.sum())
        if total == 0:
            ece = mce = ace = float("nan")
        else:
            ece = float(np.sum(counts[nonempty] / total * gap))
            mce = float(gap.max())
            ace = float(gap.mean())
        return CalibrationResult(
            ece=ece,
            mce=mce,
            ace=ace,
            bin_edges=np.linspace(0.0, 1.0, self.n_bins + 1),
            counts=counts,
            mean_confidence=mean_conf,
            accuracy=acc,
            n_pixels=total,
            label_kind=self.label_kind or "hard",
            reference=self.reference,
            confidence=self.confidence,
        )


def calibration(
    probs: Any,
    labels: Any,
    *,
    n_bins: int = 15,
    confidence: str = "top_label",
    reference: str | None = None,
    mask: Any = None,
    foreground_map: bool | None = None,
) -> CalibrationResult:
    """ECE, MCE and ACE of one image (or a batch stacked along a spatial axis).

    Parameters
    ----------
    probs : ndarray or Tensor, shape (K, *spatial) or (*spatial)
        Class probabilities (class axis first, K >= 2) or a binary foreground probability map.
    labels : ndarray or Tensor
        Hard integer labels ``(*spatial)``, or soft rater means: float ``(K, *spatial)``, or float
        ``(*spatial)`` foreground share when ``probs`` is a foreground map.
    n_bins : int
        Number of equal-width bins; the last bin is closed at 1.0.
    confidence : {"top_label", "foreground"}
        ``"top_label"`` bins ``max_k p_k`` against correctness of ``argmax``; ``"foreground"``
        (binary only) bins ``p(foreground)`` against the foreground indicator.
    reference : str, optional
        Description of the labels, e.g. ``"majority of 4 raters"``; default ``"hard labels"`` or
        ``"soft labels (rater mean)"``.
    mask : ndarray or Tensor of bool, shape (*spatial), optional
        Pixels to count.
    foreground_map : bool, optional
        Whether ``probs`` is a foreground map; default from the shapes (module docstring).

    Returns
    -------
    CalibrationResult

    Examples
    --------
    >>> p = np.array([[0.1, 0.4], [0.9, 0.6]])  # (K=2, 2 pixels)
    >>> calibration(p, np.array([1, 0]), n_bins=10).ece  # bins 0.9 (acc 1), 0.6 (acc 0)
    0.35
    """
    acc = CalibrationAccumulator(n_bins=n_bins, confidence=confidence)
    acc.update(probs, labels, mask=mask, foreground_map=foreground_map)
    if reference is None:
        reference = "hard labels" if acc.label_kind == "hard" else "soft labels (rater mean)"
    acc.reference = reference
    return acc.result()


def adaptive_ece(
    probs: Any,
    labels: Any,
    *,
    n_bins: int = 15,
    confidence: str = "top_label",
    mask: Any = None,
    foreground_map: bool | None = None,
) -> float:
    """Adaptive (equal-mass) ECE: bins hold equal numbers of pixels instead of equal widths.

    Pixels are sorted by confidence and split into ``n_bins`` consecutive groups whose sizes differ
    by at most one (``numpy.array_split``); tied confidences may straddle two bins. ECE is then
    ``sum_b n_b/N |acc_b - conf_b|``. Not streaming: it sorts all pixels (O(N log N), N floats).

    Parameters
    ----------
    probs, labels, confidence, mask, foreground_map
        As for :func:`calibration`.
    n_bins : int
        Number of equal-mass bins.

    Returns
    -------
    float
        Adaptive ECE (NaN without pixels).
    """
    n_bins = check_positive_int(n_bins, "n_bins")
    check_choice(confidence, "confidence", CONFIDENCES)
    conf, correct, _ = _confidence_correct(probs, labels, confidence, mask, foreground_map)
    n = conf.size
    if n == 0:
        return float("nan")
    order = np.argsort(conf, kind="stable")
    bounds = np.linspace(0, n, min(n_bins, n) + 1).round().astype(np.int64)
    csum_conf = np.concatenate([[0.0], np.cumsum(conf[order], dtype=np.float64)])
    csum_corr = np.concatenate([[0.0], np.cumsum(correct[order], dtype=np.float64)])
    sizes = np.diff(bounds)
    gaps = np.abs(np.diff(csum_corr[bounds]) - np.diff(csum_conf[bounds]))  # n_b |acc_b - conf_b|
    return float(gaps[sizes > 0].sum() / n)


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """``floor(conf * n_bins)`` clipped to the last bin (closed at 1.0), as intp.

    Multiplication is ~5x faster than ``searchsorted`` on the edges. It runs in the precision of
    ``conf`` (float32 input stays float32, ~3x cheaper); the per-bin sums are float64 anyway.
    """
    scaled = conf * n_bins
    np.minimum(scaled, n_bins - 1, out=scaled)
    return scaled.astype(np.intp)


# Pixels per block in CalibrationAccumulator.update: the temporaries of a 2**16 block stay in
# cache, ~1.8x faster than whole 4M-pixel tiles (benchmarks/bench_metrics.py).
_BLOCK = 1 << 16


def _confidence_correct(
    probs: Any, labels: Any, confidence: str, mask: Any, foreground_map: bool | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """Flat confidences (float32 or float64 as given), correctness (bool for hard labels,
    float64 for soft ones) and the label kind, all pixels at once."""
    kind, blocks = _confidence_blocks(probs, labels, confidence, mask, foreground_map, None)
    ((conf, correct),) = blocks
    return conf, correct, kind


def _confidence_blocks(
    probs: Any,
    labels: Any,
    confidence: str,
    mask: Any,
    foreground_map: bool | None,
    block: int | None = _BLOCK,
) -> tuple[str, Iterator[tuple[np.ndarray, np.ndarray]]]:
    """Validate the inputs; return the label kind and an iterator over flat pixel blocks of
    ``(confidence, correctness)`` (one block when ``block`` is None)."""
    if tuple(probs.shape) == ():
        raise ValueError("probs: expected shape (K, *spatial) or (*spatial), got a scalar")
    if is_torch(labels):
        soft = labels.is_floating_point()
    else:
        labels = np.asarray(labels)
        soft = bool(np.issubdtype(labels.dtype, np.floating))
        if not soft and not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
            raise ValueError(f"labels: expected integer or floating labels, got {labels.dtype}")
    pshape, lshape = tuple(probs.shape), tuple(labels.shape)
    if foreground_map is None:
        foreground_map = pshape == lshape and (not soft or len(pshape) == 2)
    elif foreground_map and pshape != lshape:
        raise ValueError(f"labels: expected shape {pshape} like the foreground map, got {lshape}")
    spatial = pshape if foreground_map else pshape[1:]
    if not foreground_map:
        if len(pshape) < 2 or pshape[0] < 2:
            raise ValueError(
                f"probs: expected (K, *spatial) with K >= 2 or a foreground map shaped like labels, "
                f"got {pshape} for labels {lshape}"
            )
        want = pshape if soft else spatial
        if lshape != want:
            raise ValueError(f"labels: expected shape {want} for probs {pshape}, got {lshape}")
    if confidence == "foreground" and not foreground_map and pshape[0] != 2:
        raise ValueError(f"confidence: 'foreground' needs a binary problem, got K={pshape[0]}")
    m = None
    if mask is not None:
        m = to_numpy(mask).astype(bool)
        if m.shape != spatial:
            raise ValueError(f"mask: expected shape {spatial}, got {m.shape}")
        m = m.reshape(-1)
    kind = "soft" if soft else "hard"
    n_pix = int(np.prod(spatial))
    step = n_pix if block is None else block

    if is_torch(probs) or is_torch(labels):
        # Reduce over classes where the data lives, then bin on the CPU.
        conf, correct = _reduce_torch(probs, labels, foreground_map, soft, confidence)
        conf, correct = conf.reshape(-1), correct.reshape(-1)

        def torch_blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for a in range(0, max(n_pix, 1), max(step, 1)):
                sl = slice(a, a + step)
                yield _finish(conf[sl], correct[sl], soft, None if m is None else m[sl])

        return kind, torch_blocks()

    p = np.asarray(probs)
    p = p.reshape(-1) if foreground_map else p.reshape(pshape[0], -1)
    lab = labels.reshape(-1) if labels.ndim == len(spatial) else labels.reshape(lshape[0], -1)

    def numpy_blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for a in range(0, max(n_pix, 1), max(step, 1)):
            sl = slice(a, a + step)
            conf, correct = _reduce_numpy(
                p[..., sl], lab[..., sl], foreground_map, soft, confidence
            )
            yield _finish(conf, correct, soft, None if m is None else m[sl])

    return kind, numpy_blocks()


def _finish(
    conf: np.ndarray, correct: np.ndarray, soft: bool, m: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Flatten, apply the mask, check ranges and clip rounding overshoots of one block."""
    conf = np.asarray(conf).reshape(-1)
    if conf.dtype not in (np.float32, np.float64):
        conf = conf.astype(np.float64)
    correct = np.asarray(correct).reshape(-1)
    correct = correct.astype(np.float64, copy=False) if soft else correct.astype(bool, copy=False)
    if m is not None:
        conf, correct = conf[m], correct[m]
    if soft and correct.size and not (correct.min() >= -1e-6 and correct.max() <= 1 + 1e-6):
        raise ValueError("labels: soft labels must be finite rater shares in [0, 1]")
    if conf.size:
        # min/max propagate NaN, so this one pass also rejects NaN and Inf.
        lo, hi = conf.min(), conf.max()
        if not (lo >= -1e-6 and hi <= 1 + 1e-6):
            raise ValueError("probs: probabilities must be finite and lie in [0, 1]")
        if lo < 0 or hi > 1:  # rounding of normalized probabilities; keep 1+eps in the last bin
            conf = np.clip(conf, 0.0, 1.0)  # a copy: conf may be the caller's array
    return conf, correct


def _reduce_numpy(
    probs: np.ndarray, labels: np.ndarray, fg_map: bool, soft: bool, confidence: str
) -> tuple[np.ndarray, np.ndarray]:
    if fg_map:
        p = probs
        if confidence == "foreground":
            return p, (labels if soft else labels > 0)
        pred_fg = p > 0.5  # ties to background, as argmax of (1 - p, p)
        conf = np.maximum(p, 1.0 - p)
        if soft:
            return conf, np.where(pred_fg, labels, 1 - labels)
        return conf, pred_fg == (labels > 0)
    if confidence == "foreground":
        return probs[1], (labels[1] if soft else labels == 1)
    conf, pred = _top_label(probs)
    if soft:
        return conf, np.take_along_axis(labels, pred[None].astype(np.intp), axis=0)[0]
    return conf, pred == labels


def _top_label(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(max_k p_k, argmax_k p_k)`` over axis 0, ties to the lowest class like ``argmax``.

    numpy's ``argmax(axis=0)`` walks the class axis with a stride and is ~6x slower than this:
    one ``max`` plus K uint8 compare-adds, with ``argmax`` only on the (rare) tied pixels.
    """
    k = probs.shape[0]
    if k > 255:
        pred = probs.argmax(axis=0)
        return np.take_along_axis(probs, pred[None], axis=0)[0], pred
    conf = probs.max(axis=0)
    pred = np.zeros(conf.shape, dtype=np.uint8)
    n_max = np.zeros(conf.shape, dtype=np.uint8)
    eq = np.empty(conf.shape, dtype=bool)
    for c in range(k):
        np.equal(probs[c], conf, out=eq)
        e8 = eq.view(np.uint8)
        n_max += e8
        if c:
            pred += e8 * np.uint8(c)
    ties = np.flatnonzero(n_max != 1)
    if ties.size:
        pred.reshape(-1)[ties] = probs.reshape(k, -1)[:, ties].argmax(axis=0)
    return conf, pred


def _reduce_torch(
    probs: Any, labels: Any, fg_map: bool, soft: bool, confidence: str
) -> tuple[np.ndarray, np.ndarray]:
    import torch

    probs = torch.as_tensor(probs)
    labels = torch.as_tensor(labels, device=probs.device)
    with torch.no_grad():
        if fg_map:
            pred_fg = probs > 0.5
            if confidence == "foreground":
                conf = probs
                correct = labels if soft else labels > 0
            else:
                conf = torch.maximum(probs, 1 - probs)
                correct = (
                    torch.where(pred_fg, labels, 1 - labels) if soft else pred_fg == (labels > 0)
                )
        elif confidence == "foreground":
            conf = probs[1]
            correct = labels[1] if soft else labels == 1
        else:
            conf, pred = probs.max(dim=0)
            correct = labels.gather(0, pred[None])[0] if soft else pred == labels
    return to_numpy(conf), to_numpy(correct)


# Temperature scaling is its own module (fitting, not measuring); kept importable from here.
from napari_probseg.core.temperature import TemperatureFit, fit_temperature  # noqa: E402
