"""Image-level aggregation and top-uncertainty regions, against known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from napari_probseg.uncertainty import AGGREGATIONS, aggregate, patch_means, top_regions

# ---------------------------------------------------------------------------- aggregate


def _brute_patch_max(arr: np.ndarray, sizes: tuple[int, ...]) -> tuple[float, tuple[int, ...]]:
    best, where = -np.inf, None
    for start in itertools.product(*(range(s - p + 1) for s, p in zip(arr.shape, sizes))):
        box = tuple(slice(a, a + p) for a, p in zip(start, sizes))
        value = arr[box].mean()
        if value > best + 1e-12:
            best, where = value, start
    return best, where


@pytest.mark.parametrize(
    ("shape", "patch"),
    [
        ((7, 9), 1),
        ((7, 9), 3),
        ((7, 9), (2, 5)),
        ((7, 9), (7, 9)),
        ((5, 6, 7), 2),
        ((5, 6, 7), (1, 3, 7)),
        ((5, 6, 7), (5, 6, 7)),
    ],
)
def test_patch_max_equals_brute_force(shape, patch):
    rng = np.random.default_rng(sum(shape))
    arr = rng.random(shape)
    score = aggregate(arr, method="patch_max", patch_size=patch)
    sizes = (patch,) * len(shape) if isinstance(patch, int) else patch
    best, where = _brute_patch_max(arr, sizes)
    assert score.value == pytest.approx(best, abs=1e-12)
    assert tuple(score.params["argmax"]) == where
    assert score.params["patch_size"] == list(sizes)
    assert "patch" in score.description


def test_patch_means_is_a_valid_box_filter():
    arr = np.arange(12, dtype=float).reshape(3, 4)
    np.testing.assert_allclose(patch_means(arr, 2), [[2.5, 3.5, 4.5], [6.5, 7.5, 8.5]], atol=1e-12)


def test_simple_aggregations_known_answers():
    umap = np.array([[0.0, 0.2, 0.4], [0.6, 0.8, 1.0]])
    mask = np.array([[0, 1, 1], [0, 0, 1]], bool)
    assert aggregate(umap, method="mean").value == pytest.approx(0.5)
    assert aggregate(umap, method="sum").value == pytest.approx(3.0)
    assert aggregate(umap, method="mean", mask=mask).value == pytest.approx(1.6 / 3)
    assert aggregate(umap, method="sum", mask=mask).value == pytest.approx(1.6)
    fg = aggregate(umap, method="foreground_normalized", mask=mask)
    assert fg.value == pytest.approx(3.0 / 3)  # whole-image sum / 3 foreground voxels
    assert fg.params["foreground_voxels"] == 3 and "foreground size" in fg.description
    empty = aggregate(umap, method="foreground_normalized", mask=np.zeros_like(mask))
    assert np.isnan(empty.value)
    tm = aggregate(umap, method="thresholded_mean", threshold=0.5)
    assert tm.value == pytest.approx((0.6 + 0.8 + 1.0) / 3)
    assert tm.params == {"threshold": 0.5, "voxels_above": 3}
    assert aggregate(umap, method="thresholded_mean", threshold=1.0).value == 0.0  # none above
    assert aggregate(umap, method="thresholded_share", threshold=0.5).value == pytest.approx(0.5)
    share = aggregate(umap, method="thresholded_share", threshold=0.3, mask=mask)
    assert share.value == pytest.approx(2 / 3)
    torch_score = aggregate(torch.from_numpy(umap), method="mean")
    assert isinstance(torch_score.value, float) and torch_score.value == pytest.approx(0.5)


def test_every_aggregation_describes_itself():
    umap = np.random.default_rng(0).random((6, 6))
    mask = umap > 0.5
    for method in AGGREGATIONS:
        kwargs = {
            "foreground_normalized": {"mask": mask},
            "patch_max": {"patch_size": 2},
            "thresholded_mean": {"threshold": 0.5},
            "thresholded_share": {"threshold": 0.5},
        }.get(method, {})
        score = aggregate(umap, method=method, **kwargs)
        assert score.method == method
        assert isinstance(score.value, float)
        assert len(score.description) > 10
    assert len({aggregate(umap, method=m, mask=mask).description for m in ("mean", "sum")}) == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "median"}, r"^method:"),
        ({"method": "foreground_normalized"}, r"^mask: required"),
        ({"method": "mean", "mask": np.ones((3, 3), bool)}, r"^mask: shape"),
        ({"method": "patch_max", "patch_size": 2, "mask": np.ones((4, 5), bool)}, r"^mask: not"),
        ({"method": "patch_max"}, r"^patch_size: required"),
        ({"method": "patch_max", "patch_size": 6}, r"^patch_size: .*larger"),
        ({"method": "patch_max", "patch_size": (2, 2, 2)}, r"^patch_size:"),
        ({"method": "patch_max", "patch_size": 0}, r"^patch_size:"),
        ({"method": "thresholded_mean"}, r"^threshold:"),
        ({"method": "thresholded_share", "threshold": float("nan")}, r"^threshold:"),
    ],
)
def test_aggregate_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        aggregate(np.zeros((4, 5)), **kwargs)


def test_aggregate_rejects_nan_map():
    with pytest.raises(ValueError, match=r"^umap:"):
        aggregate(np.array([[np.nan, 1.0]]), method="mean")


# ---------------------------------------------------------------------------- top regions


def _three_blobs() -> np.ndarray:
    umap = np.zeros((40, 50))
    umap[2:5, 2:5] = 1.0  # A: 9 voxels, sum 9
    umap[20:22, 30:32] = 5.0  # B: 4 voxels, sum 20
    umap[30:34, 10:14] = 0.8  # C: 16 voxels, sum 12.8
    return umap


def test_top_regions_ranks_three_blobs_by_integrated_uncertainty():
    umap = _three_blobs()
    res = top_regions(umap, quantile=0.95, min_size=1)
    assert res.threshold == 0.0  # 29 of 2000 voxels are nonzero
    assert [r.score for r in res.regions] == pytest.approx([20.0, 12.8, 9.0])
    b, c, a = res.regions
    assert (b.rank, c.rank, a.rank) == (1, 2, 3)
    assert (b.size, c.size, a.size) == (4, 16, 9)
    assert b.bbox == (slice(20, 22), slice(30, 32))
    assert c.centroid == pytest.approx((31.5, 11.5))
    assert a.mean == pytest.approx(1.0) and b.max == 5.0 and c.mean == pytest.approx(0.8)
    assert res.labels.dtype == np.int32
    assert b.label == 1 and np.all(res.labels[20:22, 30:32] == 1)
    assert np.all(res.labels[30:34, 10:14] == 2) and np.all(res.labels[2:5, 2:5] == 3)
    assert np.count_nonzero(res.labels) == 29
    np.testing.assert_array_equal(res.highlight, umap > 0)


def test_top_regions_min_size_quantile_and_max_regions():
    umap = _three_blobs()
    res = top_regions(umap, quantile=0.95, min_size=5)  # B (4 voxels) dropped
    assert [r.score for r in res.regions] == pytest.approx([12.8, 9.0])
    assert np.all(res.labels[20:22, 30:32] == 0)
    assert res.highlight[20, 30]  # still highlighted, just not a region
    high = top_regions(umap, quantile=0.999, min_size=1)  # only B's value 5 is above
    assert high.threshold == pytest.approx(5.0)
    assert len(high.regions) == 1 and high.regions[0].score == pytest.approx(20.0)
    assert len(top_regions(umap, min_size=1, max_regions=2).regions) == 2


def test_top_regions_connectivity():
    umap = np.zeros((10, 10))
    umap[2:4, 2:4] = 1.0
    umap[4:6, 4:6] = 1.0  # touches the first square only diagonally
    assert len(top_regions(umap, min_size=1).regions) == 1
    assert len(top_regions(umap, min_size=1, connectivity=1).regions) == 2


def test_top_regions_3d_and_flat_map():
    umap = np.zeros((12, 16, 16))
    umap[1:3, 2:5, 2:5] = 2.0  # sum 36
    umap[8:11, 10:14, 9:12] = 1.0  # sum 36 too, but larger: ranked first on the tie
    umap[6, 6, 6] = 3.0  # single voxel, dropped by min_size
    res = top_regions(torch.from_numpy(umap), min_size=2)
    assert [r.size for r in res.regions] == [36, 18]
    assert res.regions[0].bbox == (slice(8, 11), slice(10, 14), slice(9, 12))
    assert res.regions[1].centroid == pytest.approx((1.5, 3.0, 3.0))
    assert len(res.regions[0].centroid) == 3
    flat = top_regions(np.ones((8, 8)))
    assert flat.regions == [] and not flat.highlight.any()


@pytest.mark.parametrize(
    ("umap", "kwargs", "match"),
    [
        (np.zeros(5), {}, r"^umap:"),
        (np.array([[np.inf, 0.0]]), {}, r"^umap:"),
        (np.zeros((4, 4)), {"quantile": 1.0}, r"^quantile:"),
        (np.zeros((4, 4)), {"min_size": 0}, r"^min_size:"),
        (np.zeros((4, 4)), {"connectivity": 3}, r"^connectivity:"),
        (np.zeros((4, 4)), {"max_regions": 0}, r"^max_regions:"),
    ],
)
def test_top_regions_errors(umap, kwargs, match):
    with pytest.raises(ValueError, match=match):
        top_regions(umap, **kwargs)
