"""Layer conversion and the review summary, without a viewer (known answers from the definitions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_helpers import make_result
from napari_probseg._napari._layers import (
    VISIBLE,
    Placement,
    annotation_layer,
    contour_paths,
    highlight_mask,
    prediction_layers,
    sample_contours,
)
from napari_probseg._napari._regions_nav import region_view
from napari_probseg._napari._summary import format_value, summary_rows, verdict_text


def _by_what(layers):
    return {kw["metadata"]["probseg"]["what"]: (data, kw, kind) for data, kw, kind in layers}


def test_highlight_mask_keeps_the_top_share_and_never_zero():
    umap = np.arange(100, dtype=float).reshape(10, 10)
    mask = highlight_mask(umap, 0.05)
    assert mask.dtype == np.uint8
    assert mask.sum() == 5 and mask.ravel()[-5:].all()
    flat = np.zeros((4, 4))
    assert highlight_mask(flat, 0.5).sum() == 0  # nothing uncertain: nothing highlighted
    with pytest.raises(ValueError, match=r"^quantile"):
        highlight_mask(umap, 0.0)


def test_contour_paths_of_a_square_closes_at_the_border():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:5, 3:7] = 1
    (path,) = contour_paths(mask, tolerance=0)
    # find_contours at level 0.5 runs half a pixel outside the foreground pixels.
    assert np.isclose(path[:, 0].min(), 1.5) and np.isclose(path[:, 0].max(), 4.5)
    assert np.isclose(path[:, 1].min(), 2.5) and np.isclose(path[:, 1].max(), 6.5)
    assert np.allclose(path[0], path[-1])  # closed
    border = np.zeros((6, 6), np.uint8)
    border[:3, :3] = 1
    (p,) = contour_paths(border)
    assert np.allclose(p[0], p[-1]) and p.min() >= -0.5 - 1e-6
    assert contour_paths(np.zeros((5, 5))) == []


def test_sample_contours_are_capped_per_mask_and_in_total():
    rng = np.random.default_rng(0)
    specks = np.zeros((6, 4, 40, 40), np.uint8)
    specks[:, :, 10:20, 10:20] = 1  # one real boundary per sample and plane...
    noise = rng.random(specks.shape) < 0.02
    specks[noise & (np.indices(specks.shape)[2] > 24)] = 1  # ...and many noise specks
    big = np.zeros((6, 4, 40, 40), np.uint8)
    big[..., 25:28, 25:28] = 1
    big[..., 30:33, 2:5] = 1
    paths, owner = sample_contours(np.maximum(specks, big), max_per_mask=2, min_vertices=1)
    assert len(paths) <= 6 * 4 * 2
    per_mask = np.unique(
        np.stack([owner, [int(p[0, 0]) for p in paths]], 1), axis=0, return_counts=True
    )[1]
    assert per_mask.max() <= 2
    longest = max(len(p) for p in paths)
    assert longest >= 36  # the 10 x 10 square's boundary is kept
    paths, _ = sample_contours(np.maximum(specks, big), max_paths=10, min_vertices=1)
    assert len(paths) <= 10


def test_sample_contours_3d_carry_their_plane():
    samples = np.zeros((2, 3, 8, 8), np.uint8)
    samples[0, 1, 2:5, 2:5] = 1
    samples[1, 2, 3:6, 3:6] = 1
    paths, owner = sample_contours(samples)
    assert len(paths) == 2 and owner.tolist() == [0, 1]
    assert paths[0].shape[1] == 3 and np.all(paths[0][:, 0] == 1)
    assert np.all(paths[1][:, 0] == 2)


@pytest.mark.parametrize(
    ("source", "method", "mi_name"),
    [
        (("parameter",), "mc_dropout", "MI (epistemic)"),
        (("latent",), "ssn", "MI (aleatoric, eq. 42)"),
    ],
)
def test_layers_names_meanings_visibility_and_scale(source, method, mi_name):
    _, result = make_result(source=source, method=method)
    placement = Placement("img", (0.5, 0.7), (3.0, -1.0))
    layers = prediction_layers(result, placement, quantile=0.05)
    names = [kw["name"] for _, kw, _ in layers]
    assert not any("img" in n for n in names)  # short names; the image is in the metadata
    assert max(len(n) for n in names) <= 60
    assert mi_name in names
    assert "predictive entropy" in names
    ee = "remainder" if source == ("latent",) else "aleatoric"
    assert f"EE ({ee}, eq. 42)" in names if source == ("latent",) else f"EE ({ee})" in names
    assert "hypotheses (N=8)" in names
    assert "most uncertain 5% (predictive entropy)" in names
    # Distinct hypotheses: 6 of 8 samples at one position, 2 at the other.
    assert "hypothesis 1 (75%)" in names and "hypothesis 2 (25%)" in names
    by = _by_what(layers)
    visible = {w for w, (_, kw, _) in by.items() if kw["visible"]}
    assert visible == set(VISIBLE)
    for what, (_, kw, _) in by.items():
        meta = kw["metadata"]["probseg"]
        assert meta["input_signature"] == result.input_signature
        assert meta["image"] == "img" and meta["n_samples"] == 8
        expected = (1.0, 0.5, 0.7) if what == "hypotheses" else (0.5, 0.7)
        assert tuple(kw["scale"]) == expected, what
    data, kw, kind = by["hypotheses"]
    assert kind == "labels" and data.shape == (8, 40, 48) and kw["_post"]["contour"] > 0
    _paths, kw, kind = by["contours"]
    assert kind == "shapes" and kw["shape_type"] == "path"
    assert sorted(set(kw["features"]["sample"].tolist())) == list(range(8))
    assert by["mean_probability"][1]["contrast_limits"] == (0.0, 1.0)
    assert by["predictive_entropy"][1]["contrast_limits"] == (0.0, pytest.approx(math.log(2)))


def test_softmax_has_no_decomposition_layers():
    _, result = make_result(source=("none",), method="softmax", shifts=(0,))
    layers = prediction_layers(result, Placement("img", (1.0, 1.0)))
    whats = set(_by_what(layers))
    assert "predictive_entropy" in whats
    assert "mutual_information" not in whats and "expected_entropy" not in whats


def test_regions_layer_2d_rectangles_and_3d_points():
    _, result = make_result()
    by = _by_what(prediction_layers(result, Placement("img", (1.0, 1.0)), quantile=0.1))
    rects, kw, kind = by["regions"]
    assert kind == "shapes" and kw["shape_type"] == "rectangle"
    ranks = kw["features"]["rank"]
    assert list(ranks) == list(range(1, len(rects) + 1))
    scores = kw["features"]["score"]
    assert np.all(np.diff(scores) <= 0)  # ranked by decreasing score
    _, result3 = make_result(ndim=3)
    by3 = _by_what(prediction_layers(result3, Placement("vol", (2.0, 1.0, 1.0)), quantile=0.1))
    points, kw3, kind3 = by3["regions"]
    assert kind3 == "points" and points.shape[1] == 3
    assert np.all(kw3["size"] >= 3)
    assert kw3["features"]["term"][0] == "predictive entropy"


def test_placement_must_match_the_samples():
    _, result = make_result()
    with pytest.raises(ValueError, match=r"^placement"):
        prediction_layers(result, Placement("img", (1.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match=r"^translate"):
        Placement("img", (1.0, 1.0), (0.0,))


def test_annotation_layer_is_a_copy_with_its_origin():
    from types import SimpleNamespace

    _, result = make_result()
    placement = Placement("img", (1.0, 1.0))
    record = SimpleNamespace(result=result, output=SimpleNamespace(placement=placement), layers={})
    data, kw, kind = annotation_layer(record, "sample", 7)
    assert (
        kind == "labels"
        and kw["name"] == "annotation"
        and kw["metadata"]["probseg"]["image"] == "img"
    )
    assert np.array_equal(data, result.samples[7]) and data is not result.samples[7]
    data[:] = 0
    assert result.samples[7].any()  # editing the annotation never touches the run
    meta = kw["metadata"]["probseg"]
    assert meta["origin"] == "sample 7" and meta["input_signature"] == result.input_signature
    with pytest.raises(ValueError, match=r"^index"):
        annotation_layer(record, "sample", 8)
    with pytest.raises(ValueError, match=r"^kind"):
        annotation_layer(record, "mean", None)


def test_region_view_world_coordinates():
    view = region_view([2, 4, 6, 10], scale=(0.5, 2.0), translate=(10.0, 0.0))
    # rows 2..5 cover [1.5, 5.5] in data space -> world 10 + 0.5 * that
    assert view.center == pytest.approx((10 + 0.5 * 3.5, 2.0 * 6.5))
    assert view.extent == pytest.approx((2.0, 12.0))
    assert view.zoom((400, 600), fill=0.5) == pytest.approx(min(200 / 2.0, 300 / 12.0))


# ---------------------------------------------------------------------------- summary rendering
def test_summary_rows_render_the_one_summary():
    """The panel's rows are the engine summary's values, formatted, never recomputed."""
    from napari_probseg import engine

    _, result = make_result(width=0.3, shifts=(0, 0, 0, 0, 6, 6, 6, 6))
    summary = engine.summarize(result)
    rows = dict(summary_rows(summary))
    for score in summary["scores"]:
        how = score["aggregation"].replace("_", "-")
        key = next(k for k in rows if k.startswith(f"{score['label']} · {how}"))
        assert rows[key] == format_value(score["value"])
    assert rows["samples N"] == "8"
    dice = next(m for m in summary["structure"] if m["measure"] == "pairwise_dice")
    assert rows["pairwise Dice (mean over pairs)"] == format_value(dice["value"])
    # two positions, 4 samples each: clusters give 1 bit exactly
    assert rows["sample-set entropy, clusters (bits)"].startswith("1 ")
    assert verdict_text(summary).startswith(summary["verdict"]["sentence"])
    assert "§7.1" in verdict_text(summary)
    assert format_value(None) == "—" and format_value(math.nan) == "NaN"


@pytest.mark.parametrize(
    ("term", "source", "short", "nested"),
    [
        ("mutual_information", "parameter", "MI (epistemic)", "MI, epistemic"),
        ("expected_entropy", "input", "EE (aleatoric)", "EE, aleatoric"),
        ("mutual_information", "latent", "MI (aleatoric, eq. 42)", "MI, aleatoric, eq. 42"),
        ("expected_entropy", "latent", "EE (remainder, eq. 42)", "EE, remainder, eq. 42"),
        (
            "mutual_information",
            ("input", "latent"),
            "MI (epistemic + aleatoric, eq. 42)",
            "MI, epistemic + aleatoric, eq. 42",
        ),
        ("predictive_entropy", "latent", "predictive entropy", "predictive entropy"),
        ("mutual_information", "none", "MI", "MI"),
    ],
)
def test_short_term_labels_keep_the_meaning_word_and_eq_42(term, source, short, nested):
    from napari_probseg._napari._layers import layer_tooltip, short_term_label
    from napari_probseg.core.uncertainty import term_meanings

    assert short_term_label(term, source) == short
    assert short_term_label(term, source, nested=True) == nested
    meaning = term_meanings(source).get(term)
    if meaning:  # the tooltip carries what the short name leaves out
        tip = layer_tooltip({"what": term, "image": "scan", "meaning": meaning})
        assert tip.startswith("image scan") and meaning.replace("/", "∕") in tip


def test_layer_names_fit_the_layer_list():
    """Every layer name of a latent (eq. 42) run is short enough for napari's layer list."""
    _, result = make_result(source=("latent",), method="ssn")
    names = [kw["name"] for _, kw, _ in prediction_layers(result, Placement("img", (1.0, 1.0)))]
    long = [n for n in names if len(n) > 34]
    assert long == [] or long == ["most uncertain 5% (predictive entropy)"], long
