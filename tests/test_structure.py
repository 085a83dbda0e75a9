"""Structure measures of mask sets, against hand-computed answers and brute-force references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_probseg.uncertainty import (
    consensus,
    distinct_hypotheses,
    envelope,
    factorized_entropy,
    iou_matrix,
    pairwise_dice,
    sample_set_entropy,
    volume_cov,
)


def _circle(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2).astype(np.uint8)


def _shifted_circles(n_positions: int, repeats: int = 1) -> np.ndarray:
    """A circle at one of ``n_positions`` equally likely places (the translational toy)."""
    masks = [
        _circle((64, 96), (32, 16 + 8 * i), 6) for i in range(n_positions) for _ in range(repeats)
    ]
    return np.stack(masks)


# ---------------------------------------------------------------------------- the circle toy


@pytest.mark.parametrize(("n", "repeats"), [(2, 1), (4, 3), (8, 2)])
def test_circle_toy_sample_set_vs_factorized_entropy(n, repeats):
    masks = _shifted_circles(n, repeats)
    assert sample_set_entropy(masks) == pytest.approx(math.log2(n))
    assert sample_set_entropy(masks, base=None) == pytest.approx(math.log(n))
    fact = factorized_entropy(masks)
    # Each of the ~113 circle pixels of each position is foreground in 1/n of the samples
    # (positions 8 px apart, radius 6: neighbouring circles overlap a little).
    assert fact > 20 * math.log2(n)
    assert fact > 50


def test_factorized_entropy_hand_computed():
    a = np.zeros((2, 4, 4), np.uint8)
    a[1, 0, :3] = 1  # 3 pixels differ between the two samples: 1 bit each
    assert factorized_entropy(a) == pytest.approx(3.0)
    assert factorized_entropy(a, base=None) == pytest.approx(3 * math.log(2))
    b = np.zeros((4, 3, 3), np.int16)
    b[2, 1, 1], b[3, 1, 1] = 1, 2  # one pixel with labels (0, 0, 1, 2): 1.5 bits
    assert factorized_entropy(b) == pytest.approx(1.5)
    assert factorized_entropy(np.ones((5, 3, 3), int)) == 0.0


def test_sample_set_entropy_hand_computed():
    base = np.zeros((3, 3), np.int32)
    a, b, c = base.copy(), base.copy(), base.copy()
    b[0, 0] = 1
    c[2, 2] = 2
    masks = np.stack([a, a, b, c])  # shares 1/2, 1/4, 1/4
    assert sample_set_entropy(masks) == pytest.approx(1.5)
    assert sample_set_entropy(masks[:1]) == 0.0
    assert sample_set_entropy(torch.from_numpy(masks)) == pytest.approx(1.5)


# ---------------------------------------------------------------------------- overlap measures


def test_pairwise_dice_hand_computed():
    masks = np.zeros((3, 32, 32), np.uint8)
    for i in range(3):
        masks[i, 10:20, 5 + 3 * i : 15 + 3 * i] = 1  # 10x10 squares shifted by 3 px
    # Pairs: shift 3 -> overlap 70 px, Dice 0.7; shift 6 -> 40 px, Dice 0.4.
    assert pairwise_dice(masks) == pytest.approx((0.7 + 0.7 + 0.4) / 3)
    assert pairwise_dice(np.zeros((4, 5, 5), int)) == 1.0  # empty-empty pairs agree
    empty_and_full = np.stack([np.zeros((5, 5), int), np.ones((5, 5), int)])
    assert pairwise_dice(empty_and_full) == 0.0
    assert math.isnan(pairwise_dice(masks[:1]))


def test_pairwise_dice_multiclass_means_over_present_classes():
    a = np.zeros((4, 4), int)
    b = np.zeros((4, 4), int)
    a[0, :2] = 1  # class 1 in both (identical): Dice 1
    b[0, :2] = 1
    a[3, 3] = 2  # class 2 only in a: Dice 0; class 3 in neither: ignored
    assert pairwise_dice(np.stack([a, b])) == pytest.approx(0.5)


def _brute_iou(masks, others):
    out = np.zeros((len(masks), len(others)))
    for i, j in itertools.product(range(len(masks)), range(len(others))):
        scores = []
        for c in np.union1d(np.unique(masks[i]), np.unique(others[j])):
            if c == 0:
                continue
            x, y = masks[i] == c, others[j] == c
            scores.append((x & y).sum() / (x | y).sum())
        out[i, j] = np.mean(scores) if scores else 1.0
    return out


def _brute_dice(masks):
    values = []
    for i, j in itertools.combinations(range(len(masks)), 2):
        scores = []
        for c in np.union1d(np.unique(masks[i]), np.unique(masks[j])):
            if c == 0:
                continue
            x, y = masks[i] == c, masks[j] == c
            scores.append(2 * (x & y).sum() / (x.sum() + y.sum()))
        values.append(np.mean(scores) if scores else 1.0)
    return float(np.mean(values))


@given(
    hnp.arrays(
        np.uint8,
        st.tuples(st.integers(2, 5), st.integers(1, 6), st.integers(1, 6)),
        elements=st.integers(0, 3),
    )
)
def test_overlaps_match_brute_force(masks):
    np.testing.assert_allclose(iou_matrix(masks), _brute_iou(masks, masks), atol=1e-12)
    assert pairwise_dice(masks) == pytest.approx(_brute_dice(masks))


def test_iou_matrix_cross_and_3d():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, (3, 4, 5, 6))
    b = rng.integers(0, 3, (2, 4, 5, 6))
    m = iou_matrix(a, b)
    assert m.shape == (3, 2)
    np.testing.assert_allclose(m, _brute_iou(a, b), atol=1e-12)
    np.testing.assert_allclose(np.diag(iou_matrix(a)), 1.0)
    with pytest.raises(ValueError, match=r"^others:"):
        iou_matrix(a, b[:, :3])


def test_volume_cov():
    masks = np.zeros((2, 10, 10), np.uint8)
    masks[0, :1] = 1  # 10 voxels
    masks[1, :3] = 2  # 30 voxels: mean 20, std 10
    assert volume_cov(masks) == pytest.approx(0.5)
    assert math.isnan(volume_cov(np.zeros((3, 4, 4), int)))
    assert volume_cov(masks[:1]) == 0.0


# ---------------------------------------------------------------------------- consensus, envelope


def test_consensus_majority_and_ties():
    masks = np.array([[[0, 1, 2, 1]], [[1, 1, 2, 2]], [[1, 0, 0, 2]], [[0, 0, 0, 1]]])
    # Column votes: {0:2, 1:2} tie -> 0; {1:2, 0:2} tie -> 0; {2:2, 0:2} -> 0; {1:2, 2:2} -> 1.
    np.testing.assert_array_equal(consensus(masks), [[0, 0, 0, 1]])
    np.testing.assert_array_equal(consensus(masks[:3]), [[1, 1, 2, 2]])
    assert consensus(masks).dtype == masks.dtype


def test_envelope_intersection_union_and_quantile():
    share = np.array([0, 1, 2, 3, 4])  # voxel i is foreground in i of 4 samples
    masks = np.stack([(share > s).astype(np.uint8)[None] for s in range(4)])
    env = envelope(masks)
    np.testing.assert_array_equal(env.inner[0], [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(env.outer[0], [0, 1, 1, 1, 1])
    env = envelope(masks, quantile=0.25)  # inner: share >= 0.75, outer: share > 0.25
    np.testing.assert_array_equal(env.inner[0], [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(env.outer[0], [0, 0, 1, 1, 1])
    assert np.all(env.outer[env.inner])
    two = masks * 2
    two[0, 0, 4] = 1
    np.testing.assert_array_equal(envelope(two, label=2).inner[0], [0, 0, 0, 0, 0])


# ---------------------------------------------------------------------------- hypotheses


def test_distinct_hypotheses_finds_two_modes():
    left = [_circle((40, 60), (20, 15 + d), 8) for d in (0, 0, 1, 0, 1, 0)]
    right = [_circle((40, 60), (20, 45), 8), _circle((40, 60), (21, 45), 8)]
    masks = np.stack([left[0], right[0], *left[1:], right[1]])  # modes interleaved
    hyps = distinct_hypotheses(masks)
    assert [h.share for h in hyps] == [0.75, 0.25]
    assert hyps[0].members == (0, 2, 3, 4, 5, 6)
    assert hyps[1].members == (1, 7)
    medoid = hyps[0].mask
    assert any(np.array_equal(medoid, masks[i]) for i in hyps[0].members)
    np.testing.assert_array_equal(medoid, left[0])  # the 4 unshifted copies are central
    assert 0 < hyps[1].spread < 0.2
    only = distinct_hypotheses(masks, max_hypotheses=1)
    assert len(only) == 1 and only[0].share == 0.75
    everything = distinct_hypotheses(masks, max_distance=1.0)
    assert len(everything) == 1 and everything[0].share == 1.0
    single = distinct_hypotheses(masks[:1])
    assert single[0].members == (0,) and single[0].spread == 0.0


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "func",
    [
        pairwise_dice,
        volume_cov,
        sample_set_entropy,
        factorized_entropy,
        consensus,
        envelope,
        distinct_hypotheses,
        iou_matrix,
    ],
)
@pytest.mark.parametrize(
    ("masks", "match"),
    [
        (np.zeros((2, 4, 4), np.float32), r"^masks: expected integer"),
        (np.zeros((4, 4), np.uint8), r"^masks: expected shape"),
        (-np.ones((2, 4, 4), np.int8), r"^masks: labels must be >= 0"),
        (np.zeros((0, 4, 4), np.uint8), r"^masks: needs at least 1"),
    ],
)
def test_mask_errors(func, masks, match):
    with pytest.raises(ValueError, match=match):
        func(masks)


def test_option_errors():
    masks = np.zeros((3, 4, 4), np.uint8)
    with pytest.raises(ValueError, match=r"^base:"):
        sample_set_entropy(masks, base=1)
    with pytest.raises(ValueError, match=r"^base:"):
        factorized_entropy(masks, base=0)
    with pytest.raises(ValueError, match=r"^quantile:"):
        envelope(masks, quantile=0.5)
    with pytest.raises(ValueError, match=r"^label:"):
        envelope(masks, label=0)
    with pytest.raises(ValueError, match=r"^max_distance:"):
        distinct_hypotheses(masks, max_distance=1.5)
    with pytest.raises(ValueError, match=r"^max_hypotheses:"):
        distinct_hypotheses(masks, max_hypotheses=0)
