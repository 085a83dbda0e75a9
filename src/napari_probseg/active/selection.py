"""Batch selection for active learning: top-k, top-k with diversity, random -- all seeded.

``"diverse"`` is the uncertainty-then-representativeness scheme of *suggestive annotation*
(Yang et al., MICCAI 2017: take the most uncertain candidates, then pick a diverse subset) with
the diverse subset chosen by the greedy k-center (core-set) algorithm of Sener & Savarese
(ICLR 2018, "Active Learning for Convolutional Neural Networks: A Core-Set Approach"): repeatedly
add the candidate farthest (Euclidean, features standardised) from everything selected or already
labelled. The first pick is the most informative candidate, so with ``k = 1`` it equals top-k.
Features are the network's bottleneck activations, globally average-pooled
(:func:`napari_probseg.active.features.bottleneck_features`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["STRATEGIES", "k_center_greedy", "select_batch"]

#: Selection strategies accepted by :func:`select_batch`.
STRATEGIES: tuple[str, ...] = ("top_k", "diverse", "random")


def _order(scores: np.ndarray) -> np.ndarray:
    """Indices by decreasing score, NaN last, ties by index (stable)."""
    key = np.where(np.isnan(scores), -np.inf, scores)
    return np.lexsort((np.arange(len(scores)), np.isnan(scores), -key))


def k_center_greedy(
    features: Any, k: int, *, first: int | None = None, centers: Sequence[int] | np.ndarray = ()
) -> list[int]:
    """Greedy k-center selection (Sener & Savarese 2018, Algorithm 1).

    Parameters
    ----------
    features : array_like, shape (n, d)
        Candidate features.
    k : int
        Number of points to pick (at most ``n``).
    first : int, optional
        Index of the first pick (e.g. the most informative candidate); default: the point
        farthest from ``centers`` (the lowest index when there are none).
    centers : sequence of int
        Rows of ``features`` that are already covered (labelled); they are never picked.

    Returns
    -------
    list of int
        Picked indices in order. Ties in the distance go to the lowest index.
    """
    feats = np.asarray(features, np.float64)
    if feats.ndim != 2:
        raise ValueError(f"features: expected shape (n, d), got {feats.shape}")
    n = len(feats)
    covered = [int(c) for c in centers]
    available = np.ones(n, bool)
    available[covered] = False
    k = min(int(k), int(available.sum()))
    picks: list[int] = []
    min_dist = np.full(n, np.inf)
    for c in covered:
        min_dist = np.minimum(min_dist, np.linalg.norm(feats - feats[c], axis=1))
    if first is None and not covered:
        first = int(np.argmax(available))
    if first is not None and k > 0:
        if not available[first]:
            raise ValueError(f"first: {first} is already covered")
        picks.append(int(first))
        available[first] = False
        min_dist = np.minimum(min_dist, np.linalg.norm(feats - feats[first], axis=1))
    while len(picks) < k:
        cand = np.where(available, min_dist, -np.inf)
        nxt = int(np.argmax(cand))
        picks.append(nxt)
        available[nxt] = False
        min_dist = np.minimum(min_dist, np.linalg.norm(feats - feats[nxt], axis=1))
    return picks


def select_batch(
    scores: Any,
    k: int,
    *,
    strategy: str = "top_k",
    features: Any = None,
    labelled_features: Any = None,
    candidate_factor: float = 3.0,
    seed: int = 0,
) -> np.ndarray:
    """Choose ``k`` images to annotate next.

    Parameters
    ----------
    scores : array_like, shape (n,)
        Informativeness of each candidate (higher first; NaN ranks last).
    k : int
        Batch size (clipped to ``n``).
    strategy : {"top_k", "diverse", "random"}
        ``"top_k"``: the k highest scores (ties by index); ``"random"``: k uniformly without
        replacement from ``numpy.random.default_rng(seed)``; ``"diverse"``: greedy k-center over
        ``features`` among the ``ceil(candidate_factor * k)`` highest scores (see module docs).
    features : array_like, shape (n, d), optional
        Candidate features; required by ``"diverse"``. Standardised (z-score per dimension over
        the candidates and the labelled set) before distances are taken.
    labelled_features : array_like, shape (m, d), optional
        Features of the already labelled images: the k-center coverage starts from them.
    candidate_factor : float
        Size of the uncertain candidate set of ``"diverse"``, in multiples of ``k`` (>= 1).
    seed : int
        Seed of ``"random"`` (the other strategies are deterministic).

    Returns
    -------
    ndarray of int, shape (min(k, n),)
        Indices into ``scores``, in selection order.

    Raises
    ------
    ValueError
        ``strategy`` unknown; ``k`` < 1; ``features`` missing or of the wrong shape;
        ``candidate_factor`` < 1.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    values = np.asarray(scores, np.float64).ravel()
    n = len(values)
    k = min(int(k), n)
    if strategy == "random":
        return np.random.default_rng(seed).choice(n, size=k, replace=False).astype(np.int64)
    order = _order(values)
    if strategy == "top_k":
        return order[:k].astype(np.int64)
    if features is None:
        raise ValueError("features: required by strategy 'diverse' (bottleneck features)")
    feats = np.asarray(features, np.float64)
    if feats.ndim != 2 or len(feats) != n:
        raise ValueError(f"features: expected shape ({n}, d), got {feats.shape}")
    if not candidate_factor >= 1:
        raise ValueError(f"candidate_factor: expected >= 1, got {candidate_factor!r}")
    n_cand = min(n, max(k, int(np.ceil(candidate_factor * k))))
    cand = order[:n_cand]
    pool = feats[cand]
    labelled = np.empty((0, feats.shape[1]))
    if labelled_features is not None:
        labelled = np.asarray(labelled_features, np.float64).reshape(-1, feats.shape[1])
    both = np.concatenate([pool, labelled])
    std = both.std(axis=0)
    both = (both - both.mean(axis=0)) / np.where(std > 0, std, 1.0)
    picks = k_center_greedy(both, k, first=0, centers=range(len(pool), len(both)))
    return cand[np.asarray(picks, np.int64)]
