"""Headless reports of the researcher panels (evaluation.store_reports) and the panels' rater-layer
helper (_napari._eval_model): references, rater layers, calibration of an image and of a real
store, temperature, observer metrics, conformal bands, the reliability diagram on an Agg figure.
Known answers from the definitions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_probseg._napari import _eval_model as layer_helpers
from napari_probseg.evaluation import store_reports as em
from napari_probseg.evaluation import store_reports as eo
from napari_probseg.metrics import ConformalBands, calibration, ged, hm_iou, ncc
from napari_probseg.store import ProjectStore

SHAPE = (24, 24)


def _box(lo: int, hi: int, shape=SHAPE) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[lo:hi, lo:hi] = 1
    return m


RATERS = {"r0": _box(6, 16), "r1": _box(6, 18), "r2": _box(8, 16)}


def _probs(seed: int = 0, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = np.clip(_box(7, 17, shape) * 0.7 + rng.uniform(0, 0.3, size=shape), 0, 1)
    return np.stack([1 - f, f])


def test_references_follow_their_definitions():
    maj = em.make_reference(RATERS, kind="majority", n_classes=2)
    # strictly more than half of the 3 raters: r0 & r1 cover [6:16]^2, r2 [8:16]^2 -> [6:16]^2
    np.testing.assert_array_equal(maj.labels, _box(6, 16))
    assert maj.description == "majority of 3 raters (ties to background)"
    soft = em.make_reference(RATERS, kind="soft", n_classes=2)
    assert soft.labels.shape == (2, *SHAPE) and soft.labels.dtype == np.float64
    assert soft.labels[1, 7, 7] == pytest.approx(2 / 3) and soft.labels[1, 17, 17] == pytest.approx(
        1 / 3
    )
    np.testing.assert_allclose(soft.labels.sum(axis=0), 1.0)
    np.testing.assert_array_equal(soft.hard, maj.labels)  # soft keeps the majority for fits
    one = em.make_reference(RATERS, kind="rater", rater="r2")
    assert one.description == "rater 'r2'" and one.raters == ["r2"]
    with pytest.raises(ValueError, match=r"^rater:"):
        em.make_reference(RATERS, kind="rater", rater="nobody")
    with pytest.raises(ValueError, match=r"^masks:.*rater layers or open a store"):
        em.make_reference({}, kind="majority")
    with pytest.raises(ValueError, match=r"^kind:"):
        em.make_reference(RATERS, kind="mean")


def test_image_calibration_matches_core_and_the_definition():
    probs = _probs()
    ref = em.make_reference(RATERS, kind="majority")
    rep = em.image_calibration(probs, ref, n_bins=10, scope="img")
    core = calibration(probs, ref.labels, n_bins=10)
    assert rep.result.ece == pytest.approx(core.ece) and rep.result.mce == pytest.approx(core.mce)
    # definition: top-label confidence, equal-width bins, ECE = sum n_b/N |acc_b - conf_b|
    conf = probs.max(0).ravel()
    correct = (probs.argmax(0) == ref.labels).ravel()
    idx = np.minimum((conf * 10).astype(int), 9)
    ece = sum(
        (idx == b).mean() * abs(correct[idx == b].mean() - conf[idx == b].mean())
        for b in range(10)
        if (idx == b).any()
    )
    assert rep.result.ece == pytest.approx(ece)
    assert rep.result.reference == "majority of 3 raters (ties to background)"
    assert "10 equal-width bins" in rep.text() and "adaptive ECE" in rep.text()
    # one class vs rest: p(class) binned against the class indicator
    rep1 = em.image_calibration(probs, ref, n_bins=10, class_index=1, class_names=["bg", "lesion"])
    core1 = calibration(probs[1], ref.labels == 1, n_bins=10, confidence="foreground")
    assert rep1.result.ece == pytest.approx(core1.ece)
    assert rep1.classes.startswith("class 'lesion' vs rest")
    # soft reference: accuracy = expected agreement
    soft = em.make_reference(RATERS, kind="soft")
    rep_s = em.image_calibration(probs, soft, n_bins=10)
    assert rep_s.result.label_kind == "soft"
    assert rep_s.result.ece == pytest.approx(calibration(probs, soft.labels, n_bins=10).ece)
    json.dumps(rep_s.to_dict(), allow_nan=False)  # NaN bins become null


def test_temperature_on_overconfident_log_probs_lowers_ece():
    rng = np.random.default_rng(1)
    q = rng.uniform(0.05, 0.95, size=(64, 64))
    y = (rng.uniform(size=q.shape) < q).astype(np.uint8)
    sharp = q**3 / (q**3 + (1 - q) ** 3)  # overconfident version of the true probabilities
    probs = np.stack([1 - sharp, sharp])
    ref = em.Reference(y, y, "truth", "rater", ["truth"])
    rep = em.temperature_on_probs(em.image_calibration(probs, ref, n_bins=15), probs, ref)
    t = rep.temperature
    assert t.temperature == pytest.approx(3.0, rel=0.15)  # log p / 3 undoes the cube
    assert t.ece_after < t.ece_before / 2
    assert t.ece_before == pytest.approx(rep.result.ece)  # T = 1 is the original calibration
    assert rep.after.ece == pytest.approx(t.ece_after)
    assert "ECE" in rep.text() and "→" in rep.text()
    assert rep.to_dict()["temperature"]["temperature"] == pytest.approx(t.temperature)


@pytest.fixture
def store(tmp_path):
    """Images a, b with three raters and a hand-made run; c with raters but no run; d no raters."""
    s = ProjectStore.create(tmp_path / "p.zarr", class_names=["background", "lesion"])
    rng = np.random.default_rng(0)
    for iid in "abcd":
        s.add_image(rng.normal(size=SHAPE).astype(np.float32), image_id=iid)
    for iid in "abc":
        for name, m in RATERS.items():
            if not (iid == "b" and name == "r2"):
                s.save_annotation(iid, name, m, role="expert")
    for i, iid in enumerate("ab"):
        p = _probs(i)
        s.save_prediction(iid, {"samples": p.argmax(0)[None].astype(np.uint8), "probs": p}, {})
    return s


def test_store_calibration_pools_pixels_and_lists_skipped(store):
    rep = em.store_calibration(store, kind="majority", n_bins=10)
    assert rep.n_images == 2
    assert {s["image_id"]: s["reason"] for s in rep.skipped} == {
        "c": "has no prediction run",
        "d": "has no annotations",
    }
    refs = [
        em.make_reference({r: store.latest(i, r)[0] for r in store.raters(i)}).labels for i in "ab"
    ]
    pooled = calibration(
        np.concatenate([_probs(0), _probs(1)], axis=1), np.concatenate(refs, axis=0), n_bins=10
    )
    assert rep.result.ece == pytest.approx(pooled.ece)
    np.testing.assert_array_equal(rep.result.counts, pooled.counts)
    assert "store" in rep.scope and "2 images" in rep.scope
    # one rater: the image without that rater is skipped
    rep2 = em.store_calibration(store, kind="rater", rater="r2", n_bins=10, class_index=1)
    assert rep2.n_images == 1 and any("'r2'" in s["reason"] for s in rep2.skipped)
    expected = calibration(_probs(0)[1], RATERS["r2"], n_bins=10, confidence="foreground")
    assert rep2.result.ece == pytest.approx(expected.ece)
    soft = em.store_calibration(store, kind="soft", n_bins=10)
    assert soft.result.label_kind == "soft" and np.isfinite(soft.adaptive_ece)


def test_store_calibration_without_usable_images_says_what_to_do(tmp_path):
    s = ProjectStore.create(tmp_path / "e.zarr")
    s.add_image(np.zeros(SHAPE, np.float32), image_id="x")
    with pytest.raises(ValueError, match=r"^store: no image has both"):
        em.store_calibration(s)


def test_observer_report_equals_core_metrics():
    rng = np.random.default_rng(2)
    samples = np.stack([_box(int(lo), int(lo) + 10) for lo in rng.integers(4, 10, size=6)])
    rep = eo.observer_report(samples, RATERS, n_samples=16)
    refs = np.stack(list(RATERS.values()))
    assert rep.metrics.ged.ged == pytest.approx(ged(samples, refs).ged)
    assert rep.metrics.hm_iou.hm_iou == pytest.approx(hm_iou(samples, refs).hm_iou)
    assert rep.metrics.ncc == pytest.approx(ncc(samples, refs), nan_ok=True)
    vols = samples.reshape(6, -1).sum(1)
    assert rep.volume_cov == pytest.approx(vols.std() / vols.mean())
    text = rep.text()
    assert "N = 6 of 6 samples vs M = 3 raters" in text and "self-pairs included" in text
    unb = eo.observer_report(samples, RATERS, unbiased=True)
    assert unb.metrics.ged.ged == pytest.approx(ged(samples, refs, unbiased=True).ged)
    assert "self-pairs excluded" in unb.text()
    json.dumps(rep.to_dict(), allow_nan=False)
    with pytest.raises(ValueError, match=r"^masks:"):
        eo.observer_report(samples, {})


def test_conformal_report_matches_bands_and_holds_out():
    pairs = [(_probs(i), RATERS[f"r{i % 2}"]) for i in range(6)]
    current = _probs(9)
    rep = eo.conformal_report(pairs, current, alpha=0.3, calibration_from="test")
    bands = ConformalBands.calibrate([p for p, _ in pairs], [y for _, y in pairs], alpha=0.3)
    assert rep.bands == bands and rep.coverage is None
    inner, outer = bands.apply(1 - current[0])
    np.testing.assert_array_equal(rep.outer, outer)
    np.testing.assert_array_equal(rep.inner, inner)
    assert (rep.inner <= rep.outer).all() and rep.outer.sum() > rep.inner.sum() > 0
    assert "no held-out data" in rep.text()
    held = eo.conformal_report(
        pairs, current, alpha=0.3, heldout=[(current, RATERS["r0"])], heldout_from="current",
        holdout_share=0.5,
    )  # fmt: skip
    assert held.bands.n_calibration == 3 and held.coverage.n_images == 4
    assert "held-out (4 image(s)" in held.text()
    assert json.loads(json.dumps(held.to_dict()))["heldout"]["n_images"] == 4
    with pytest.raises(ValueError, match=r"^pairs:"):
        eo.conformal_report([], current)


def test_store_conformal_pairs_excludes_current(store):
    pairs, ids = eo.store_conformal_pairs(store, exclude=["b"])
    assert ids == ["a"] and pairs[0][0].shape == (2, *SHAPE)
    np.testing.assert_array_equal(pairs[0][1], _box(6, 16))


def test_store_conformal_pairs_excludes_the_current_image_by_signature(store):
    from napari_probseg.engine import image_signature

    # The current image under another name (a viewer layer not opened from the store).
    current = image_signature(np.asarray(store.read_image("b")[0]))
    _pairs, ids = eo.store_conformal_pairs(
        store, exclude=["not-in-store"], exclude_signatures=[current]
    )
    assert ids == ["a"]


def test_rater_layers_pick_labels_of_the_image():
    from napari.layers import Image, Labels

    img = Image(np.zeros(SHAPE), name="img", metadata={"probseg": {"image_id": "img"}})
    plain = Labels(RATERS["r0"], name="rater tight")
    other_shape = Labels(np.zeros((5, 5), np.uint8), name="small")
    run_layer = Labels(
        RATERS["r1"], name="img · highlight", metadata={"probseg": {"what": "highlight"}}
    )
    store_ann = Labels(
        RATERS["r1"],
        name="img · r1",
        metadata={"probseg": {"what": "store-annotation", "image_id": "img"}},
    )
    other_img = Labels(
        RATERS["r1"],
        name="x · r1",
        metadata={"probseg": {"what": "store-annotation", "image_id": "x"}},
    )
    old = Labels(
        RATERS["r1"],
        name="img · r1 v1",
        metadata={"probseg": {"what": "store-annotation", "image_id": "img"}},
    )
    band = Labels(
        RATERS["r1"],
        name="img · conformal inner",
        metadata={"probseg": {"what": "conformal-inner"}},
    )
    layers = [img, plain, other_shape, run_layer, store_ann, other_img, old, band]
    assert layer_helpers.rater_layers(layers, img) == [plain, store_ann]


def test_reliability_diagram_has_one_bar_per_bin():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    probs = _probs()
    ref = em.make_reference(RATERS)
    rep = em.temperature_on_probs(em.image_calibration(probs, ref, n_bins=12), probs, ref)
    fig = Figure()
    FigureCanvasAgg(fig)
    artists = em.draw_reliability(fig, rep, title="t")
    assert len(artists["accuracy"]) == 12 and len(artists["histogram"]) == 12
    assert artists["after"] is not None
    np.testing.assert_allclose(
        [b.get_height() for b in artists["accuracy"]], np.nan_to_num(rep.result.accuracy)
    )
    fig.canvas.draw()


@pytest.mark.parametrize(
    ("kind", "rater", "class_index"),
    [("majority", None, None), ("soft", None, None), ("rater", "r1", 1), ("majority", None, 0)],
)
def test_store_calibration_is_evaluate_stores_number(store, kind, rater, class_index):
    """One computation per number: the panel's store calibration is ``evaluate_store``'s."""
    from napari_probseg.evaluation import evaluate_store

    rep = em.store_calibration(store, kind=kind, rater=rater, n_bins=10, class_index=class_index)
    reference = f"rater:{rater}" if rater else kind
    ev = evaluate_store(store, reference=reference, n_bins=10, class_index=class_index)
    assert rep.result.ece == ev.calibration.ece and rep.result.mce == ev.calibration.mce
    np.testing.assert_array_equal(rep.result.counts, ev.calibration.counts)
    assert rep.adaptive_ece == ev.means["adaptive_ece"].mean
    assert rep.n_images == len(ev.images) and rep.skipped == ev.skipped
    assert rep.result.confidence == ("top_label" if class_index is None else "foreground")
    assert "mean over images" in rep.text()


def test_class_view_calibration_of_evaluate_store_is_class_vs_rest(store):
    from napari_probseg.evaluation import evaluate_store

    ev = evaluate_store(store, reference="rater:r2", n_bins=10, class_index=1)
    expected = calibration(_probs(0)[1], RATERS["r2"], n_bins=10, confidence="foreground")
    assert ev.calibration.ece == pytest.approx(expected.ece)
    assert ev.settings["calibration_classes"].startswith("class 1 vs rest")
    with pytest.raises(ValueError, match=r"^class_index"):
        evaluate_store(store, class_index=5, image_ids=["a"])


def test_a_run_of_another_image_is_skipped_unless_asked_for(store):
    """``evaluate_store`` (and so every store report) lists a mismatched run as skipped."""
    from napari_probseg.evaluation import evaluate_store

    p = _probs(3)
    store.save_prediction(
        "c",
        {"samples": p.argmax(0)[None].astype(np.uint8), "probs": p},
        {"input_signature": "0" * 32},
    )
    ev = evaluate_store(store, n_bins=10)
    reasons = {s["image_id"]: s["reason"] for s in ev.skipped}
    assert "another image" in reasons["c"] and [e.image_id for e in ev.images] == ["a", "b"]
    assert em.store_calibration(store, n_bins=10).skipped == ev.skipped
    with pytest.raises(ValueError, match="another image"):
        evaluate_store(store, image_ids=["c"])


def test_panel_and_files_draw_the_same_reliability_diagram(store):
    """The panel's canvas and ``probseg evaluate --plots`` share one drawing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from napari_probseg.evaluation.plots import plot_reliability

    rep = em.store_calibration(store, n_bins=10)
    fig = Figure()
    FigureCanvasAgg(fig)
    panel = em.draw_reliability(fig, rep)
    file_fig = plot_reliability(rep.result)
    heights = [b.get_height() for b in panel["accuracy"]]
    file_bars = file_fig.axes[0].containers[0]
    np.testing.assert_allclose(heights, [b.get_height() for b in file_bars])
    assert fig.axes[1].get_ylabel() == file_fig.axes[1].get_ylabel() == "share of pixels"


def test_rater_agreement_dice_comes_from_the_one_iou_matrix(monkeypatch):
    """The annotation panel's Dice matrix is core's, computed on core.observer's IoU matrix."""
    from napari_probseg.core import agreement as core_agreement
    from napari_probseg.core import observer, structure

    assert core_agreement.iou_matrix is observer.iou_matrix is structure.iou_matrix
    masks = np.stack([RATERS[r] for r in RATERS])
    iou = observer.iou_matrix(masks)
    np.testing.assert_allclose(core_agreement.dice_matrix(masks), 2 * iou / (1 + iou))
    calls = []
    monkeypatch.setattr(
        core_agreement, "iou_matrix", lambda *a, **k: calls.append(1) or observer.iou_matrix(*a)
    )
    result = core_agreement.agreement(RATERS)
    assert calls and result.dice[0, 1] == pytest.approx(2 * iou[0, 1] / (1 + iou[0, 1]))
    from napari_probseg._napari import _annotation_model

    assert _annotation_model.agreement is core_agreement.agreement  # the panel's is core's
