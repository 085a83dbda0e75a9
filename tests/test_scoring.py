"""NLL and Brier score, the PAvPU curve, GED kernel / class-absent options, the one temperature fit.

Known answers from the definitions and cross-checks against torch / the single-threshold PAvPU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_probseg.core.introspection import pavpu, pavpu_curve
from napari_probseg.core.observer import ged
from napari_probseg.core.scoring import brier_score, nll


def test_nll_known_answer_and_torch_cross_check():
    probs = np.array([[0.9, 0.2], [0.1, 0.8]])  # (K=2, 2 pixels)
    labels = np.array([0, 1])
    assert nll(probs, labels) == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 6, 5)) * 3
    p = np.exp(logits) / np.exp(logits).sum(0)
    y = rng.integers(0, 3, (6, 5))
    ref = torch.nn.functional.nll_loss(
        torch.log(torch.from_numpy(p))[None], torch.from_numpy(y)[None]
    )
    assert nll(p, y) == pytest.approx(float(ref), rel=1e-12)
    # soft labels: the expected NLL under the raters' distribution
    soft = np.array([[0.5, 0.0], [0.5, 1.0]])
    expected = (-(0.5 * math.log(0.9) + 0.5 * math.log(0.1)) - math.log(0.8)) / 2
    assert nll(probs, soft) == pytest.approx(expected)
    # a confidently wrong pixel is penalised finitely
    assert nll(np.array([[1.0], [0.0]]), np.array([1])) == pytest.approx(-math.log(1e-12))


def test_brier_known_answer():
    probs = np.array([[0.9, 0.2], [0.1, 0.8]])
    # pixel 1: 0.1^2 + 0.1^2 = 0.02; pixel 2: 0.2^2 + 0.2^2 = 0.08
    assert brier_score(probs, np.array([0, 1])) == pytest.approx(0.05)
    # binary: twice the (p - y)^2 of the foreground probability
    p1 = np.array([0.1, 0.8, 0.6])
    y = np.array([0, 1, 0])
    assert brier_score(np.stack([1 - p1, p1]), y) == pytest.approx(2 * np.mean((p1 - y) ** 2))
    assert brier_score(probs, probs) == 0.0  # soft labels equal to the probabilities


def test_scoring_errors():
    probs = np.array([[0.9, 0.2], [0.1, 0.8]])
    with pytest.raises(ValueError, match=r"^labels: expected values"):
        nll(probs, np.array([0, 2]))
    with pytest.raises(ValueError, match=r"^labels: expected shape"):
        brier_score(probs, np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"^probs:"):
        nll(np.array([0.5, 0.5]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"^eps"):
        nll(probs, np.array([0, 1]), eps=0)


def test_pavpu_curve_known_answer_and_equals_pavpu_at_each_threshold():
    # 8 x 8 map, 4 patches of 4 x 4: two accurate + certain, two inaccurate + uncertain
    pred = np.zeros((8, 8), int)
    ref = np.zeros((8, 8), int)
    ref[4:, :] = 1  # bottom patches wrong
    unc = np.full((8, 8), 0.1)
    unc[4:, :] = 0.4
    c = pavpu_curve(pred, ref, unc, thresholds=[0.0, 0.25, 0.5])
    np.testing.assert_allclose(c.pavpu, [0.5, 1.0, 0.5])
    assert c.area == pytest.approx(0.75)  # trapezoid 0.375 over the range 0.5
    assert c.n_patches == 4 and c.patch_size == (4, 4)
    rng = np.random.default_rng(1)
    pred = rng.integers(0, 2, (16, 12))
    ref = rng.integers(0, 2, (16, 12))
    unc = rng.random((16, 12))
    c = pavpu_curve(pred, ref, unc, n_thresholds=11)
    assert len(c.thresholds) == 11
    for t, value, pac in zip(c.thresholds, c.pavpu, c.p_accurate_given_certain):
        one = pavpu(pred, ref, unc, uncertainty_threshold=float(t))
        assert value == pytest.approx(one.pavpu)
        assert (math.isnan(pac) and math.isnan(one.p_accurate_given_certain)) or (
            pac == pytest.approx(one.p_accurate_given_certain)
        )
    with pytest.raises(ValueError, match=r"^thresholds"):
        pavpu_curve(pred, ref, unc, thresholds=[0.5, 0.1])


def _phiseg_distance(m1, m2, n_labels, kernel="iou"):
    """PHiSeg's dist_fct from its definition: absent from both = 1, mean over every class."""
    scores = []
    for lbl in range(1, n_labels):
        a, b = m1 == lbl, m2 == lbl
        if not a.any() and not b.any():
            scores.append(1.0)
            continue
        inter = np.logical_and(a, b).sum()
        if kernel == "iou":
            scores.append(inter / np.logical_or(a, b).sum())
        else:
            scores.append(2 * inter / (a.sum() + b.sum()))
    return 1 - np.mean(scores)


