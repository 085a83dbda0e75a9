"""Calibration metrics: known answers, torchmetrics cross-checks, streaming properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

from napari_probseg.metrics import (
    CalibrationAccumulator,
    adaptive_ece,
    calibration,
    fit_temperature,
)

# --------------------------------------------------------------------------- known answers


def test_foreground_map_known_answer_with_saturated_confidence_in_last_bin():
    # Top-label confidences: 1.0 (fg), 1.0 (fg), 1.0 (bg, p=0), 0.6 (fg); correct: 1, 0, 1, 1.
    p = np.array([[1.0, 1.0], [0.0, 0.6]])
    y = np.array([[1, 0], [0, 1]])
    r = calibration(p, y, n_bins=4)
    assert r.counts.tolist() == [0, 0, 1, 3]  # exactly 1.0 lands in the last bin
    assert r.n_pixels == 4
    assert r.ece == pytest.approx(3 / 4 * (1 - 2 / 3) + 1 / 4 * 0.4)
    assert r.mce == pytest.approx(0.4)
    assert r.ace == pytest.approx((1 / 3 + 0.4) / 2)
    np.testing.assert_allclose(r.mean_confidence[2:], [0.6, 1.0])
    np.testing.assert_allclose(r.accuracy[2:], [1.0, 2 / 3])
    assert np.isnan(r.accuracy[:2]).all()
    np.testing.assert_allclose(r.bin_edges, [0, 0.25, 0.5, 0.75, 1.0])
    assert r.label_kind == "hard"


def test_multiclass_known_answer():
    # 3 classes, 3 pixels: (conf, pred) = (0.7, 0), (0.5, 2), (0.4, 1); labels 0, 1, 1.
    p = np.array([[0.7, 0.2, 0.3], [0.2, 0.3, 0.4], [0.1, 0.5, 0.3]])[:, :, None]  # (3, 3, 1)
    y = np.array([[0], [1], [1]])
    r = calibration(p, y, n_bins=5)  # bins of width 0.2: 0.4 -> bin 2, 0.5 -> bin 2, 0.7 -> bin 3
    assert r.counts.tolist() == [0, 0, 2, 1, 0]
    gap2 = abs(0.5 - 0.45)  # accuracy 1/2, mean confidence 0.45
    gap3 = abs(1.0 - 0.7)
    assert r.ece == pytest.approx(2 / 3 * gap2 + 1 / 3 * gap3)
    assert r.mce == pytest.approx(gap3)
    assert r.ace == pytest.approx((gap2 + gap3) / 2)


def test_binary_tie_at_half_predicts_background_like_argmax():
    fg = np.array([[0.5, 0.5]])
    a = calibration(fg, np.array([[0, 1]]), n_bins=10)
    b = calibration(np.stack([1 - fg, fg]), np.array([[0, 1]]), n_bins=10)
    assert a.ece == pytest.approx(b.ece) == pytest.approx(0.0)  # conf 0.5, accuracy 1/2


def test_ties_go_to_the_lowest_class_like_argmax():
    probs = np.array([[0.4, 0.2, 0.5], [0.4, 0.4, 0.25], [0.2, 0.4, 0.25]])[:, None, :]
    # Pixel 0 ties classes 0/1 -> predicts 0; pixel 1 ties 1/2 -> 1; pixel 2 predicts 0.
    r = calibration(probs, np.array([[1, 1, 0]]), n_bins=10)
    assert r.counts[4] == 2 and r.counts[5] == 1
    assert r.accuracy[4] == 0.5  # pixel 0 wrong, pixel 1 right
    assert r.accuracy[5] == 1.0


def test_soft_labels_use_expected_agreement():
    probs = np.array([[0.2, 0.9], [0.8, 0.1]])[:, None, :]  # (K=2, 1, 2)
    soft = np.array([[0.25, 0.5], [0.75, 0.5]])[:, None, :]  # rater means
    r = calibration(probs, soft, n_bins=10, reference="mean of 4 raters")
    # pixel 0: pred 1, conf 0.8, agreement 0.75; pixel 1: pred 0, conf 0.9, agreement 0.5
    assert r.label_kind == "soft"
    assert r.reference == "mean of 4 raters"
    assert r.ece == pytest.approx(0.5 * 0.05 + 0.5 * 0.4)
    # The same from a 2-D foreground map with a foreground-share map.
    r2 = calibration(probs[1, 0][None], soft[1, 0][None], n_bins=10)
    assert r2.ece == pytest.approx(r.ece)
    assert r2.label_kind == "soft"


def test_majority_reference_and_mask():
    raters = np.array([[[1, 1, 0, 0]], [[1, 0, 0, 0]], [[1, 1, 1, 0]]])
    majority = (raters.mean(0) > 0.5).astype(int)
    p = np.array([[0.9, 0.6, 0.4, 0.1]])
    r = calibration(p, majority, n_bins=10, reference="majority of 3 raters", mask=p != 0.4)
    assert r.n_pixels == 3
    assert r.reference == "majority of 3 raters"
    assert r.ece == pytest.approx((0.1 + 0.4 + 0.1) / 3)


def test_adaptive_ece_equal_mass_bins():
    p = np.array([[0.55, 0.65, 0.9, 0.95]])
    y = np.array([[1, 0, 1, 1]])
    # Two equal-mass bins: {0.55, 0.65} acc 1/2 conf 0.6; {0.9, 0.95} acc 1 conf 0.925.
    assert adaptive_ece(p, y, n_bins=2) == pytest.approx(0.5 * 0.1 + 0.5 * 0.075)
    assert np.isnan(adaptive_ece(p, y, mask=np.zeros_like(y, bool)))


def _reference_errors(conf, correct, n_bins):
    """ECE/MCE/ACE from the definitions, with an explicit loop over bins."""
    idx = np.minimum(np.floor(conf * n_bins).astype(int), n_bins - 1)
    gaps, weights = [], []
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            gaps.append(abs(correct[sel].mean() - conf[sel].mean()))
            weights.append(sel.mean())
    gaps = np.array(gaps)
    return float(np.sum(np.array(weights) * gaps)), float(gaps.max()), float(gaps.mean())


@pytest.mark.parametrize("soft", [False, True])
def test_large_image_in_blocks_matches_definition(soft):
    # 310 x 300 = 93000 pixels: more than one internal block of 2**16 pixels.
    rng = np.random.default_rng(7)
    probs = rng.dirichlet([0.5, 0.5, 0.5], size=(310, 300)).transpose(2, 0, 1)
    mask = rng.random((310, 300)) < 0.8
    if soft:
        labels = rng.dirichlet([1, 1, 1], size=(310, 300)).transpose(2, 0, 1)
        correct = np.take_along_axis(labels, probs.argmax(0)[None], 0)[0]
    else:
        labels = rng.integers(0, 3, size=(310, 300))
        correct = (probs.argmax(0) == labels).astype(float)
    r = calibration(probs, labels, n_bins=12, mask=mask)
    ece, mce, ace = _reference_errors(probs.max(0)[mask], correct[mask], 12)
    assert r.n_pixels == mask.sum()
    assert (r.ece, r.mce, r.ace) == pytest.approx((ece, mce, ace), abs=1e-12)


def test_invalid_block_leaves_accumulator_unchanged():
    acc = CalibrationAccumulator(n_bins=5)
    p = np.full((300, 300), 0.7)
    p[-1, -1] = np.nan  # in the last internal block
    with pytest.raises(ValueError, match=r"^probs"):
        acc.update(p, np.ones((300, 300), int))
    assert acc.counts.sum() == 0


def test_empty_input_gives_nan():
    r = CalibrationAccumulator(n_bins=5).result()
    assert np.isnan(r.ece) and r.n_pixels == 0


# --------------------------------------------------------------------- torchmetrics cross-check


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_classes", [2, 4])
def test_multiclass_matches_torchmetrics(seed, n_classes):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n_classes, 37, 29)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(0)
    labels = rng.integers(0, n_classes, size=(37, 29))
    ours = calibration(probs.astype(np.float32), labels, n_bins=15)
    flat_p = torch.from_numpy(probs.astype(np.float32).reshape(n_classes, -1).T)
    flat_y = torch.from_numpy(labels.reshape(-1))
    for norm, value in (("l1", ours.ece), ("max", ours.mce)):
        metric = MulticlassCalibrationError(num_classes=n_classes, n_bins=15, norm=norm)
        assert value == pytest.approx(float(metric(flat_p, flat_y)), abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_binary_foreground_confidence_matches_torchmetrics(seed):
    rng = np.random.default_rng(seed)
    fg = rng.random((40, 50))
    y = (rng.random((40, 50)) < fg**1.5).astype(np.int64)
    ours = calibration(fg, y, n_bins=10, confidence="foreground")
    for norm, value in (("l1", ours.ece), ("max", ours.mce)):
        metric = BinaryCalibrationError(n_bins=10, norm=norm)
        expected = float(metric(torch.from_numpy(fg.ravel()), torch.from_numpy(y.ravel())))
        assert value == pytest.approx(expected, abs=1e-6)
    # Top-label on a foreground map equals torchmetrics' multiclass on (1 - p, p).
    top = calibration(fg, y, n_bins=10)
    stacked = torch.from_numpy(np.stack([1 - fg, fg]).reshape(2, -1).T)
    metric = MulticlassCalibrationError(num_classes=2, n_bins=10)
    assert top.ece == pytest.approx(float(metric(stacked, torch.from_numpy(y.ravel()))), abs=1e-6)


def test_torch_input_matches_numpy():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet([1, 1, 1], size=(8, 9, 10)).transpose(3, 0, 1, 2)  # 3-D, K=3
    labels = rng.integers(0, 3, size=(8, 9, 10))
    a = calibration(probs, labels)
    b = calibration(torch.from_numpy(probs), torch.from_numpy(labels))
    assert a.ece == pytest.approx(b.ece)
    np.testing.assert_array_equal(a.counts, b.counts)
    soft = rng.dirichlet([1, 1, 1], size=(8, 9, 10)).transpose(3, 0, 1, 2)
    c = calibration(probs, soft)
    d = calibration(torch.from_numpy(probs), torch.from_numpy(soft))
    assert c.ece == pytest.approx(d.ece)
    assert c.label_kind == d.label_kind == "soft"


# --------------------------------------------------------------------------------- properties


@st.composite
def _problem(draw):
    k = draw(st.integers(2, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    n = draw(st.integers(1, 60))
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(k, draw(st.sampled_from([0.1, 1.0, 5.0]))), size=(1, n))
    probs = probs.transpose(2, 0, 1)
    if draw(st.booleans()):  # saturate some pixels exactly
        hot = rng.random(n) < 0.3
        probs[:, 0, hot] = 0.0
        probs[0, 0, hot] = 1.0
    labels = rng.integers(0, k, size=(1, n))
    return probs, labels, draw(st.integers(1, 20)), seed


@given(_problem())
def test_errors_are_bounded_and_ordered(problem):
    probs, labels, n_bins, _ = problem
    r = calibration(probs, labels, n_bins=n_bins)
    assert 0.0 <= r.ece <= 1.0
    assert r.ece <= r.mce + 1e-12
    assert r.ace <= r.mce + 1e-12
    assert r.counts.sum() == labels.size
    assert 0.0 <= adaptive_ece(probs, labels, n_bins=n_bins) <= 1.0


@given(_problem())
def test_merging_accumulators_equals_one_pass(problem):
    probs, labels, n_bins, seed = problem
    one = calibration(probs, labels, n_bins=n_bins)
    cut = np.random.default_rng(seed).integers(0, labels.shape[1] + 1)
    a = CalibrationAccumulator(n_bins=n_bins)
    b = CalibrationAccumulator(n_bins=n_bins)
    if cut > 0:
        a.update(probs[:, :, :cut], labels[:, :cut])
    if cut < labels.shape[1]:
        b.update(probs[:, :, cut:], labels[:, cut:])
    merged = a.merge(b).result()
    np.testing.assert_array_equal(merged.counts, one.counts)
    assert merged.ece == pytest.approx(one.ece, abs=1e-12)
    assert merged.mce == pytest.approx(one.mce, abs=1e-12)


# -------------------------------------------------------------------------------- temperature


def test_fit_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(3, 80, 80)) * 1.5
    p = np.exp(true_logits) / np.exp(true_logits).sum(0)
    cdf = p.cumsum(0)
    labels = (rng.random((80, 80))[None] > cdf).sum(0)  # sampled from softmax(true_logits)
    fit = fit_temperature(3.0 * true_logits, labels)
    assert fit.temperature == pytest.approx(3.0, rel=0.08)
    assert fit.nll_after < fit.nll_before
    assert fit.ece_after < fit.ece_before
    assert fit.n_pixels == 80 * 80
    # The optimum agrees with a brute-force scan of the NLL.
    z = 3.0 * true_logits.reshape(3, -1)
    idx = labels.reshape(-1)

    def nll(t):
        s = z / t
        lse = np.log(np.exp(s - s.max(0)).sum(0)) + s.max(0)
        return float(np.mean(lse - s[idx, np.arange(idx.size)]))

    ts = np.linspace(1.5, 5, 701)
    best = ts[np.argmin([nll(t) for t in ts])]
    assert fit.temperature == pytest.approx(best, abs=0.01)
    assert fit.nll_after == pytest.approx(nll(fit.temperature), rel=1e-9)


def test_fit_temperature_batch_binary_and_torch():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(2, 40, 40)) * 4  # binary foreground logits, batch of 2
    y = (rng.random((2, 40, 40)) < 1 / (1 + np.exp(-z / 2))).astype(np.int64)
    fit = fit_temperature(torch.from_numpy(z), torch.from_numpy(y))
    as_two = fit_temperature(np.stack([np.zeros_like(z), z], axis=1), y)  # (B, K, *S)
    assert fit.temperature == pytest.approx(as_two.temperature, rel=1e-6)
    assert fit.temperature == pytest.approx(2.0, rel=0.15)


# ---------------------------------------------------------------------------------- validation


def test_errors_name_the_argument():
    p = np.full((2, 4, 4), 0.5)
    with pytest.raises(ValueError, match=r"^n_bins"):
        calibration(p, np.zeros((4, 4), int), n_bins=0)
    with pytest.raises(ValueError, match=r"^labels"):
        calibration(p, np.zeros((5, 4), int))
    with pytest.raises(ValueError, match=r"^confidence"):
        calibration(np.full((3, 4, 4), 1 / 3), np.zeros((4, 4), int), confidence="foreground")
    with pytest.raises(ValueError, match=r"^probs"):
        calibration(np.full((2, 4, 4), 1.5), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match=r"^labels"):
        calibration(p, np.full((2, 4, 4), 1.5))  # soft labels outside [0, 1]
    with pytest.raises(ValueError, match=r"^other"):
        CalibrationAccumulator(n_bins=3).merge(CalibrationAccumulator(n_bins=4))
    with pytest.raises(ValueError, match=r"^labels"):
        fit_temperature(np.zeros((2, 4, 4)), np.full((4, 4), 2))
