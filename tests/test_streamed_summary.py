"""The image summary of arrays read block by block equals the summary of the whole arrays.

A streamed prediction (``probseg predict --out``, ``engine.run_prediction(output=...)``) keeps
its maps and samples in the output store; the summary reads them in row blocks
(``core/_blocks.py``). Every piece is checked against the whole-array computation: the exact
quantile, the regions merged across blocks, the aggregations, the structure measures, and the
whole summary through the CLI.
"""

from __future__ import annotations

import json

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from model_helpers import tiny_card
from napari_probseg.core._blocks import RowBlocks, common_stride
from napari_probseg.core.aggregate import AGGREGATIONS, MapAggregator, aggregate
from napari_probseg.core.regions import quantile_of, rank_regions, top_regions
from napari_probseg.core.structure import (
    SampleStructure,
    cluster_entropy,
    factorized_entropy,
    pairwise_dice,
    sample_set_entropy,
    volume_cov,
)
from napari_probseg.core.summary import image_summary


def _blocks(arr, rows):
    return [(a, min(a + rows, len(arr)), arr[a : a + rows]) for a in range(0, len(arr), rows)]


@settings(max_examples=150, deadline=None)
@given(
    values=hnp.arrays(
        st.sampled_from([np.float32, np.float64]),
        st.tuples(st.integers(1, 30), st.integers(1, 7)),
        elements=st.floats(-1e6, 1e6, width=32),
    ),
    rows=st.integers(1, 9),
    q=st.floats(0.001, 0.999),
)
def test_quantile_of_blocks_is_numpy_quantile_exactly(values, rows, q):
    got = quantile_of(_blocks(values, rows), values.size, q)
    assert got == float(np.quantile(values.astype(np.float64), q))


def test_quantile_of_heavy_ties_and_negatives():
    values = np.concatenate([np.zeros(5000), -np.ones(3), np.full(7, 2.5)]).astype(np.float32)
    values = values.reshape(10, -1)
    for q in (0.001, 0.5, 0.95, 0.999):
        assert quantile_of(_blocks(values, 3), values.size, q) == np.quantile(values, q)


def _smooth_map(shape, seed):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 1.5).astype(np.float32)


@pytest.mark.parametrize(
    ("shape", "rows", "connectivity"),
    [((64, 48), 1, None), ((64, 48), 7, 1), ((20, 24, 28), 3, None), ((20, 24, 28), 1, 1)],
)
def test_regions_merged_across_blocks_equal_whole_map_regions(shape, rows, connectivity):
    umap = _smooth_map(shape, seed=len(shape) * 10 + rows)
    kw = dict(quantile=0.8, min_size=2, connectivity=connectivity, max_regions=None)
    whole = top_regions(umap, **kw)
    threshold, regions = rank_regions(_blocks(umap, rows), shape=umap.shape, **kw)
    assert threshold == whole.threshold
    assert len(regions) == len(whole.regions) > 3
    # components straddling block boundaries were merged, not listed twice
    assert max(r.bbox[0].stop - r.bbox[0].start for r in regions) > rows
    for got, ref in zip(regions, whole.regions):
        assert (got.rank, got.size, got.bbox) == (ref.rank, ref.size, ref.bbox)
        assert got.score == pytest.approx(ref.score, rel=1e-12)
        assert got.max == ref.max and got.mean == pytest.approx(ref.mean, rel=1e-12)
        np.testing.assert_allclose(got.centroid, ref.centroid, rtol=1e-12)
        # the label image of top_regions marks exactly the region's voxels
        assert int((whole.labels == ref.label).sum()) == ref.size


@settings(max_examples=60, deadline=None)
@given(
    umap=hnp.arrays(
        np.float64, st.tuples(st.integers(3, 12), st.integers(3, 9)), elements=st.floats(0, 1)
    ),
    rows=st.integers(1, 5),
    method=st.sampled_from(AGGREGATIONS),
)
def test_map_aggregator_in_blocks_equals_aggregate(umap, rows, method):
    mask = umap > 0.4
    masked = method in ("foreground_normalized", "mean", "thresholded_share")
    options = {"patch_size": (2, 3)} if method == "patch_max" else {}
    if method.startswith("thresholded"):
        options["threshold"] = 0.5
    ref = aggregate(umap, method=method, mask=mask if masked else None, **options)
    acc = MapAggregator(method, shape=umap.shape, masked=masked, **options)
    for a in range(0, umap.shape[0], rows):
        acc.add(umap[a : a + rows], mask[a : a + rows] if masked else None)
    got = acc.result()
    if np.isnan(ref.value):
        assert np.isnan(got.value)
    else:
        assert got.value == pytest.approx(ref.value, rel=1e-12, abs=1e-15)
    if method != "patch_max":
        assert got.description == ref.description
        return
    # the first patch of largest mean; among patches equal to float rounding either is right
    i, j = got.params["argmax"]
    means = ndimage.uniform_filter(umap, (2, 3), origin=(-1, -1), mode="constant")  # independent
    assert means[i, j] == pytest.approx(
        means[: umap.shape[0] - 1, : umap.shape[1] - 2].max(), rel=1e-9
    )
    assert got.value == pytest.approx(means[i, j], rel=1e-9)


