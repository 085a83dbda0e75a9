"""Synthetic multi-rater lesion data and the translational circle toy."""

from __future__ import annotations

import time
from itertools import combinations

import numpy as np
import pytest

from napari_probseg.data.synthetic import (
    RATER_STYLES,
    LesionSet,
    make_circle_samples,
    make_lesions,
    make_shifted_circle,
    sample_case,
)


@pytest.fixture(scope="module")
def lesions2d() -> LesionSet:
    return make_lesions(60, seed=0)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def _mean_pairwise_iou(masks: np.ndarray) -> float:
    """Mean IoU over rater pairs of boolean masks (R, n_pixels)."""
    return float(np.mean([_iou(masks[a], masks[b]) for a, b in combinations(range(len(masks)), 2)]))


def test_shapes_dtypes_and_fields(lesions2d):
    images, raters, truth, styles, meta = lesions2d  # unpackable
    assert images.shape == (60, 128, 128) and images.dtype == np.float32
    assert raters.shape == (60, 4, 128, 128) and raters.dtype == np.uint8
    assert truth.shape == (60, 128, 128) and truth.dtype == np.uint8
    assert set(np.unique(raters)) <= {0, 1} and set(np.unique(truth)) <= {0, 1}
    assert styles == list(RATER_STYLES)
    assert meta["rater_names"] == list(RATER_STYLES)
    assert meta["lesion_labels"].shape == (60, 128, 128)
    assert all(1 <= len(ls) <= 4 for ls in meta["lesions"])
    assert np.isfinite(images).all()
    # every image has foreground in the truth, and the labels cover the truth
    assert truth.reshape(60, -1).any(axis=1).all()
    assert np.all(meta["lesion_labels"][truth.astype(bool)] > 0)
    kinds = {les["kind"] for ls in meta["lesions"] for les in ls}
    assert kinds == {"sharp", "soft", "faint"}


def test_deterministic_per_seed_and_seeds_differ():
    a = make_lesions(3, seed=7)
    b = make_lesions(3, seed=7)
    c = make_lesions(3, seed=8)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.raters, b.raters)
    np.testing.assert_array_equal(a.truth, b.truth)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.truth, c.truth)


def test_raters_disagree_on_ambiguous_lesions_and_agree_on_clear_ones(lesions2d):
    """Pairwise rater IoU per lesion: sharp lesions >> soft lesions >> faint lesions."""
    _, raters, _, _, meta = lesions2d
    per_kind: dict[str, list[float]] = {"sharp": [], "soft": [], "faint": []}
    for i, lesions in enumerate(meta["lesions"]):
        for k, les in enumerate(lesions):
            region = meta["lesion_labels"][i] == k + 1
            per_kind[les["kind"]].append(_mean_pairwise_iou(raters[i][:, region].astype(bool)))
    mean = {kind: float(np.mean(v)) for kind, v in per_kind.items()}
    assert all(len(v) >= 10 for v in per_kind.values()), {k: len(v) for k, v in per_kind.items()}
    assert mean["sharp"] > 0.8
    assert mean["soft"] < mean["sharp"] - 0.15
    assert mean["faint"] < mean["soft"]


def test_boundary_band_disagreement_exceeds_interior(lesions2d):
    """Raters agree in lesion interiors and disagree in the band around the true boundary."""
    from scipy import ndimage

    _, raters, truth, _, meta = lesions2d
    # faint lesions are omitted whole by some raters: look at the clear lesions only
    faint = np.zeros(truth.shape, dtype=bool)
    for i, lesions in enumerate(meta["lesions"]):
        for k, les in enumerate(lesions):
            if les["kind"] == "faint":
                faint[i] |= meta["lesion_labels"][i] == k + 1
    struct = ndimage.generate_binary_structure(2, 1)
    t = truth.astype(bool)
    interior = np.stack([ndimage.binary_erosion(m, struct, iterations=4) for m in t]) & ~faint
    band = np.stack([ndimage.binary_dilation(m, struct, iterations=3) for m in t]) & ~np.stack(
        [ndimage.binary_erosion(m, struct, iterations=3) for m in t]
    )
    band &= ~faint
    frac = raters.mean(axis=1)  # fraction of raters marking each pixel
    disagree = (frac > 0) & (frac < 1)
    assert disagree[band].mean() > 0.3
    assert disagree[interior].mean() < disagree[band].mean() / 5


