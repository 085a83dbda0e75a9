"""Researcher panels in a real napari viewer: a real run of the bundled lesions2d-unet (MC dropout,
N=4) landed on the 2D sample case with its four rater layers; a real project store on disk with
engine runs. Numbers are compared with napari_probseg.metrics / evaluation on the same arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_probseg._napari._eval_widgets import CalibrationWidget, ConformalWidget, ObserverWidget
from napari_probseg._napari._layers import Placement
from napari_probseg._napari._runner import RunOutput, RunRequest, run_job
from napari_probseg._napari._session import land
from napari_probseg.metrics import calibration, fit_temperature, ged
from napari_probseg.store import ProjectStore, majority_vote

pytest.importorskip("napari")
pytestmark = pytest.mark.timeout(240)

PLUGIN = "napari-probseg"
IMAGE = "synthetic lesions 2D"
RATERS = ["rater tight", "rater generous", "rater smoothed", "rater conservative"]


def _consume(gen):
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


@pytest.fixture(scope="module")
def method():
    from napari_probseg.models import load_method

    return load_method("lesions2d-unet", "mc_dropout", device="cpu")


@pytest.fixture(scope="module")
def sample_run(method):
    """RunOutput of lesions2d-unet (MC dropout, N=4, seed 0) on the 2D sample image."""
    from napari_probseg.data.synthetic import sample_case

    image, _, scale = sample_case(2)
    request = RunRequest(model=method, method="mc_dropout", n_samples=4, seed=0, device="cpu")
    return _consume(run_job(image, request, Placement(IMAGE, scale)))


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, method):
    """Three annotated images (four raters each) with a stored engine run of each."""
    from napari_probseg import engine
    from napari_probseg.data.synthetic import make_lesions
    from napari_probseg.evaluation import save_run

    path = tmp_path_factory.mktemp("eval") / "p.zarr"
    store = ProjectStore.create(path, class_names=["background", "lesion"])
    data = make_lesions(3, ndim=2, shape=(96, 96), n_raters=4, seed=5)
    for i, image in enumerate(data.images):
        iid = f"case{i}"
        store.add_image(image, image_id=iid)
        for r, name in enumerate(data.meta["rater_names"]):
            store.save_annotation(iid, name, data.raters[i, r], role="expert")
        result = engine.run_prediction(image, method, n_samples=4, seed=i, device="cpu")
        save_run(store, iid, result)
    return path


def _viewer_with_run(make_napari_viewer, output, *, raters=True, layers=False):
    """Viewer with the sample case and the run landed (its ~15 layers only if ``layers``)."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "lesions_2d")
    if not raters:
        for name in RATERS:
            viewer.layers.remove(name)
    if not layers:  # the panels need the session's record, not the display layers
        output = RunOutput(output.result, [], output.placement, output.request)
    assert land(viewer, output, viewer.layers[IMAGE]) is not None
    return viewer


def _wait(qtbot, widget, worker):
    assert worker is not None, widget.last_message
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert widget.last_message == "", widget.last_message


def _messages() -> list[str]:
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records]


def _masks(viewer, names=RATERS):
    return [np.asarray(viewer.layers[n].data) for n in names]


def _select(combo, text):
    index = combo.findText(text)
    assert index >= 0, [combo.itemText(i) for i in range(combo.count())]
    combo.setCurrentIndex(index)