def test_map_aggregator_needs_every_row_and_consistent_masks():
    acc = MapAggregator("mean", shape=(4, 3))
    acc.add(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"^umap: 2 of 4 rows"):
        acc.result()
    with pytest.raises(ValueError, match=r"^mask: "):
        acc.add(np.ones((2, 3)), np.ones((2, 3), bool))


@pytest.mark.parametrize("rows", [1, 2, 5])
def test_sample_structure_in_blocks_equals_whole_mask_measures(rows):
    rng = np.random.default_rng(rows)
    base = np.zeros((12, 10, 9), np.uint8)
    base[3:9, 2:8, 2:7] = 1
    masks = np.stack([np.roll(base, rng.integers(-1, 2), axis=1) for _ in range(7)])
    masks[2] = masks[1]  # two equal samples
    masks[4, 0, 0, 0] = 2  # a second class
    stats = SampleStructure(len(masks))
    for a in range(0, masks.shape[1], rows):
        stats.add(masks[:, a : a + rows])
    assert stats.pairwise_dice() == pairwise_dice(masks)
    assert stats.volume_cov() == volume_cov(masks)
    assert stats.sample_set_entropy() == sample_set_entropy(masks)
    assert stats.cluster_entropy(min_iou=0.9) == cluster_entropy(masks, min_iou=0.9)
    assert stats.factorized_entropy() == pytest.approx(factorized_entropy(masks), rel=1e-12)
    assert len(set(stats.digests())) == len({m.tobytes() for m in masks})


