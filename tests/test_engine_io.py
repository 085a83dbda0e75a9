"""Saving, loading and summarizing engine results (real zarr v3 groups on disk)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from napari_probseg import engine
from test_engine import SoftmaxMethod, TinyMethod, _image


@pytest.fixture(scope="module")
def result():
    img = _image((32, 36))
    img[8:20, 10:24] += 3.0  # a bright blob: some structure for the regions
    return engine.run_prediction(img, TinyMethod(), n_samples=6, seed=2, patch_size=(16, 16))


def test_save_and_load_round_trip(result, tmp_path):
    path = engine.save_result(result, tmp_path / "out.zarr", regions=[{"rank": 1, "score": 2.5}])
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == 3
    assert group["samples"].dtype == np.uint8 and group["samples"].shape == (6, 32, 36)
    assert group["samples"].chunks == (1, 32, 36)
    assert group["mean_probs"].dtype == np.float32
    assert tuple(group["mean_probs"].metadata.dimension_names) == ("class", "y", "x")
    attrs = dict(group.attrs)
    assert attrs["napari_probseg"]["kind"] == "prediction"
    assert attrs["provenance"]["seed"] == 2 and attrs["regions"] == [{"rank": 1, "score": 2.5}]
    json.dumps(attrs)  # plain JSON
    loaded, regions = engine.load_result(path)
    np.testing.assert_array_equal(loaded.samples, result.samples)
    for name in ("mean_probs", "variance", "predictive_entropy", "mutual_information"):
        np.testing.assert_array_equal(getattr(loaded.maps, name), getattr(result.maps, name))
    np.testing.assert_array_equal(loaded.maps.volumes, result.maps.volumes)
    assert loaded.meanings == result.meanings and loaded.source == result.source
    assert loaded.input_signature == result.input_signature
    assert regions == [{"rank": 1, "score": 2.5}]
    # no leftover temporary directory
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]


def test_save_refuses_to_overwrite_and_float16(result, tmp_path):
    path = engine.save_result(result, tmp_path / "out.zarr")
    with pytest.raises(FileExistsError, match="out"):
        engine.save_result(result, path)
    engine.save_result(result, path, overwrite=True, map_dtype="float16")
    group = zarr.open_group(str(path), mode="r")
    assert group["predictive_entropy"].dtype == np.float16
    np.testing.assert_allclose(
        group["predictive_entropy"][...], result.maps.predictive_entropy, atol=1e-3
    )
    with pytest.raises(ValueError, match=r"^map_dtype"):
        engine.save_result(result, tmp_path / "x.zarr", map_dtype="int8")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=3)
    with pytest.raises(ValueError, match=r"^path"):
        engine.load_result(tmp_path / "other.zarr")


def test_summarize_names_aggregations_and_measures(result):
    from napari_probseg.core.structure import pairwise_dice, sample_set_entropy, volume_cov

    summary = engine.summarize(result)
    json.dumps(summary)
    assert summary["method"] == "mc_dropout" and summary["n_samples"] == 6
    assert summary["meanings"]["mutual_information"] == "epistemic"
    assert summary["labels"]["mutual_information"] == "mutual information (epistemic)"
    assert set(summary["timings"]) >= {"prepare", "sample", "finalize", "total"}
    scores = {(s["map"], s["aggregation"]): s for s in summary["scores"]}
    assert set(scores) == {
        (m, a)
        for m in ("predictive_entropy", "mutual_information", "expected_entropy")
        for a in ("mean", "foreground_normalized", "patch_max")
    }
    mean_pe = scores[("predictive_entropy", "mean")]["value"]
    assert mean_pe == pytest.approx(float(result.maps.predictive_entropy.mean()), rel=1e-6)
    fg = result.maps.mean_probs.argmax(0) > 0
    assert scores[("predictive_entropy", "foreground_normalized")]["value"] == pytest.approx(
        float(result.maps.predictive_entropy.astype(np.float64).sum() / fg.sum()), rel=1e-6
    )
    assert all(s["description"] for s in summary["scores"])
    measures = {m["measure"]: m for m in summary["structure"]}
    assert measures["pairwise_dice"]["value"] == pytest.approx(pairwise_dice(result.samples))
    assert measures["volume_cov"]["value"] == pytest.approx(volume_cov(result.samples))
    assert measures["sample_set_entropy"]["value"] == pytest.approx(
        sample_set_entropy(result.samples)
    )
    assert all(m["aggregation"] for m in summary["structure"])
    regions = summary["regions"]
    assert regions["map"] == "predictive_entropy" and len(regions["top"]) <= 20
    scores_r = [r["score"] for r in regions["top"]]
    assert scores_r == sorted(scores_r, reverse=True)


def test_summarize_deterministic_and_custom_aggregations():
    res = engine.run_prediction(_image((24, 24)), SoftmaxMethod(), n_samples=4)
    summary = engine.summarize(
        res, aggregations=["sum", {"method": "thresholded_share", "threshold": 0.1}]
    )
    assert {s["map"] for s in summary["scores"]} == {"predictive_entropy"}
    assert [s["aggregation"] for s in summary["scores"]] == ["sum", "thresholded_share"]
    dice = next(m for m in summary["structure"] if m["measure"] == "pairwise_dice")
    assert dice["value"] is None  # N = 1: no pair (NaN -> null)
    with pytest.raises(ValueError, match=r"^region_map"):
        engine.summarize(res, region_map="variance")