def test_calibration_panel_matches_metrics_and_exports(
    make_napari_viewer, qtbot, sample_run, tmp_path
):
    viewer = _viewer_with_run(make_napari_viewer, sample_run, layers=True)
    widget = CalibrationWidget(viewer)
    assert widget.image_combo.currentText() == IMAGE  # run layers (highlight...) are no raters
    refs = [widget.reference_combo.itemText(i) for i in range(widget.reference_combo.count())]
    assert refs == ["majority of raters", "soft mean of raters"] + [f"rater: {r}" for r in RATERS]
    widget.bins_spin.setValue(10)
    _wait(qtbot, widget, widget.compute())
    probs = sample_run.result.maps.mean_probs
    majority = majority_vote(_masks(viewer))
    expected = calibration(probs, majority, n_bins=10)
    assert widget.report.result.ece == pytest.approx(expected.ece)
    assert widget.report.result.mce == pytest.approx(expected.mce)
    assert widget.report.result.ace == pytest.approx(expected.ace)
    assert len(widget.artists["accuracy"]) == 10  # one bar per bin
    text = widget.result_label.text()
    for part in (
        "ECE",
        "MCE",
        "ACE",
        "adaptive ECE",
        "10 equal-width bins",
        "majority of 4 raters",
    ):
        assert part in text, part

    paths = [widget.export(tmp_path / f"rel.{ext}") for ext in ("png", "svg", "json")]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in paths[1].read_text()[:500]
    numbers = json.loads(paths[2].read_text())
    assert numbers["calibration"]["ece"] == pytest.approx(expected.ece)
    assert (
        numbers["calibration"]["n_bins"] == 10
        and len(numbers["calibration"]["bins"]["counts"]) == 10
    )

    # one class against the rest, soft reference
    _select(widget.class_combo, "lesion vs rest")
    _select(widget.reference_combo, "soft mean of raters")
    _wait(qtbot, widget, widget.compute())
    soft = np.mean([m == 1 for m in _masks(viewer)], axis=0)
    expected = calibration(probs[1], soft, n_bins=10, confidence="foreground", foreground_map=True)
    assert widget.report.result.ece == pytest.approx(expected.ece)
    assert "'lesion' vs rest" in widget.result_label.text()

    # temperature on the log-probabilities: ECE before / after
    _select(widget.class_combo, "all classes (top-label)")
    _select(widget.reference_combo, "rater: rater generous")
    _wait(qtbot, widget, widget.fit_temperature())
    fit = widget.report.temperature
    direct = fit_temperature(
        np.log(np.clip(probs.astype(np.float64), 1e-12, None)),
        np.asarray(viewer.layers["rater generous"].data),
        n_bins=10,
    )
    assert fit.temperature == pytest.approx(direct.temperature, rel=1e-6)
    assert fit.ece_before == pytest.approx(widget.report.result.ece)
    assert f"ECE {fit.ece_before:.4f} → {fit.ece_after:.4f}" in widget.result_label.text()
    assert widget.artists["after"] is not None


def test_calibration_whole_store_equals_evaluation(make_napari_viewer, qtbot, store_path):
    from napari_probseg._napari._annotation_widget import AnnotationWidget
    from napari_probseg.evaluation import evaluate_store

    viewer = make_napari_viewer()
    widget = CalibrationWidget(viewer)
    _select(widget.scope_combo, "whole store")
    assert widget.compute() is None  # no store anywhere yet
    assert any("no store" in m for m in _messages())
    widget.path_edit.setText(str(store_path.parent / "missing.zarr"))
    assert widget.compute() is None
    assert widget.last_message.startswith("cannot open the store")
    widget.path_edit.setText("")
    panel = AnnotationWidget(viewer)  # the store open in the annotation panel is found
    panel.open_store(store_path)
    widget._refresh()
    _select(widget.reference_combo, "rater: tight")
    _select(widget.reference_combo, "majority of raters")
    _wait(qtbot, widget, widget.compute())
    expected = evaluate_store(ProjectStore.open(store_path, mode="r"), reference="majority")
    assert widget.report.n_images == 3
    assert widget.report.result.ece == pytest.approx(expected.calibration.ece)
    np.testing.assert_array_equal(widget.report.result.counts, expected.calibration.counts)
    assert "3 images" in widget.result_label.text()


def test_observer_panel_ged_equals_metrics(make_napari_viewer, qtbot, sample_run, tmp_path):
    viewer = _viewer_with_run(make_napari_viewer, sample_run)
    widget = ObserverWidget(viewer)
    items = [widget.rater_list.item(i).text() for i in range(widget.rater_list.count())]
    assert items == RATERS
    widget.rater_list.item(3).setCheckState(Qt.Unchecked)  # leave the conservative rater out
    _wait(qtbot, widget, widget.compute())
    refs = np.stack(_masks(viewer, RATERS[:3]))
    samples = sample_run.result.samples
    expected = ged(samples, refs)
    assert widget.report.metrics.ged.ged == pytest.approx(expected.ged)
    text = widget.result_label.text()
    assert "N = 4 of 4 samples vs M = 3 raters" in text and "self-pairs included" in text
    assert "HM-IoU" in text and "NCC" in text and "pairwise Dice" in text and "volume CoV" in text
    widget.unbiased_check.setChecked(True)
    _wait(qtbot, widget, widget.compute())
    assert widget.report.metrics.ged.ged == pytest.approx(ged(samples, refs, unbiased=True).ged)
    out = widget.export_json(tmp_path / "obs.json")
    assert json.loads(out.read_text())["ged"]["unbiased"] is True
    # the image changed since its run: an error notification, checked in the worker
    viewer.layers[IMAGE].data = np.asarray(viewer.layers[IMAGE].data) + 1
    assert widget.compute() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert "changed since its run" in widget.last_message
    assert any("changed since its run" in m for m in _messages())