def _prediction(shape, n=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    logits = ndimage.gaussian_filter(rng.normal(size=(n, k, *shape)), (0, 0, *[1.5] * len(shape)))
    probs = np.exp(4 * logits)
    probs /= probs.sum(axis=1, keepdims=True)
    mean = probs.mean(axis=0)
    pe = -(mean * np.log(mean)).sum(axis=0)
    ee = -(probs * np.log(probs)).sum(axis=1).mean(axis=0)
    maps = {
        "predictive_entropy": pe.astype(np.float32),
        "expected_entropy": ee.astype(np.float32),
        "mutual_information": np.maximum(pe - ee, 0).astype(np.float32),
    }
    return mean.astype(np.float32), maps, probs.argmax(axis=1).astype(np.uint8)


def _to_zarr(folder, name, arr, rows):
    lead = arr.ndim - len(arr.shape[-3:]) if arr.ndim == 4 else arr.ndim - 3
    chunks = (1,) * lead + (rows,) + arr.shape[lead + 1 :]
    z = zarr.create_array(
        str(folder / f"{name}.zarr"), shape=arr.shape, dtype=arr.dtype, chunks=chunks
    )
    z[...] = arr
    return z


def _without_timings(summary):
    return {k: v for k, v in summary.items() if k != "timings"}


def _assert_same_summary(got, ref):
    """Equal JSON, numbers to float rounding (sums are added in another order)."""

    def walk(a, b, where):
        if isinstance(a, dict):
            assert a.keys() == b.keys(), where
            for key in a:
                walk(a[key], b[key], f"{where}.{key}")
        elif isinstance(a, list):
            assert len(a) == len(b), where
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{where}[{i}]")
        elif isinstance(a, float) and isinstance(b, float):
            assert a == pytest.approx(b, rel=1e-9, abs=1e-12), where
        else:
            assert a == b, where

    walk(_without_timings(got), _without_timings(ref), "summary")


def test_summary_of_zarr_arrays_equals_the_in_memory_summary_and_reads_blocks(
    tmp_path, monkeypatch
):
    shape = (24, 20, 18)
    mean, maps, samples = _prediction(shape)
    kw = dict(
        method="mc_dropout",
        source=("parameter",),
        n_samples=len(samples),
        class_names=["bg", "a", "b"],
    )
    ref = image_summary(mean_probs=mean, maps=maps, samples=samples, **kw)
    stored = {name: _to_zarr(tmp_path, name, arr, rows=4) for name, arr in maps.items()}
    z_mean = _to_zarr(tmp_path, "mean", mean, rows=4)
    z_samples = _to_zarr(tmp_path, "samples", samples, rows=4)
    monkeypatch.setattr("napari_probseg.core._blocks.BLOCK_ELEMENTS", 1)  # one row per block
    # reads: whole 4-row chunks, as many as fit in READ_BYTES (3 of a map)
    monkeypatch.setattr("napari_probseg.core._blocks.READ_BYTES", 4 * 3 * 4 * 20 * 18)
    reads = []
    real = zarr.Array.__getitem__

    def getitem(array, index):
        block = real(array, index)
        reads.append(np.shape(block))
        return block

    monkeypatch.setattr(zarr.Array, "__getitem__", getitem)
    got = image_summary(mean_probs=z_mean, maps=stored, samples=z_samples, **kw)
    monkeypatch.undo()
    _assert_same_summary(got, ref)
    assert got["regions"]["top"] and got["structure"]
    # never a whole array: at most 3 chunks of 4 rows of the first spatial axis per read
    spatial_rows = [s[-3] for s in reads]
    assert reads and max(spatial_rows) == 12 < shape[0]


def test_summary_blocks_equal_one_block_in_2d(monkeypatch):
    mean, maps, samples = _prediction((40, 36), n=5, k=2, seed=3)
    kw = dict(method="ensemble", source=("parameter",), n_samples=5, class_names=["bg", "fg"])
    ref = image_summary(mean_probs=mean, maps=maps, samples=samples, **kw)
    monkeypatch.setattr("napari_probseg.core._blocks.BLOCK_ELEMENTS", 36 * 5 * 3)  # 3 rows
    got = image_summary(mean_probs=mean, maps=maps, samples=samples, **kw)
    _assert_same_summary(got, ref)


def test_row_blocks_read_whole_chunks_and_compute_in_smaller_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr("napari_probseg.core._blocks.BLOCK_ELEMENTS", 2 * 10 * 3)  # 3 rows
    monkeypatch.setattr("napari_probseg.core._blocks.READ_BYTES", 4 * 2 * 10 * 8)  # one chunk
    z = zarr.create_array(
        str(tmp_path / "a.zarr"), shape=(2, 50, 10), dtype="f4", chunks=(1, 8, 10)
    )
    z[...] = np.arange(1000, dtype="f4").reshape(2, 50, 10)
    blocks = RowBlocks(z, lead=1)
    assert blocks.lazy and blocks.spatial == (50, 10)
    assert (blocks.rows, blocks.read_rows, blocks.stride) == (3, 8, 8)
    got = list(blocks)
    assert [(a, b) for a, b, _ in got][:4] == [(0, 3), (3, 6), (6, 8), (8, 11)]
    np.testing.assert_array_equal(np.concatenate([blk for _, _, blk in got], axis=1), z[...])
    # a chunk larger than READ_BYTES: part-chunk reads of at most READ_BYTES
    monkeypatch.setattr("napari_probseg.core._blocks.READ_BYTES", 4 * 2 * 10 * 5)
    assert RowBlocks(z, lead=1).read_rows == 5
    in_memory = RowBlocks(np.zeros((2, 50, 10)), lead=1)
    assert not in_memory.lazy and in_memory.rows == 3
    assert common_stride([blocks, in_memory]) == max(8, in_memory.read_rows)
    with pytest.raises(ValueError, match=r"^array: "):
        RowBlocks(np.zeros(3), lead=1)


def test_cli_predict_out_summary_equals_the_summary_of_the_saved_result(
    tmp_path, capsys, monkeypatch
):
    """``probseg predict --out`` streams into the store and summarizes from it, block by block;
    the printed summary equals the summary of the result loaded back whole."""
    from napari_probseg import engine
    from napari_probseg.cli import main
    from napari_probseg.engine._io import load_result
    from napari_probseg.models import load_card

    tiny_card(tmp_path, name="tiny3d", spatial_dims=3, dropout=0.2)
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(140, 16, 12)).astype(np.float32)  # output chunks: 64 rows
    np.save(tmp_path / "vol.npy", vol)
    out = tmp_path / "pred.zarr"
    monkeypatch.setattr("napari_probseg.core._blocks.BLOCK_ELEMENTS", 1)
    monkeypatch.setattr("napari_probseg.core._blocks.READ_BYTES", 4 * 64 * 16 * 12)  # a map chunk
    reads = []
    real = zarr.Array.__getitem__

    def getitem(array, index):
        block = real(array, index)
        if "pred.zarr" in str(array.store_path) or ".pred.zarr" in str(array.store):
            reads.append(np.shape(block))
        return block

    monkeypatch.setattr(zarr.Array, "__getitem__", getitem)
    argv = ["predict", str(tmp_path / "vol.npy"), "--model", "tiny3d", "--model-dir", str(tmp_path)]
    argv += ["--method", "mc_dropout", "-n", "3", "--seed", "2", "--out", str(out), "--json"]
    assert main(argv) == 0
    monkeypatch.undo()
    printed = json.loads(capsys.readouterr().out)
    result, _ = load_result(out)
    card = load_card(tmp_path / "tiny3d.json")
    ref = engine.summarize(result, reference=engine.card_reference(card))
    ref = {"image": printed["image"], "out": printed["out"], **ref}
    _assert_same_summary(printed, ref)
    assert zarr.open_group(str(out), mode="r").attrs["regions"] == printed["regions"]
    assert reads and max(s[-3] for s in reads if len(s) >= 3) == 64