def test_styles_are_systematic(lesions2d):
    _, raters, _truth, _, meta = lesions2d
    area = raters.reshape(*raters.shape[:2], -1).sum(axis=(0, 2))
    tight, generous = area[0], area[1]
    assert generous > 1.3 * tight
    # the conservative rater never marks a faint lesion; the generous one marks most of them
    faint = [
        (i, k, les)
        for i, ls in enumerate(meta["lesions"])
        for k, les in enumerate(ls)
        if les["kind"] == "faint"
    ]
    assert faint
    for i, k, les in faint:
        region = meta["lesion_labels"][i] == k + 1
        assert "conservative" not in les["marked_by"]
        assert not raters[i, 3][region].any()
    marked = np.mean([("generous" in les["marked_by"]) for _, _, les in faint])
    assert marked > 0.8
    # ... while clear lesions are marked by everyone
    clear = [les for ls in meta["lesions"] for les in ls if les["kind"] != "faint"]
    assert all(len(les["marked_by"]) == 4 for les in clear)


def test_smoothed_rater_is_not_shifted(lesions2d):
    """The coarse-grid rater follows sharp lesions without a systematic offset."""
    from scipy import ndimage

    _, raters, truth, _, meta = lesions2d
    offsets = []
    for i, lesions in enumerate(meta["lesions"]):
        for k, les in enumerate(lesions):
            if les["kind"] == "sharp":
                region = meta["lesion_labels"][i] == k + 1
                com_truth = ndimage.center_of_mass(truth[i] * region)
                com_rater = ndimage.center_of_mass(raters[i, 2] * region)
                offsets.append(np.subtract(com_rater, com_truth))
    assert np.all(np.abs(np.mean(offsets, axis=0)) < 0.2), np.mean(offsets, axis=0)


def test_shift_changes_appearance_not_geometry():
    base = make_lesions(10, seed=3)
    shifted = make_lesions(10, seed=3, shift=True)
    np.testing.assert_array_equal(base.raters, shifted.raters)
    np.testing.assert_array_equal(base.truth, shifted.truth)
    bg = base.truth == 0
    # brighter background, lower lesion contrast, much more noise
    assert shifted.images[bg].mean() > base.images[bg].mean() + 0.2
    contrast = lambda d: d.images[d.truth == 1].mean() - d.images[bg].mean()  # noqa: E731
    assert contrast(shifted) < 0.7 * contrast(base)
    hp = lambda x: np.diff(x, axis=-1).std()  # noqa: E731  (high-pass: noise level)
    assert hp(shifted.images) > 1.5 * hp(base.images)
    assert shifted.meta["shift"] and not base.meta["shift"]


def test_lesions_are_visible_above_noise_in_domain(lesions2d):
    """Clear lesions stand far above the noise: the image -> mask relation is learnable."""
    images, _, _, _, meta = lesions2d
    for i in range(10):
        for k, les in enumerate(meta["lesions"][i]):
            if les["kind"] == "sharp":
                core = meta["lesion_labels"][i] == k + 1
                assert images[i][core].max() - np.median(images[i]) > 5 * 0.04


def test_3d_and_many_raters():
    data = make_lesions(2, ndim=3, n_raters=6, seed=1)
    assert data.images.shape == (2, 64, 64, 64)
    assert data.raters.shape == (2, 6, 64, 64, 64)
    assert data.rater_styles == [*RATER_STYLES, "tight", "generous"]
    assert data.meta["rater_names"][4:] == ["tight_2", "generous_2"]
    assert data.truth.any()
    # the first raters do not depend on how many raters are drawn
    np.testing.assert_array_equal(
        make_lesions(2, ndim=3, n_raters=4, seed=1).raters, data.raters[:, :4]
    )


def test_anisotropic_spacing_gives_round_lesions_in_physical_space():
    data = make_lesions(4, ndim=3, shape=(32, 64, 64), spacing=(2.0, 1.0, 1.0), seed=2)
    les = data.meta["lesions"][0][0]
    k = 1
    region = data.meta["lesion_labels"][0] == k
    zs, ys, _ = np.nonzero(region & (data.truth[0] == 1))
    # physical extent along z (pixel size 2) is similar to the extent along y
    assert 0.4 < (np.ptp(zs) + 1) * 2.0 / (np.ptp(ys) + 1) < 2.5, les


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_images": 0}, "n_images"),
        ({"n_images": 1, "ndim": 4}, "ndim"),
        ({"n_images": 1, "n_raters": 9}, "n_raters"),
        ({"n_images": 1, "shape": (64, 64, 64)}, "shape"),
        ({"n_images": 1, "spacing": (1.0, -1.0)}, "spacing"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=rf"^{match}"):
        make_lesions(**kwargs)


