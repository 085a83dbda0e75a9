"""Structure of a set of sampled masks: agreement, volume spread, distinct hypotheses.

Per-pixel (factorized) entropy summed over an image hugely overestimates the uncertainty of
spatially coherent masks: a circle that sits at one of ``N`` equally likely positions carries
``log2(N)`` bits (:func:`sample_set_entropy`), not the tens of bits of :func:`factorized_entropy`.
The measures here are computed from the samples themselves (DESIGN.md "Metric conventions").

Mask sets are ``(N, *spatial)`` integer label arrays with 2 or 3 spatial axes and 0 = background;
torch tensors are moved to numpy. Scalar results are Python floats.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from napari_probseg.core._validation import check_masks

# The package's one IoU matrix (re-exported here for the structure measures' users).
from napari_probseg.core.observer import (
    _DEFAULT_CHUNK,
    _intersections,
    _iou_from_counts,
    iou_matrix,
)

__all__ = [
    "Envelope",
    "Hypothesis",
    "SampleStructure",
    "cluster_entropy",
    "consensus",
    "distinct_hypotheses",
    "envelope",
    "factorized_entropy",
    "iou_matrix",
    "pairwise_dice",
    "sample_set_entropy",
    "volume_cov",
]

#: Voxels times samples per block when a whole mask set is added (bounds the temporaries).
_BLOCK_VOXELS = 1 << 24


def _log_scale(base: float | None) -> float:
    if base is None:
        return 1.0
    if not (isinstance(base, (int, float)) and math.isfinite(base) and base > 0 and base != 1):
        raise ValueError(f"base: expected a positive number other than 1 (or None), got {base!r}")
    return math.log(base)


def _mean_over_present(score: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Mean over classes present in either mask of a pair; 1 where no class is present."""
    count = present.sum(axis=0)
    total = np.where(present, score, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), 1.0)


def _entropy(shares: np.ndarray, scale: float) -> float:
    return float(max(-(shares * np.log(shares)).sum() / scale, 0.0)) + 0.0


def _check_min_iou(min_iou: Any) -> None:
    if not (isinstance(min_iou, (int, float)) and 0 < min_iou <= 1):
        raise ValueError(f"min_iou: expected an IoU in (0, 1], got {min_iou!r}")


