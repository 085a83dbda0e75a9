"""GED, HM-IoU, NCC and IoU matrices against the formulas (loops over masks, not pixels)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from napari_probseg.core import observer
from napari_probseg.metrics import (
    ged,
    hm_iou,
    iou_matrix,
    ncc,
    observer_metrics,
    summarize,
    variance_map,
)

# --------------------------------------------------------------- reference implementations


def ref_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two full masks, averaged over foreground classes present in either; empty-empty 1."""
    scores = []
    for c in range(1, int(max(a.max(), b.max())) + 1):
        union = np.logical_or(a == c, b == c).sum()
        if union:
            scores.append(np.logical_and(a == c, b == c).sum() / union)
    return float(np.mean(scores)) if scores else 1.0


def ref_ged(samples, raters, unbiased=False):
    def mean_d(xs, ys, skip_self):
        vals = [
            1 - ref_iou(x, y)
            for i, x in enumerate(xs)
            for j, y in enumerate(ys)
            if not (skip_self and i == j)
        ]
        return float(np.mean(vals))

    cross = mean_d(samples, raters, False)
    ss = mean_d(samples, samples, unbiased)
    rr = mean_d(raters, raters, unbiased)
    return 2 * cross - ss - rr


def ref_hm_iou(samples, raters):
    """Brute force over all matchings of the lcm-replicated sets (tiny sets only)."""
    size = math.lcm(len(samples), len(raters))
    s = [samples[i % len(samples)] for i in range(size)]
    r = [raters[i % len(raters)] for i in range(size)]
    iou = np.array([[ref_iou(a, b) for b in r] for a in s])
    return max(np.mean(iou[np.arange(size), list(p)]) for p in itertools.permutations(range(size)))


def ref_ncc(samples, raters, n_classes):
    def vmap(m):
        return np.mean([(m == c).mean(0) * (1 - (m == c).mean(0)) for c in range(1, n_classes)], 0)

    a, b = vmap(samples).ravel(), vmap(raters).ravel()
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.mean((a - a.mean()) * (b - b.mean())) / (a.std() * b.std()))


def _masks(rng, n, shape, n_classes=2, p_empty=0.0):
    base = rng.random(shape)
    out = np.zeros((n, *shape), dtype=np.uint8)
    for i in range(n):
        if rng.random() < p_empty:
            continue
        noisy = base + rng.normal(0, 0.2, shape)
        out[i] = np.digitize(noisy, np.linspace(0.4, 1.0, n_classes)[: n_classes - 1])
    return out


# ----------------------------------------------------------------------------- known answers


def test_iou_known_answers_and_empty_masks():
    a = np.zeros((3, 4, 4), np.uint8)
    a[1, :2, :2] = 1  # 4 pixels
    a[2, :2, :] = 1  # 8 pixels, contains a[1]
    iou = iou_matrix(a)
    expected = np.array([[1, 0, 0], [0, 1, 0.5], [0, 0.5, 1]])
    np.testing.assert_allclose(iou, expected)


def test_iou_multiclass_averages_present_classes():
    a = np.array([[[1, 1, 2, 0]]])
    b = np.array([[[1, 0, 0, 0]]])
    # class 1: I=1, U=2 -> 0.5; class 2 present only in a: IoU 0; mean 0.25. Class 3 absent.
    assert iou_matrix(a[:, None], b[:, None], n_classes=4)[0, 0] == pytest.approx(0.25)


def test_ged_all_agree_is_zero_and_disjoint_is_two():
    m = np.zeros((1, 8, 8), np.uint8)
    m[0, 2:5, 2:5] = 1
    same = ged(np.repeat(m, 5, 0), np.repeat(m, 3, 0))
    assert same.ged == 0.0 and same.cross == 0.0
    other = np.zeros_like(m)
    other[0, 6:, 6:] = 1
    r = ged(np.repeat(m, 4, 0), np.repeat(other, 2, 0))
    assert r.ged == pytest.approx(2.0)
    assert (r.n_samples, r.n_raters, r.unbiased) == (4, 2, False)
    assert r.distance == pytest.approx(math.sqrt(2.0))


def test_ged_biased_includes_self_pairs():
    s = np.zeros((2, 1, 4), np.uint8)
    s[0, 0, :2] = 1
    s[1, 0, 2:] = 1  # the two samples are disjoint: d = 1
    y = s.copy()
    biased = ged(s, y)
    # cross: pairs (0,0),(1,1) d=0, (0,1),(1,0) d=1 -> 0.5; within (with self) 0.5 each.
    assert (biased.cross, biased.within_samples, biased.within_raters) == (0.5, 0.5, 0.5)
    assert biased.ged == pytest.approx(0.0)
    unbiased = ged(s, y, unbiased=True)
    assert unbiased.within_samples == 1.0 and unbiased.ged == pytest.approx(-1.0)


def test_hm_iou_known_answer_with_replication():
    s = np.zeros((2, 1, 4), np.uint8)
    s[0, 0, :2] = 1
    s[1, 0, 2:] = 1
    y = s[:1]  # one rater equal to sample 0: lcm = 2, rater replicated twice
    r = hm_iou(s, y)
    assert r.n_matched == 2
    assert r.hm_iou == pytest.approx(0.5)
    np.testing.assert_allclose(sorted(r.matched_iou), [0.0, 1.0])


