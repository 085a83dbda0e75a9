"""Review panel in a real napari viewer: summary, region navigation (table and n / p keys),
highlight share, "use as annotation"; runs landed from synthetic results of known geometry."""

from __future__ import annotations

import numpy as np
import pytest

from napari_helpers import make_result
from napari_probseg._napari._layers import Placement, prediction_layers
from napari_probseg._napari._regions_nav import region_view
from napari_probseg._napari._review_widget import ReviewWidget
from napari_probseg._napari._runner import RunOutput, RunRequest
from napari_probseg._napari._session import land

pytest.importorskip("napari")
pytestmark = pytest.mark.timeout(120)


def _land(viewer, *, ndim=2, source=("parameter",), method="mc_dropout", scale=None, two=False):
    image, result = make_result(
        ndim=ndim, source=source, method=method, scale=scale, two_objects=two
    )
    scale = tuple(result.scale)
    layer = viewer.add_image(image, name="img", scale=scale)
    placement = Placement("img", scale)
    output = RunOutput(
        result=result,
        layers=prediction_layers(result, placement, quantile=0.1),
        placement=placement,
        request=RunRequest(model="synthetic", method=method, n_samples=result.n_samples),
    )
    record = land(viewer, output, layer)
    assert record is not None
    return record


def test_summary_names_aggregations_and_says_what_to_do(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    assert "No run yet" in widget.title.text()
    _land(viewer)
    assert widget.record is not None  # the panel follows new runs
    text = widget.summary.text()
    for expected in (
        "samples N",
        "pairwise Dice",
        "volume CoV",
        "predictive entropy · mean",
        "mutual information (epistemic) · foreground-normalized",
        "patch-max",
    ):
        assert expected in text, expected
    assert "mc_dropout" in widget.title.text() and "N = 8" in widget.title.text()
    # synthetic run without a card: the verdict says it cannot judge, never "confident"
    assert widget.sentence.text().startswith("Cannot judge")
    assert "no in-domain reference" in widget.sentence.text()


def test_ssn_summary_calls_the_doubt_irreducible(make_napari_viewer):
    viewer = make_napari_viewer()
    _land(viewer, source=("latent",), method="ssn")
    widget = ReviewWidget(viewer)  # created after the run: shows the current one
    assert "eq. 42" in widget.sentence.text()  # the latent reading is labelled, with its caveat
    assert "mutual information (aleatoric" in widget.summary.text()


def test_selecting_a_row_moves_camera_and_outlines_the_region(make_napari_viewer):
    viewer = make_napari_viewer()
    record = _land(viewer, scale=(0.5, 2.0))
    widget = ReviewWidget(viewer)
    n = widget.table.rowCount()
    assert n == len(record.regions["rank"]) >= 1
    assert widget.table.item(0, 0).text() == "1"
    widget.table.selectRow(n - 1)
    view = region_view(record.regions["bbox"][n - 1], scale=(0.5, 2.0))
    assert np.allclose(viewer.scene.camera.center[-2:], view.center)
    assert viewer.scene.camera.zoom == pytest.approx(view.zoom(tuple(viewer.canvas.size)))
    outline = viewer.layers["current region"]
    assert outline.metadata["probseg"]["rank"] == n
    assert len(outline.data[0]) == 4
    lo, hi = outline.data[0].min(0), outline.data[0].max(0)
    bbox = np.asarray(record.regions["bbox"][n - 1], float)
    assert np.allclose(lo, bbox[:2] - 0.5) and np.allclose(hi, bbox[2:] - 0.5)
    assert viewer.layers.selection.active.name == "img"  # n / p stay with the viewer


def test_region_keys_walk_the_regions(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    record = _land(viewer, two=True)
    widget = ReviewWidget(viewer)
    assert len(record.regions["rank"]) >= 2
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, ".")
    assert widget.current_index == 0
    qtbot.keyClick(canvas, ".")
    assert widget.current_index == 1
    view = region_view(record.regions["bbox"][1], scale=(1.0, 1.0))
    assert np.allclose(viewer.scene.camera.center[-2:], view.center)
    qtbot.keyClick(canvas, ",")
    assert widget.current_index == 0
    assert widget.table.selectedIndexes()[0].row() == 0


def test_region_keys_work_while_a_labels_layer_paints(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _land(viewer, two=True)
    widget = ReviewWidget(viewer)
    labels = widget.use_as_annotation(("consensus", None))
    assert viewer.layers.selection.active is labels and labels.mode == "paint"
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, ".")
    qtbot.keyClick(canvas, ".")
    assert widget.current_index == 1
    qtbot.keyClick(canvas, ",")
    assert widget.current_index == 0
    assert labels.mode == "paint"  # the keys did not switch the Labels tool


def test_run_layers_have_short_names_and_say_image_and_run_in_the_tooltip(make_napari_viewer):
    viewer = make_napari_viewer()
    record = _land(viewer)
    hyp = record.layers["hypotheses"]
    assert hyp.name == "hypotheses (N=8)"
    tip = hyp.get_source_str()
    assert "image img" in tip and "mc_dropout, N = 8" in tip
    assert viewer.dims.axis_labels[0] == "sample"  # not "-3"


def test_region_keys_in_the_3d_view(make_napari_viewer):
    viewer = make_napari_viewer()
    record = _land(viewer, ndim=3, two=True)
    widget = ReviewWidget(viewer)
    widget.select_region(0)  # outline created in the 2D view...
    viewer.dims.ndisplay = 3
    widget.next_region()  # ...moved in the 3D view (napari raised a concatenation error)
    widget.previous_region()
    assert widget.current_index == 0
    outline = viewer.layers["current region"]
    assert outline.ndim == 3 and len(outline.data) == 1
    z = round(record.regions["centroid"][0][0])
    assert np.allclose(outline.data[0][:, 0], z)


def test_run_warnings_reach_the_review_panel_and_a_notification(make_napari_viewer):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer)
    image, result = make_result()
    result.provenance["warnings"] = ["spacing: image spacing (1, 1) differs from the model's"]
    result.provenance["domain"] = {
        "checked": True,
        "in_domain": False,
        "warnings": ["out of domain: intensities far outside training"],
    }
    layer = viewer.add_image(image, name="img")
    placement = Placement("img", (1.0, 1.0))
    output = RunOutput(
        result=result,
        layers=prediction_layers(result, placement),
        placement=placement,
        request=RunRequest(model="synthetic", method="mc_dropout"),
    )
    assert land(viewer, output, layer) is not None
    shown = widget.warnings.text()
    assert "spacing" in shown and "out of domain" in shown
    assert not widget.warnings.isHidden()
    notes = [str(n.message) for n in notification_manager.records if n.severity.name == "WARNING"]
    assert any("spacing" in n and "out of domain" in n for n in notes)


