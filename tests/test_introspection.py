"""PAvPU, AURC and Dice risk: known answers from the definitions and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from napari_probseg.metrics import aurc, dice_risk, pavpu


def _four_patch_case():
    """8 x 8 map, 4 x 4 patches: AC, AU (accuracy exactly 0.5, uncertainty exactly 0.25), IC, IU."""
    pred = np.zeros((8, 8), np.int64)
    ref = np.zeros((8, 8), np.int64)
    unc = np.zeros((8, 8))
    ref[0:2, 4:8] = 1  # patch (0, 1): 8 of 16 wrong -> accuracy 0.5
    unc[0:4, 4:8] = 0.25  # dyadic: its mean is exact
    ref[4:7, 0:4] = 1  # patch (1, 0): 12 + 3 of 16 pixels wrong -> accuracy 1/16,
    ref[7, 0:3] = 1  # low uncertainty

    unc[4:8, 0:4] = 0.1
    pred[4:8, 4:8] = 1  # patch (1, 1): all wrong, very uncertain
    unc[4:8, 4:8] = 1.0
    return pred, ref, unc


def test_pavpu_known_answer_inclusive_thresholds():
    pred, ref, unc = _four_patch_case()
    r = pavpu(pred, ref, unc, uncertainty_threshold=0.25)
    assert (r.n_ac, r.n_au, r.n_ic, r.n_iu) == (1, 1, 1, 1)
    assert r.pavpu == pytest.approx(0.5)
    assert r.p_accurate_given_certain == pytest.approx(0.5)
    assert r.p_uncertain_given_inaccurate == pytest.approx(0.5)
    assert r.patch_size == (4, 4) and r.n_cropped == 0
    # Just above u_T the "uncertain" patch becomes certain (>= is inclusive).
    r2 = pavpu(pred, ref, unc, uncertainty_threshold=0.25 + 1e-9)
    assert (r2.n_ac, r2.n_au, r2.n_ic, r2.n_iu) == (2, 0, 1, 1)
    assert r2.pavpu == pytest.approx(0.75)
    assert r2.p_accurate_given_certain == pytest.approx(2 / 3)
    # Raising the accuracy threshold above 0.5 turns the half-right patch inaccurate.
    r3 = pavpu(pred, ref, unc, uncertainty_threshold=0.25, accuracy_threshold=0.51)
    assert (r3.n_ac, r3.n_au, r3.n_ic, r3.n_iu) == (1, 0, 1, 2)


def test_pavpu_crops_partial_patches_and_3d():
    pred, ref, unc = _four_patch_case()
    padded = [np.pad(a, ((0, 3), (0, 2)), constant_values=9) for a in (pred, ref, unc)]
    r = pavpu(*padded, uncertainty_threshold=0.25)
    assert (r.n_ac, r.n_au, r.n_ic, r.n_iu) == (1, 1, 1, 1)
    assert r.n_cropped == 11 * 10 - 64
    vol = [np.stack([a] * 4) for a in (pred, ref, unc)]  # (4, 8, 8): 4 patches of 4x4x4
    r3 = pavpu(*(torch.from_numpy(v) for v in vol), uncertainty_threshold=0.25)
    assert (r3.n_ac, r3.n_au, r3.n_ic, r3.n_iu) == (1, 1, 1, 1)
    assert r3.patch_size == (4, 4, 4)
    r4 = pavpu(*vol, uncertainty_threshold=0.25, patch_size=(2, 4, 4))
    assert r4.n_ac + r4.n_au + r4.n_ic + r4.n_iu == 8


def test_pavpu_undefined_conditionals_are_nan():
    pred = np.zeros((4, 4), int)
    r = pavpu(pred, pred, np.zeros((4, 4)), uncertainty_threshold=0.5)
    assert r.pavpu == 1.0 and math.isnan(r.p_uncertain_given_inaccurate)


def test_aurc_known_answers():
    risks = np.array([0.1, 0.5, 0.2])
    good = aurc(risks, [3.0, 1.0, 2.0])
    assert good.aurc == pytest.approx((0.1 + 0.15 + 0.8 / 3) / 3)
    assert good.e_aurc == pytest.approx(0.0)
    np.testing.assert_allclose(good.coverage, [1 / 3, 2 / 3, 1])
    bad = aurc(risks, [1.0, 3.0, 2.0])
    assert bad.aurc == pytest.approx((0.5 + 0.35 + 0.8 / 3) / 3)
    assert bad.e_aurc == pytest.approx(bad.aurc - good.aurc)
    tied = aurc(risks, [1.0, 1.0, 1.0])  # no information: every coverage sees the mean risk
    assert tied.aurc == pytest.approx(0.8 / 3)


@given(
    st.lists(st.tuples(st.floats(0, 1), st.integers(0, 3)), min_size=1, max_size=30),
    st.randoms(use_true_random=False),
)
def test_aurc_is_order_invariant_and_above_oracle(pairs, rnd):
    risks = np.array([p[0] for p in pairs])
    conf = np.array([p[1] for p in pairs], dtype=float)  # many ties
    a = aurc(risks, conf)
    perm = list(range(len(pairs)))
    rnd.shuffle(perm)
    b = aurc(risks[perm], conf[perm])
    assert a.aurc == pytest.approx(b.aurc, abs=1e-12)
    assert a.e_aurc >= -1e-12
    assert 0.0 <= a.aurc <= 1.0


def test_dice_risk():
    a = np.zeros((4, 4), int)
    b = np.zeros((4, 4), int)
    assert dice_risk(a, b) == 0.0  # empty vs empty
    a[0, :2] = 1
    b[0, 1:3] = 1
    assert dice_risk(a, b) == pytest.approx(0.5)
    a[3, 3] = 2  # class 2 only in a: Dice 0, averaged with 0.5
    assert dice_risk(a, b) == pytest.approx(0.75)


def test_errors_name_the_argument():
    m = np.zeros((8, 8), int)
    with pytest.raises(ValueError, match=r"^uncertainty"):
        pavpu(m, m, np.zeros((8, 7)), uncertainty_threshold=0.1)
    with pytest.raises(ValueError, match=r"^patch_size"):
        pavpu(m, m, np.zeros((8, 8)), uncertainty_threshold=0.1, patch_size=16)
    with pytest.raises(ValueError, match=r"^accuracy_threshold"):
        pavpu(m, m, np.zeros((8, 8)), uncertainty_threshold=0.1, accuracy_threshold=2)
    with pytest.raises(ValueError, match=r"^confidences"):
        aurc([0.1, 0.2], [1.0])
    with pytest.raises(ValueError, match=r"^risks"):
        aurc([], [])
