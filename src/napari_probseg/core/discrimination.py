"""How well a score separates two groups, with paired bootstrap intervals.

- :func:`auroc`: area under the ROC curve of a score that should be higher for the positives, by
  the rank (Mann-Whitney U) formula with ties counted one half. Written here rather than taken from
  scikit-learn, which the project does not depend on; ``scipy.stats.rankdata`` does the ranking.
- :func:`paired_bootstrap`: a percentile bootstrap interval of a statistic of paired per-image
  values, resampling the *images* (the same resampled index set for every array), so that a
  difference between two methods or two domains on the same images keeps its pairing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["BootstrapInterval", "auroc", "paired_bootstrap"]


def auroc(negatives: Sequence[float], positives: Sequence[float]) -> float:
    """Area under the ROC curve of a score meant to be higher for ``positives``.

    The probability that a random positive scores above a random negative, ties counting 1/2
    (Mann-Whitney U / (n_pos n_neg)). 1 separates perfectly, 0.5 is chance.

    Parameters
    ----------
    negatives, positives : sequence of float
        Scores of the two groups (finite, at least one each).

    Returns
    -------
    float in [0, 1]

    Raises
    ------
    ValueError
        ``negatives: ...`` / ``positives: ...`` when empty or not finite.
    """
    from scipy.stats import rankdata

    neg = np.asarray(negatives, dtype=np.float64).ravel()
    pos = np.asarray(positives, dtype=np.float64).ravel()
    for name, arr in (("negatives", neg), ("positives", pos)):
        if arr.size == 0:
            raise ValueError(f"{name}: expected at least one score")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: scores must be finite")
    ranks = rankdata(np.concatenate([neg, pos]))  # average ranks for ties
    u = ranks[neg.size :].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


@dataclass(frozen=True)
class BootstrapInterval:
    """A statistic with its percentile bootstrap interval.

    Attributes
    ----------
    value : float
        The statistic on the original sample.
    low, high : float
        The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the bootstrap distribution.
    level : float
        Coverage (0.95).
    n : int
        Number of paired units (images) resampled.
    n_boot : int
        Bootstrap replicates.
    """

    value: float
    low: float
    high: float
    level: float
    n: int
    n_boot: int

    def excludes(self, threshold: float = 0.0) -> bool:
        """Whether the whole interval lies on one side of ``threshold``."""
        return self.low > threshold or self.high < threshold

    def text(self, fmt: str = ".3f") -> str:
        return f"{self.value:{fmt}} [{self.low:{fmt}}, {self.high:{fmt}}]"


def paired_bootstrap(
    statistic: Callable[..., float],
    *arrays: Sequence[float] | np.ndarray,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> BootstrapInterval:
    """Percentile bootstrap interval of ``statistic(*arrays)`` resampling paired rows.

    Parameters
    ----------
    statistic : callable
        ``statistic(*resampled_arrays) -> float``, e.g. ``lambda a, b: np.mean(a - b)``.
    *arrays : array_like, each of length n
        Per-unit values; row ``i`` of every array belongs to unit ``i`` (an image) and rows are
        resampled together.
    n_boot : int
        Replicates (>= 100).
    level : float
        Coverage in (0, 1).
    seed : int
        Seed of the resampling.

    Returns
    -------
    BootstrapInterval

    Raises
    ------
    ValueError
        ``arrays: ...`` when none are given or lengths differ; ``n_boot``/``level`` out of range.
    """
    if not arrays:
        raise ValueError("arrays: expected at least one array")
    data = [np.asarray(a, dtype=np.float64) for a in arrays]
    n = len(data[0])
    if n == 0 or any(len(a) != n for a in data):
        raise ValueError(f"arrays: expected equal, non-zero lengths, got {[len(a) for a in data]}")
    if int(n_boot) < 100:
        raise ValueError(f"n_boot: expected >= 100 replicates, got {n_boot!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level: expected a coverage in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(int(n_boot), n))
    reps = np.array([statistic(*(a[i] for a in data)) for i in idx], dtype=np.float64)
    alpha = (1.0 - float(level)) / 2.0
    low, high = np.nanquantile(reps, [alpha, 1.0 - alpha])
    return BootstrapInterval(
        value=float(statistic(*data)),
        low=float(low),
        high=float(high),
        level=float(level),
        n=n,
        n_boot=int(n_boot),
    )