def test_3d_navigation_sets_the_plane(make_napari_viewer):
    viewer = make_napari_viewer()
    record = _land(viewer, ndim=3)
    widget = ReviewWidget(viewer)
    widget.select_region(0)
    z = round(record.regions["centroid"][0][0])
    plane_axis = viewer.dims.ndim - 3  # after the sample axis
    assert viewer.dims.point[plane_axis] == pytest.approx(2.0 * z)
    outline = viewer.layers["current region"]
    assert outline.ndim == 3 and np.allclose(outline.data[0][:, 0], z)


def test_highlight_share_updates_the_layer(make_napari_viewer):
    viewer = make_napari_viewer()
    record = _land(viewer)
    widget = ReviewWidget(viewer)
    layer = record.layers["highlight"]
    before = int(layer.data.sum())
    widget.quantile_spin.setValue(2.0)
    widget._on_quantile()
    assert int(layer.data.sum()) < before
    assert layer.name == "most uncertain 2% (predictive entropy)"
    assert layer.metadata["probseg"]["quantile"] == pytest.approx(0.02)


def test_use_as_annotation_from_hypothesis_and_sample(make_napari_viewer):
    viewer = make_napari_viewer()
    record = _land(viewer)
    widget = ReviewWidget(viewer)
    labels = [widget.source_combo.itemText(i) for i in range(widget.source_combo.count())]
    assert labels[:3] == ["consensus", "hypothesis 1 (75%)", "hypothesis 2 (25%)"]
    assert "sample 7" in labels
    layer = widget.use_as_annotation(("hypothesis", 2))
    assert layer.name == "annotation" and layer.editable and layer.mode == "paint"
    assert np.array_equal(layer.data, record.layers["hypothesis:2"].data)
    meta = layer.metadata["probseg"]
    assert meta["origin"] == "hypothesis 2" and meta["input_signature"]
    layer.data[0, 0] = 1  # editing the annotation never changes the run's layers
    assert record.layers["hypothesis:2"].data[0, 0] == 0
    widget.source_combo.setCurrentText("sample 3")
    second = widget.use_as_annotation()
    assert np.array_equal(second.data, record.result.samples[3])
    # A later run on the same image replaces its layers but keeps the annotations.
    _, result = make_result()
    placement = Placement("img", (1.0, 1.0))
    out = RunOutput(result, prediction_layers(result, placement), placement, RunRequest("x", "y"))
    viewer.layers["img"].data = viewer.layers["img"].data  # same content: not stale
    assert land(viewer, out, viewer.layers["img"]) is not None
    annotations = [lay for lay in viewer.layers if "annotation" in lay.name]
    assert len(annotations) == 2