def test_ged_dice_kernel_and_phiseg_absent_convention():
    s = np.zeros((1, 4, 4), np.uint8)
    y = np.zeros((1, 4, 4), np.uint8)
    s[0, :2, :2] = 1  # 4 pixels
    y[0, :1, :2] = 1  # 2 pixels inside
    assert ged(s, y).ged == pytest.approx(2 * (1 - 0.5))  # d = 1 - IoU
    assert ged(s, y, kernel="dice").ged == pytest.approx(2 * (1 - 4 / 6))
    # three classes, class 2 absent from both: it counts as agreement under PHiSeg's convention
    assert ged(s, y, n_classes=3).ged == pytest.approx(2 * 0.5)
    assert ged(s, y, n_classes=3, absent="one").ged == pytest.approx(2 * 0.25)
    # random multi-class sets against the brute-force PHiSeg distance
    rng = np.random.default_rng(2)
    samples = rng.integers(0, 3, (4, 6, 6)).astype(np.uint8)
    samples[0][samples[0] == 2] = 0  # one sample without class 2
    raters = rng.integers(0, 2, (3, 6, 6)).astype(np.uint8)  # raters never use class 2
    for kernel in ("iou", "dice"):
        d = np.array([[_phiseg_distance(a, b, 3, kernel) for b in raters] for a in samples])
        dss = np.array([[_phiseg_distance(a, b, 3, kernel) for b in samples] for a in samples])
        dyy = np.array([[_phiseg_distance(a, b, 3, kernel) for b in raters] for a in raters])
        expected = 2 * d.mean() - dss.mean() - dyy.mean()
        out = ged(samples, raters, n_classes=3, kernel=kernel, absent="one")
        assert out.ged == pytest.approx(expected, abs=1e-12)
        assert out.kernel == kernel and out.absent == "one"
    default = ged(samples, raters)
    assert default.kernel == "iou" and default.absent == "present"
    assert default == ged(samples, raters, kernel="iou", absent="present")
    with pytest.raises(ValueError, match=r"^kernel"):
        ged(s, y, kernel="hamming")
    with pytest.raises(ValueError, match=r"^absent"):
        ged(s, y, absent="zero")


def test_training_temperature_fit_is_cores_and_minimises_the_rater_nll():
    from napari_probseg.training._common import Dataset, fit_temperature

    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(3, 1, 12, 12)).astype(np.float32))
    flips = rng.random((3, 2, 12, 12)) < 0.2  # raters agree with sign(x) 80% of the time
    raters = torch.from_numpy(((x.numpy() > 0) ^ flips).astype(np.int64))
    net = torch.nn.Conv2d(1, 2, 1)  # overconfident logits (-10 x, 10 x): the fit must cool them
    with torch.no_grad():
        net.weight.copy_(torch.tensor([-10.0, 10.0]).reshape(2, 1, 1, 1))
        net.bias.zero_()
    t = fit_temperature(net, Dataset(x, raters))
    assert 1.0 < t < 1000.0

    def rater_nll(temp):
        with torch.no_grad():
            p = torch.softmax(net(x) / temp, 1).numpy()
        return np.mean([nll(p[i], raters[i, r].numpy()) for i in range(3) for r in range(2)])

    assert rater_nll(t) <= min(rater_nll(t * 1.1), rater_nll(t / 1.1))


def test_observer_metrics_passes_the_ged_options():
    from napari_probseg.core.observer import observer_metrics

    rng = np.random.default_rng(4)
    samples = rng.integers(0, 3, (4, 6, 6)).astype(np.uint8)
    raters = rng.integers(0, 2, (3, 6, 6)).astype(np.uint8)
    for kernel in ("iou", "dice"):
        for absent in ("present", "one"):
            one = ged(samples, raters, n_classes=3, kernel=kernel, absent=absent)
            both = observer_metrics(
                samples, raters, n_classes=3, ged_kernel=kernel, ged_absent=absent
            )
            assert both.ged == one


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ged_kernels_match_torchmetrics_dice_and_iou(seed):
    """One sample vs one rater: GED = 2 d(s, y); d from torchmetrics' Dice / mean IoU."""
    from torchmetrics.functional.segmentation import dice_score, mean_iou

    rng = np.random.default_rng(seed)
    s = (rng.random((1, 12, 12)) < 0.4).astype(np.uint8)
    y = (rng.random((1, 12, 12)) < 0.4).astype(np.uint8)
    ts, ty = torch.from_numpy(s).long(), torch.from_numpy(y).long()
    opts = {"num_classes": 2, "include_background": False, "input_format": "index"}
    dice = float(dice_score(ts, ty, **opts)[0])
    iou = float(mean_iou(ts, ty, **opts)[0])
    assert ged(s, y, kernel="dice").ged == pytest.approx(2 * (1 - dice), rel=1e-6)
    assert ged(s, y).ged == pytest.approx(2 * (1 - iou), rel=1e-6)