def _group_samples(iou: np.ndarray, max_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Average-linkage clusters on ``1 - IoU`` cut at ``max_distance``: ids and distances."""
    n = iou.shape[0]
    dist = 1.0 - iou
    np.fill_diagonal(dist, 0.0)
    dist = np.clip((dist + dist.T) / 2, 0.0, 1.0)
    if n == 1:
        return np.ones(1, int), dist
    tree = linkage(squareform(dist, checks=False), method="average")
    return fcluster(tree, t=max_distance, criterion="distance"), dist


class SampleStructure:
    """What every structure measure reads from a mask set, accumulated over blocks of voxels.

    The per-class intersection counts of every pair of samples (exact integers), a BLAKE2 hash
    of each sample's labels and the per-voxel label entropy summed so far. The mask set is added
    whole (:meth:`of`) or in blocks of rows of its first spatial axis, in order (the image
    summary reads a streamed prediction's samples from disk this way); the measures are the same
    numbers either way (the entropy sum to float rounding).

    Parameters
    ----------
    n : int
        Number of samples ``N``.
    """

    def __init__(self, n: int) -> None:
        self.n = int(n)
        self._inter = np.zeros((0, self.n, self.n), np.int64)
        self._hashes = [hashlib.blake2b(digest_size=16) for _ in range(self.n)]
        self._factorized = 0.0  # nats

    @classmethod
    def of(cls, masks: Any) -> SampleStructure:
        """Statistics of a whole mask set ``(N, *spatial)`` (validated)."""
        arr = check_masks(masks, "masks")
        stats = cls(arr.shape[0])
        rows = max(1, _BLOCK_VOXELS // max(1, arr[0, 0].size * arr.shape[0]))
        for start in range(0, arr.shape[1], rows):
            stats.add(arr[:, start : start + rows])
        return stats

    def add(self, block: Any) -> None:
        """Add the next rows ``(N, rows, *rest)`` of the mask set (integer labels >= 0)."""
        arr = check_masks(block, "masks")
        if arr.shape[0] != self.n:
            raise ValueError(f"masks: expected {self.n} samples per block, got {arr.shape[0]}")
        inter = _intersections([arr], None, _DEFAULT_CHUNK)
        if inter.shape[0] > self._inter.shape[0]:
            grown = np.zeros(inter.shape, np.int64)
            grown[: self._inter.shape[0]] = self._inter
            self._inter = grown
        self._inter[: inter.shape[0]] += inter
        for h, m in zip(self._hashes, arr):
            # the samples of one set share a dtype, so equal labels are equal bytes; blocks of
            # rows in order are the mask's C order (the same digest as the whole mask)
            h.update(np.ascontiguousarray(m).data)
        present = (
            np.flatnonzero(np.bincount(arr.ravel()))  # small unsigned labels: no sort
            if arr.dtype.kind == "u" and arr.itemsize <= 2
            else np.unique(arr)
        )
        for lab in present:
            f = np.count_nonzero(arr == lab, axis=0) / self.n
            f = f[(f > 0) & (f < 1)]
            self._factorized -= float((f * np.log(f)).sum())

    @property
    def areas(self) -> np.ndarray:
        """Voxels of each foreground class in each sample, ``(C - 1, N)``."""
        return np.diagonal(self._inter, axis1=1, axis2=2)

    def iou(self) -> np.ndarray:
        """The IoU matrix ``(N, N)``, as :func:`napari_probseg.core.observer.iou_matrix`."""
        return _iou_from_counts(self._inter)

    def pairwise_dice(self) -> float:
        """See :func:`pairwise_dice`."""
        if self.n < 2:
            return float("nan")
        sa = self.areas.astype(np.float64)
        total = sa[:, :, None] + sa[:, None, :]
        present = total > 0
        dice = np.where(present, 2 * self._inter / np.maximum(total, 1), 0.0)
        pair = _mean_over_present(dice, present)
        return float(pair[np.triu_indices(self.n, k=1)].mean())

    def volume_cov(self) -> float:
        """See :func:`volume_cov`."""
        vol = self.areas.sum(axis=0).astype(np.float64)
        mean = vol.mean()
        return float("nan") if mean == 0 else float(vol.std() / mean)

    def digests(self) -> list[bytes]:
        """One hash per sample; equal masks have equal digests."""
        return [h.copy().digest() for h in self._hashes]

    def sample_set_entropy(self, *, base: float | None = 2) -> float:
        """See :func:`sample_set_entropy`."""
        scale = _log_scale(base)
        counts = Counter(self.digests())
        return _entropy(np.array(list(counts.values()), np.float64) / self.n, scale)

    def groups(self, max_distance: float) -> np.ndarray:
        """Cluster id of each sample (the grouping of :func:`distinct_hypotheses`)."""
        return _group_samples(self.iou(), max_distance)[0]

    def cluster_entropy(self, *, min_iou: float = 0.8, base: float | None = 2) -> float:
        """See :func:`cluster_entropy`."""
        scale = _log_scale(base)
        _check_min_iou(min_iou)
        _, counts = np.unique(self.groups(1.0 - min_iou), return_counts=True)
        return _entropy(counts / self.n, scale)

    def factorized_entropy(self, *, base: float | None = 2) -> float:
        """See :func:`factorized_entropy`."""
        return max(self._factorized / _log_scale(base), 0.0)


def pairwise_dice(masks: Any) -> float:
    """Mean Dice over all pairs of distinct samples ``s < t``.

    Parameters
    ----------
    masks : ndarray or Tensor, shape (N, *spatial)
        Integer label masks, 0 = background.

    Returns
    -------
    float
        Mean over pairs of the pair's Dice, itself the mean over the foreground classes present
        in either mask of the pair; a pair of empty masks scores 1. ``NaN`` when ``N == 1``
        (there is no pair: agreement is undefined, not perfect).

    Raises
    ------
    ValueError
        Invalid masks.
    """
    return SampleStructure.of(masks).pairwise_dice()


def volume_cov(masks: Any) -> float:
    """Coefficient of variation of the per-sample foreground volume.

    Parameters
    ----------
    masks : ndarray or Tensor, shape (N, *spatial)
        Integer label masks; foreground = any label > 0.

    Returns
    -------
    float
        ``std / mean`` (population std, ddof = 0) of the foreground voxel counts; ``NaN`` when
        the mean volume is 0; 0 for a single sample.

    Raises
    ------
    ValueError
        Invalid masks.
    """
    return SampleStructure.of(masks).volume_cov()


def sample_set_entropy(masks: Any, *, base: float | None = 2) -> float:
    """Entropy of the empirical distribution of the distinct masks in the sample set.

    Parameters
    ----------
    masks : ndarray or Tensor, shape (N, *spatial)
        Integer label masks.
    base : float or None, optional
        Logarithm base (default 2: bits; ``None``: nats).

    Returns
    -------
    float
        ``-sum_m f_m log f_m`` over the distinct masks ``m`` (identified by a BLAKE2 hash of
        their labels' bytes: the samples share one dtype), ``f_m`` the share of samples equal
        to ``m``. At most ``log N``.

    Raises
    ------
    ValueError
        Invalid masks or ``base``.
    """
    _log_scale(base)
    return SampleStructure.of(masks).sample_set_entropy(base=base)


def cluster_entropy(masks: Any, *, min_iou: float = 0.8, base: float | None = 2) -> float:
    """Entropy of the shares of the distinct hypotheses (clusters of similar samples).

    :func:`sample_set_entropy` hashes exact masks, so one differing pixel makes two masks distinct
    and any stochastic method saturates at ``log N``. Here samples are first grouped by
    :func:`distinct_hypotheses` (average linkage on ``1 - IoU``, cut where the IoU between groups
    falls below ``min_iou``) and the entropy is that of the group shares.

    Parameters
    ----------
    masks : ndarray or Tensor, shape (N, *spatial)
        Integer label masks.
    min_iou : float in (0, 1], optional
        Samples whose (average-linkage) IoU is at least this form one hypothesis (default 0.8,
        i.e. ``distinct_hypotheses(max_distance=0.2)``); 1 groups only masks with IoU 1.
    base : float or None, optional
        Logarithm base (default 2: bits; ``None``: nats).

    Returns
    -------
    float
        ``-sum_g f_g log f_g`` over the groups ``g``; 0 for one group, at most ``log N``.

    Raises
    ------
    ValueError
        Invalid masks, ``min_iou`` or ``base``.
    """
    _log_scale(base)
    _check_min_iou(min_iou)
    return SampleStructure.of(masks).cluster_entropy(min_iou=min_iou, base=base)


def _label_counts(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct labels ``(L,)`` and per-voxel counts ``(L, *spatial)`` over the samples."""
    labels = np.unique(arr)
    counts = np.empty((len(labels), *arr.shape[1:]), np.int32)
    for i, lab in enumerate(labels):
        np.sum(arr == lab, axis=0, out=counts[i])
    return labels, counts


def factorized_entropy(masks: Any, *, base: float | None = 2) -> float:
    """Sum over voxels of the entropy of the per-voxel label frequencies.

    Parameters
    ----------
    masks : ndarray or Tensor, shape (N, *spatial)
        Integer label masks.
    base : float or None, optional
        Logarithm base (default 2: bits; ``None``: nats).

    Returns
    -------
    float
        ``sum_x H(f(x))`` where ``f_c(x)`` is the share of samples with label ``c`` at voxel
        ``x``: the entropy of a model that treats voxels as independent. Compare with
        :func:`sample_set_entropy`; it overestimates the uncertainty of coherent masks.

    Raises
    ------
    ValueError
        Invalid masks or ``base``.
    """
    _log_scale(base)
    return SampleStructure.of(masks).factorized_entropy(base=base)


def consensus(masks: Any) -> np.ndarray:
    """Per-voxel majority label of the sample set.

    Parameters
    ----------
    masks : ndarray or Tensor, shape (N, *spatial)
        Integer label masks.

    Returns
    -------
    ndarray, shape (*spatial)
        The most frequent label at each voxel, same dtype as ``masks``. Ties go to the smallest
        label, so a 50/50 split between background and foreground stays background
        (conservative: the consensus never grows on an even vote).

    Raises
    ------
    ValueError
        Invalid masks.
    """
    arr = check_masks(masks, "masks")
    labels, counts = _label_counts(arr)
    # argmax returns the first maximum, i.e. the smallest label among ties (labels are sorted).
    return labels[np.argmax(counts, axis=0)].astype(arr.dtype, copy=False)


@dataclass(frozen=True)
class Envelope:
    """Inner and outer envelope of a sample set.

    Attributes
    ----------
    inner : ndarray of bool, shape (*spatial)
        Voxels foreground in at least a ``1 - q`` share of the samples (q = 0: in all of them).
    outer : ndarray of bool, shape (*spatial)
        Voxels foreground in more than a ``q`` share of the samples (q = 0: in any of them).
    quantile : float
        ``q``.
    """

    inner: np.ndarray
    outer: np.ndarray
    quantile: float


def envelope(masks: Any, *, quantile: float | None = None, label: int | None = None) -> Envelope:
    """Inner/outer envelope of the foreground over the samples (a sample-quantile envelope).

    Parameters
    ----------
    masks : ndarray or Tensor, shape (N, *spatial)
        Integer label masks.
    quantile : float in [0, 0.5), optional
        ``q``. With ``f(x)`` the share of samples where ``x`` is foreground, ``inner = f >= 1 - q``
        and ``outer = f > q``: the q-share of most extreme samples is ignored on each side, so
        one outlier sample does not stretch the envelope. ``None`` (default) is ``q = 0``:
        intersection and union. ``inner`` is always inside ``outer``.
    label : int, optional
        Use ``masks == label`` as foreground instead of ``masks > 0``.

    Returns
    -------
    Envelope

    Raises
    ------
    ValueError
        Invalid masks, ``quantile`` outside [0, 0.5) or ``label`` < 1.
    """
    arr = check_masks(masks, "masks")
    q = 0.0 if quantile is None else quantile
    if not (isinstance(q, (int, float)) and 0 <= q < 0.5):
        raise ValueError(f"quantile: expected a share in [0, 0.5) or None, got {quantile!r}")
    if label is not None and (isinstance(label, bool) or int(label) != label or label < 1):
        raise ValueError(f"label: expected a foreground label >= 1 or None, got {label!r}")
    fg = arr > 0 if label is None else arr == label
    share = np.count_nonzero(fg, axis=0) / arr.shape[0]
    # Tolerance so that e.g. q = 0.1 with N = 10 counts 9/10 as ">= 0.9".
    tol = 1e-9
    return Envelope(inner=share >= 1 - q - tol, outer=share > q + tol, quantile=float(q))


@dataclass(frozen=True)
class Hypothesis:
    """A group of similar samples, represented by its medoid.

    Attributes
    ----------
    mask : ndarray, shape (*spatial)
        The medoid sample (an actual sample: the member with the smallest total ``1 - IoU`` to
        the other members).
    share : float
        Share of all samples in the group.
    members : tuple of int
        Indices of the samples in the group.
    spread : float
        Mean ``1 - IoU`` between the medoid and the other members (0 for one member).
    """

    mask: np.ndarray
    share: float
    members: tuple[int, ...]
    spread: float


def distinct_hypotheses(
    masks: Any, *, max_distance: float = 0.2, max_hypotheses: int = 8
) -> list[Hypothesis]:
    """Group the samples into distinct hypotheses by average-linkage clustering on ``1 - IoU``.

    Parameters
    ----------
    masks : ndarray or Tensor, shape (N, *spatial)
        Integer label masks.
    max_distance : float in [0, 1], optional
        Clusters are cut where the average ``1 - IoU`` between groups exceeds this (default 0.2).
    max_hypotheses : int, optional
        Return at most this many groups, the most frequent ones (default 8). Shares are
        fractions of *all* samples, so they sum to less than 1 when groups are dropped.

    Returns
    -------
    list of Hypothesis
        Sorted by decreasing share (ties: smallest first member first).

    Raises
    ------
    ValueError
        Invalid masks, ``max_distance`` outside [0, 1] or ``max_hypotheses`` < 1.
    """
    arr = check_masks(masks, "masks")
    if not (isinstance(max_distance, (int, float)) and 0 <= max_distance <= 1):
        raise ValueError(f"max_distance: expected a distance in [0, 1], got {max_distance!r}")
    if isinstance(max_hypotheses, bool) or int(max_hypotheses) != max_hypotheses:
        raise ValueError(f"max_hypotheses: expected an integer >= 1, got {max_hypotheses!r}")
    if max_hypotheses < 1:
        raise ValueError(f"max_hypotheses: expected an integer >= 1, got {max_hypotheses!r}")
    n = arr.shape[0]
    groups, dist = _group_samples(iou_matrix(arr), max_distance)
    hypotheses = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        sub = dist[np.ix_(members, members)]
        best = int(np.argmin(sub.sum(axis=1)))
        spread = float(sub[best].sum() / (len(members) - 1)) if len(members) > 1 else 0.0
        hypotheses.append(
            Hypothesis(
                mask=arr[members[best]].copy(),
                share=len(members) / n,
                members=tuple(int(m) for m in members),
                spread=spread,
            )
        )
    hypotheses.sort(key=lambda h: (-h.share, h.members[0]))
    return hypotheses[: int(max_hypotheses)]