def test_speed():
    """CPU time (not wall time: the test machine's cores are shared) of the documented sizes."""
    make_lesions(2)  # warm up imports
    t0 = time.process_time()
    make_lesions(100, seed=1)
    t_2d = time.process_time() - t0
    t0 = time.process_time()
    make_lesions(8, ndim=3, seed=1)
    t_3d = time.process_time() - t0
    # measured ~0.75 s and ~1.0 s of CPU; the bounds leave room for slower machines
    assert t_2d < 2.5, t_2d
    assert t_3d < 5.0, t_3d


@pytest.mark.parametrize("n", [1, 2, 5, 17])
def test_shifted_circle_has_exactly_n_distinct_masks(n):
    masks = make_shifted_circle(n, shape=(48, 40), radius=6, seed=n)
    assert masks.shape == (n, 48, 40) and masks.dtype == np.uint8
    assert len({m.tobytes() for m in masks}) == n
    areas = masks.reshape(n, -1).sum(axis=1)
    assert np.all(areas == areas[0])  # the same disk, fully inside the image, translated
    # disk of radius 6 on the pixel grid: area close to pi r^2
    assert abs(areas[0] - np.pi * 36) < 0.1 * np.pi * 36


def test_shifted_circle_3d_and_errors():
    balls = make_shifted_circle(3, shape=(20, 20, 20), radius=4)
    assert balls.shape == (3, 20, 20, 20) and len({b.tobytes() for b in balls}) == 3
    with pytest.raises(ValueError, match=r"^n_positions"):
        make_shifted_circle(10, shape=(10, 10), radius=4)
    with pytest.raises(ValueError, match=r"^radius"):
        make_shifted_circle(2, radius=0)


def test_circle_samples_come_from_the_positions():
    positions = make_shifted_circle(2, seed=4)
    samples, index = make_circle_samples(400, 2, seed=4, return_index=True)
    assert samples.shape == (400, 64, 64)
    np.testing.assert_array_equal(samples, positions[index])
    # both positions drawn about equally often
    assert 150 < np.count_nonzero(index == 0) < 250


@pytest.mark.parametrize("ndim", [2, 3])
def test_sample_case(ndim):
    image, raters, scale = sample_case(ndim)
    assert image.ndim == ndim and image.dtype == np.float32
    assert list(raters) == list(RATER_STYLES)
    assert all(m.shape == image.shape and m.dtype == np.uint8 for m in raters.values())
    assert len(scale) == ndim
    assert any(m.any() for m in raters.values())
    image2, _raters2, _ = sample_case(ndim)
    np.testing.assert_array_equal(image, image2)  # fixed
    # the sample shows disagreement: the raters' masks are not all identical
    assert len({m.tobytes() for m in raters.values()}) > 1


def test_graded_shift_severities_are_paired_and_monotone():
    from napari_probseg.data.synthetic import shift_appearance, shift_severity

    sets = {s: make_lesions(6, seed=3, shift=s, shape=(64, 64)) for s in (0, 1, 2, 3)}
    strong = make_lesions(6, seed=3, shift=True, shape=(64, 64))
    np.testing.assert_array_equal(strong.images, sets[3].images)  # True is severity 3
    np.testing.assert_array_equal(make_lesions(6, seed=3, shape=(64, 64)).images, sets[0].images)
    looks = [shift_appearance(s) for s in (0, 1, 2, 3)]
    cnr = [a["contrast"] / a["noise"] for a in looks]
    assert cnr == sorted(cnr, reverse=True) and cnr[0] > 5 * cnr[-1]
    for key in ("noise", "blur", "background", "texture"):
        assert [a[key] for a in looks] == sorted(a[key] for a in looks)
    for s, d in sets.items():
        np.testing.assert_array_equal(d.raters, sets[0].raters)
        assert d.meta["shift_severity"] == s and d.meta["shift"] == (s > 0)
    # the measured contrast-to-noise of the lesions falls with the severity
    measured = []
    for d in sets.values():
        lesion, bg = d.truth.astype(bool), ~d.truth.astype(bool)
        measured.append((d.images[lesion].mean() - d.images[bg].mean()) / d.images[bg].std())
    assert measured == sorted(measured, reverse=True)
    assert shift_severity(1.5) == 1.5 and shift_severity(False) == 0.0
    for bad in (-1, 3.5, "strong"):
        with pytest.raises(ValueError, match=r"^shift"):
            make_lesions(1, shift=bad)