def test_conformal_panel_draws_two_contour_layers(
    make_napari_viewer, qtbot, sample_run, store_path
):
    viewer = _viewer_with_run(make_napari_viewer, sample_run)
    widget = ConformalWidget(viewer)
    widget.path_edit.setText(str(store_path))
    widget.alpha_spin.setValue(0.1)
    _wait(qtbot, widget, widget.compute())
    inner = viewer.layers[f"{IMAGE} · conformal inner (α=0.1)"]
    outer = viewer.layers[f"{IMAGE} · conformal outer (α=0.1)"]
    assert inner.contour > 0 and outer.contour > 0
    assert tuple(inner.scale) == tuple(viewer.layers[IMAGE].scale)
    assert (np.asarray(inner.data) <= np.asarray(outer.data)).all() and outer.data.sum() > 0
    report = widget.report
    assert report.bands.n_calibration == 3
    assert report.coverage is not None and report.coverage.n_images == 1  # the current image
    text = widget.result_label.text()
    assert "calibrated on 3 image(s)" in text and "outer coverage" in text
    assert "α < 1/(n+1) = 0.250" in text  # 3 images cannot certify α = 0.1: trivial bands
    assert outer.data.all() and not inner.data.any()
    # again with another α: the bands are replaced, not piled up, and now informative
    widget.alpha_spin.setValue(0.3)
    _wait(qtbot, widget, widget.compute())
    names = [lay.name for lay in viewer.layers if "conformal" in lay.name]
    assert names == [f"{IMAGE} · conformal outer (α=0.3)", f"{IMAGE} · conformal inner (α=0.3)"]
    inner, outer = (viewer.layers[n].data for n in names[::-1])
    # informative now: the outer band no longer covers the whole image; inner stays inside it
    assert inner.sum() < outer.sum() < outer.size
    assert "1/(n+1)" not in widget.result_label.text()


def test_conformal_on_other_viewer_images(make_napari_viewer, qtbot, sample_run):
    viewer = _viewer_with_run(make_napari_viewer, sample_run)
    image = viewer.layers[IMAGE]
    copy = viewer.add_image(np.asarray(image.data), name="copy", scale=image.scale)
    placement = Placement("copy", tuple(image.scale))
    res = sample_run.result
    out = RunOutput(res, [], placement, sample_run.request)
    assert land(viewer, out, copy) is not None
    widget = ConformalWidget(viewer)
    _select(widget.image_combo, IMAGE)
    _select(widget.source_combo, "other images in the viewer")
    widget._refresh()
    assert widget.rater_list.count() == 4  # the sample's raters fit the copy's shape
    _wait(qtbot, widget, widget.compute())
    assert widget.report.bands.n_calibration == 1
    assert f"{IMAGE} · conformal outer (α=0.1)" in [lay.name for lay in viewer.layers]


def test_missing_prerequisites_are_notifications(make_napari_viewer, sample_run):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "lesions_2d")
    cal, obs, conf = CalibrationWidget(viewer), ObserverWidget(viewer), ConformalWidget(viewer)
    for widget in (cal, obs, conf):
        assert widget.compute() is None
        assert "run a model on this image first" in widget.last_message
    assert cal.fit_temperature() is None
    assert any("run a model on this image first" in m for m in _messages())
    assert cal.result_label.text() == ""

    bare = _viewer_with_run(make_napari_viewer, sample_run, raters=False)
    cal, obs, conf = CalibrationWidget(bare), ObserverWidget(bare), ConformalWidget(bare)
    for widget in (cal, obs, conf):
        assert widget.compute() is None
        assert "add rater layers or open a store" in widget.last_message, widget.last_message
    with pytest.raises(ValueError, match=r"^path: nothing to export"):
        cal.export("x.png")
    assert any("add rater layers or open a store" in m for m in _messages())


def test_calibration_panel_offers_only_input_images(make_napari_viewer, sample_run):
    viewer = _viewer_with_run(make_napari_viewer, sample_run, layers=True)
    panel = CalibrationWidget(viewer)
    items = [panel.image_combo.itemText(i) for i in range(panel.image_combo.count())]
    assert items == [IMAGE]  # not the run's probability and uncertainty maps
    assert any(lay._type_string == "image" and lay.name != IMAGE for lay in viewer.layers)