def test_ncc_known_answer_and_nan_when_raters_agree():
    s = np.zeros((2, 1, 4), np.uint8)
    s[0, 0, :3] = 1
    s[1, 0, :1] = 1  # variance map: [0, .25, .25, 0]
    y = np.zeros((2, 1, 4), np.uint8)
    y[0, 0, :2] = 1  # variance map: [0, .25, 0, 0]
    y[1, 0, :1] = 1
    a, b = np.array([0, 0.25, 0.25, 0]), np.array([0, 0.25, 0, 0])
    expected = np.corrcoef(a, b)[0, 1]
    assert ncc(s, y) == pytest.approx(expected)
    np.testing.assert_allclose(variance_map(s)[0], a)
    assert math.isnan(ncc(s, np.repeat(y[:1], 3, 0)))  # all raters agree: constant map


def test_summarize_counts_skipped_nans():
    out = summarize([0.5, float("nan"), 0.7, float("nan")])
    assert (out.n, out.n_nan) == (2, 2)
    assert out.mean == pytest.approx(0.6) and out.std == pytest.approx(0.1)
    assert math.isnan(summarize([float("nan")]).mean)


def test_n_samples_takes_the_first_samples():
    rng = np.random.default_rng(0)
    s = _masks(rng, 20, (16, 16))
    y = _masks(rng, 3, (16, 16))
    assert ged(s, y).n_samples == 16
    assert ged(s, y).ged == pytest.approx(ged(s[:16], y, n_samples=None).ged)
    assert ged(s[:5], y).n_samples == 5  # fewer available: all are used
    assert hm_iou(s, y, n_samples=None).n_samples == 20


# ----------------------------------------------------------------- against the references


@pytest.mark.parametrize("shape", [(12, 10), (5, 6, 7)])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_against_reference_implementations(shape, n_classes):
    rng = np.random.default_rng(sum(shape) + n_classes)
    s = _masks(rng, 6, shape, n_classes, p_empty=0.2)
    y = _masks(rng, 3, shape, n_classes, p_empty=0.3)
    iou = iou_matrix(s, y)
    expected = np.array([[ref_iou(a, b) for b in y] for a in s])
    np.testing.assert_allclose(iou, expected, atol=1e-12)
    for unbiased in (False, True):
        assert ged(s, y, unbiased=unbiased).ged == pytest.approx(ref_ged(s, y, unbiased), abs=1e-12)
    assert hm_iou(s, y).hm_iou == pytest.approx(ref_hm_iou(s, y), abs=1e-12)
    assert ncc(s, y) == pytest.approx(ref_ncc(s, y, n_classes), abs=1e-12)
    both = observer_metrics(torch.from_numpy(s), torch.from_numpy(y))
    assert both.ged.ged == pytest.approx(ref_ged(s, y), abs=1e-12)
    assert both.hm_iou.hm_iou == pytest.approx(ref_hm_iou(s, y), abs=1e-12)


def test_matmul_and_popcount_counts_agree_across_chunks():
    rng = np.random.default_rng(5)
    s = _masks(rng, 7, (33, 35), n_classes=3)
    y = _masks(rng, 2, (33, 35), n_classes=3).astype(np.int64)
    a = observer._intersections([s, y], None, 100, method="matmul")
    b = observer._intersections([s, y], None, 64, method="popcount")
    c = observer._intersections([s, y], None, 1 << 18, method="popcount")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    cross = observer._intersections([s, y], None, 64, method="popcount", cross_only=True)
    n = len(s)
    np.testing.assert_array_equal(cross[:, :n, n:], a[:, :n, n:])
    diag = np.arange(n + len(y))
    np.testing.assert_array_equal(cross[:, diag, diag], a[:, diag, diag])
    np.testing.assert_allclose(iou_matrix(s, chunk_pixels=97), iou_matrix(s))


# ------------------------------------------------------------------------------- properties


@st.composite
def _mask_sets(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    n = draw(st.integers(1, 6))
    m = draw(st.integers(1, 4))
    k = draw(st.integers(2, 3))
    rng = np.random.default_rng(seed)
    shape = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    return _masks(rng, n, shape, k, 0.3), _masks(rng, m, shape, k, 0.3)


@given(_mask_sets())
def test_iou_symmetric_bounded_and_one_on_diagonal(sets):
    s, y = sets
    both = np.concatenate([s, y])
    iou = iou_matrix(both)
    np.testing.assert_allclose(iou, iou.T)
    np.testing.assert_allclose(np.diag(iou), 1.0)
    assert ((iou >= 0) & (iou <= 1)).all()
    np.testing.assert_allclose(iou_matrix(s, y), iou_matrix(y, s).T)


@given(_mask_sets())
def test_binary_biased_ged_is_nonnegative(sets):
    s, y = ((m > 0).astype(np.uint8) for m in sets)
    # 1 - IoU (Jaccard distance) is of negative type, so the V-statistic is >= 0.
    assert ged(s, y).ged >= -1e-12
    assert 0.0 <= hm_iou(s, y).hm_iou <= 1.0


# ------------------------------------------------------------------------------ validation


def test_errors_name_the_argument():
    s = np.zeros((3, 4, 4), np.uint8)
    with pytest.raises(ValueError, match=r"^references"):
        ged(s, np.zeros((2, 4, 5), np.uint8))
    with pytest.raises(ValueError, match=r"^unbiased"):
        ged(s, s[:1], unbiased=True)
    with pytest.raises(ValueError, match=r"^n_samples"):
        hm_iou(s, s, n_samples=0)
    with pytest.raises(ValueError, match=r"^samples"):
        ncc(s.astype(float), s)
    with pytest.raises(ValueError, match=r"^n_classes"):
        iou_matrix(s + 2, n_classes=2)
