"""Conformal inner/outer bands: known thresholds and held-out coverage on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_probseg.core.conformal import _fdp_envelope
from napari_probseg.metrics import ConformalBands


def _synthetic(n_images: int, seed: int, size: int = 24):
    """Discs with a soft, noisy probability map whose radius is off by a random amount.

    Returns a stack of foreground probability maps ``(n, size, size)`` and reference masks. About
    5% of the images have no reference foreground (a faint lesion nobody drew).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(8, size - 8, (2, n_images))
    dist = np.hypot(yy[None] - cy[:, None, None], xx[None] - cx[:, None, None])
    r_true = rng.uniform(3, 7, n_images)
    r_pred = r_true + rng.normal(0, 0.5, n_images)  # the model misjudges the size
    width = rng.uniform(0.5, 1.5, n_images)
    logit = (r_pred[:, None, None] - dist) / width[:, None, None]
    logit += rng.normal(0, 1.0, logit.shape)  # pixel noise
    probs = 1.0 / (1.0 + np.exp(-logit))
    refs = (dist < r_true[:, None, None]).astype(np.uint8)
    refs[rng.random(n_images) < 0.05] = 0
    return probs, refs


@pytest.fixture(scope="module")
def data():
    return _synthetic(1500, seed=0), _synthetic(1500, seed=1)


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_heldout_coverage_matches_target(data, alpha):
    (cal_p, cal_y), (test_p, test_y) = data
    bands = ConformalBands.calibrate(list(cal_p), list(cal_y), alpha=alpha)
    assert bands.n_calibration == 1500 and bands.alpha == alpha
    cov = bands.coverage(test_p, test_y)
    assert cov.n_images == 1500
    assert abs(cov.outer - (1 - alpha)) <= 0.02
    # The inner mask's false-positive share is controlled too (conservatively: monotone envelope).
    assert cov.inner_false_positive <= alpha + 0.02
    if alpha <= 0.1:  # at a loose level both masks may be permissive and cross
        assert bands.lambda_inner > bands.lambda_outer
    inner, outer = bands.apply(test_p[0])
    assert inner.dtype == bool and not (inner & ~outer).any()


def test_smaller_alpha_gives_wider_outer_and_tighter_inner(data):
    (cal_p, cal_y), _ = data
    loose = ConformalBands.calibrate(cal_p, cal_y, alpha=0.2)
    strict = ConformalBands.calibrate(cal_p, cal_y, alpha=0.05)
    assert strict.lambda_outer < loose.lambda_outer
    assert strict.lambda_inner > loose.lambda_inner


def test_outer_threshold_known_answer():
    # Two images, one reference-foreground pixel each at p = 0.3 and 0.7; the rest background.
    p = [np.array([[0.3, 0.1]]), np.array([[0.7, 0.2]])]
    y = [np.array([[1, 0]]), np.array([[1, 0]])]
    # n = 2: R(lam) = 0 for lam <= 0.3, 1/2 up to 0.7, 1 above; bound 2/3 R + 1/3 <= alpha.
    assert ConformalBands.calibrate(p, y, alpha=0.5).lambda_outer == pytest.approx(0.3)
    assert ConformalBands.calibrate(p, y, alpha=0.7).lambda_outer == pytest.approx(0.7)
    # alpha < 1/(n+1): only the safe threshold 0 (the whole image) is valid.
    assert ConformalBands.calibrate(p, y, alpha=0.3).lambda_outer == 0.0


def test_inner_threshold_known_answer_and_safe_end():
    # One image: p = [0.9 (bg), 0.8 (fg), 0.6 (fg)]. FDP: top-1 = 1, top-2 = 1/2, top-3 = 1/3.
    p = np.array([[0.9, 0.8, 0.6]])
    y = np.array([[0, 1, 1]])
    env = _fdp_envelope(p.ravel(), y.ravel() > 0, np.array([0.5, 0.85, 0.95]))
    np.testing.assert_allclose(env, [1.0, 1.0, 0.0])  # sup over higher thresholds
    # Background is the most confident pixel: with one image only the empty mask is safe.
    bands = ConformalBands.calibrate([p], [y], alpha=0.6)
    assert bands.lambda_inner > 0.9
    assert not bands.apply(p)[0].any()
    # alpha below 1/(n+1) = 1/2: the safe end just above 1 leaves even saturated pixels out.
    strict = ConformalBands.calibrate([p], [y], alpha=0.4)
    assert strict.lambda_inner > 1.0
    inner, outer = strict.apply(np.ones((2, 2)))
    assert not inner.any() and outer.all()


def test_ties_in_saturated_maps_use_reachable_masks_only():
    p = np.array([1.0, 1.0, 1.0, 0.5])
    y = np.array([True, True, False, True])
    # {p >= 1} holds all three saturated pixels (FDP 1/3); no threshold yields a subset of them.
    env = _fdp_envelope(p, y, np.array([0.4, 1.0]))
    np.testing.assert_allclose(env, [1 / 3, 1 / 3])


def test_class_probabilities_and_torch_inputs():
    probs, refs = _synthetic(200, seed=3)
    two_class = np.stack([1 - probs, probs], axis=1)  # (n, K=2, H, W)
    a = ConformalBands.calibrate(probs, refs, alpha=0.1)
    b = ConformalBands.calibrate(torch.from_numpy(two_class), torch.from_numpy(refs), alpha=0.1)
    assert a.lambda_outer == pytest.approx(b.lambda_outer)
    assert a.lambda_inner == pytest.approx(b.lambda_inner)


def test_errors_name_the_argument():
    p, y = _synthetic(3, seed=4)
    with pytest.raises(ValueError, match=r"^alpha"):
        ConformalBands.calibrate(p, y, alpha=1.5)
    with pytest.raises(ValueError, match=r"^refs_list"):
        ConformalBands.calibrate(p, y[:2], alpha=0.1)
    with pytest.raises(ValueError, match=r"^refs_list"):
        ConformalBands.calibrate(p, y.astype(float), alpha=0.1)
    with pytest.raises(ValueError, match=r"^probs_list"):
        ConformalBands.calibrate(p[:, :5], y, alpha=0.1)
