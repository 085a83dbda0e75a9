"""Run panel in a real napari viewer: run, cancel, errors as notifications, stale results, 2D/3D."""

from __future__ import annotations

import time

import numpy as np
import pytest

from model_helpers import tiny_card
from napari_probseg._napari._layers import Placement
from napari_probseg._napari._run_widget import RunWidget
from napari_probseg._napari._runner import RunRequest
from napari_probseg._napari._session import get_session, show_layer

pytest.importorskip("napari")
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cards")
    return {
        "plain2d": tiny_card(folder, wrapper="plain", spatial_dims=2),
        "ssn2d": tiny_card(folder, wrapper="ssn", spatial_dims=2),
        "plain3d": tiny_card(folder, wrapper="plain", spatial_dims=3),
    }


def _image(ndim: int) -> np.ndarray:
    shape = (40, 48) if ndim == 2 else (6, 32, 40)
    rng = np.random.default_rng(ndim)
    img = rng.normal(size=shape).astype(np.float32)
    img[(slice(None),) * (ndim - 2) + (slice(12, 28), slice(14, 30))] += 3.0
    return img


def _errors(kind: str = "ERROR") -> list[str]:
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records if n.severity.name == kind]


def _run(qtbot, widget, **select) -> None:
    widget.select(**select)
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)


def _names(viewer) -> list[str]:
    return [layer.name for layer in viewer.layers]


def _run_names(viewer) -> list[str]:
    """Names of the current run's layers, created or still pending (hidden, created on demand)."""
    record = get_session(viewer).current
    pending = [i[1]["name"] if isinstance(i, tuple) else i.name for i in record.pending.values()]
    return _names(viewer) + pending


def test_run_2d_mc_dropout_lands_named_layers(make_napari_viewer, qtbot, cards):
    viewer = make_napari_viewer()
    image = viewer.add_image(_image(2), name="scan", scale=(0.5, 0.5), translate=(10, 0))
    widget = RunWidget(viewer)
    assert widget.add_model_card(cards["plain2d"])
    methods = [widget.method_combo.itemText(i) for i in range(widget.method_combo.count())]
    assert methods[0] == "mc_dropout" and "softmax" in methods  # only what the card supports
    assert widget.device_combo.itemText(0) == "auto" and "cpu" in [
        widget.device_combo.itemText(i) for i in range(widget.device_combo.count())
    ]
    _run(qtbot, widget, image="scan", method="mc_dropout", n_samples=3, seed=1, device="auto")
    assert widget.last_error is None, widget.last_error
    names = _run_names(viewer)
    assert "hypotheses (N=3)" in names
    assert "MI (epistemic)" in names
    assert "EE (aleatoric)" in names
    assert "predictive entropy" in names
    visible = {layer.name for layer in viewer.layers if layer.visible}
    assert visible == {
        "scan",
        "hypotheses (N=3)",
        "most uncertain 5% (predictive entropy)",
        *(n for n in names if n.startswith("plausible contours")),
    }
    assert {lay.name for lay in viewer.layers} == visible  # hidden layers: created when shown
    hyp = viewer.layers["hypotheses (N=3)"]
    assert hyp.data.shape == (3, 40, 48) and hyp.contour > 0
    assert tuple(hyp.scale) == (1.0, 0.5, 0.5)
    for layer in viewer.layers:
        if layer is image:
            continue
        assert tuple(layer.scale[-2:]) == (0.5, 0.5), layer.name
        assert tuple(layer.translate[-2:]) == (10.0, 0.0), layer.name
        meta = layer.metadata["probseg"]
        assert meta["input_signature"] == get_session(viewer).current.result.input_signature
        assert meta["provenance"]["n_samples"] == 3
    assert viewer.dims.ndim == 3  # the sample axis has its slider
    assert viewer.dims.axis_labels[0] == "sample"


def test_run_ssn_names_mutual_information_aleatoric(make_napari_viewer, qtbot, cards):
    viewer = make_napari_viewer()
    viewer.add_image(_image(2), name="img")
    widget = RunWidget(viewer)
    widget.add_model_card(cards["ssn2d"])
    _run(qtbot, widget, image="img", method="ssn", n_samples=2, device="cpu")
    assert widget.last_error is None, widget.last_error
    names = _run_names(viewer)
    # review eq. 42: for a latent model MI is aleatoric, the expected entropy the remainder;
    # short names, the full meaning in the metadata and the tooltip
    assert "MI (aleatoric, eq. 42)" in names and "EE (remainder, eq. 42)" in names
    assert not any(n.startswith("MI (epistemic") for n in names)
    record = get_session(viewer).current
    mi = show_layer(viewer, record, "mutual_information")
    assert mi.name == "MI (aleatoric, eq. 42)"
    assert mi.metadata["probseg"]["meaning"] == "aleatoric (rater ambiguity, eq. 42)"
    assert "mutual information: aleatoric (rater ambiguity, eq. 42)" in mi.source.path
    assert "image img" in mi.source.path


def test_run_3d_lands_points_and_per_plane_contours(make_napari_viewer, qtbot, cards):
    viewer = make_napari_viewer()
    viewer.add_image(_image(3), name="vol", scale=(2.0, 1.0, 1.0))
    widget = RunWidget(viewer)
    widget.add_model_card(cards["plain3d"])
    _run(qtbot, widget, image="vol", method="mc_dropout", n_samples=2, device="cpu")
    assert widget.last_error is None, widget.last_error
    hyp = viewer.layers["hypotheses (N=2)"]
    assert hyp.data.shape == (2, 6, 32, 40) and tuple(hyp.scale) == (1.0, 2.0, 1.0, 1.0)
    record = get_session(viewer).current
    assert record.layers["contours"].ndim == 3
    regions = show_layer(viewer, record, "regions")  # hidden layers are created on first use
    assert regions is not None and regions._type_string == "points"


def test_cancel_stops_promptly_and_keeps_nothing(make_napari_viewer, qtbot, cards):
    viewer = make_napari_viewer()
    layer = viewer.add_image(_image(2), name="img")
    widget = RunWidget(viewer)
    widget.add_model_card(cards["plain2d"])
    request = RunRequest(
        model=cards["plain2d"], method="mc_dropout", n_samples=400, device="cpu", batch_size=1
    )
    events = []
    widget.start(layer, request, Placement("img", (1.0, 1.0)))
    widget.worker.yielded.connect(events.append)
    qtbot.waitUntil(lambda: any(e.stage == "sample" for e in events), timeout=60_000)
    t0 = time.perf_counter()
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    stop = time.perf_counter() - t0
    assert stop < 5.0, f"cancel took {stop:.1f} s"
    assert _names(viewer) == ["img"]  # no half result
    assert get_session(viewer).current is None
    assert "Cancelled" in widget.status.text()
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_nan_image_is_an_error_notification(make_napari_viewer, qtbot, cards):
    viewer = make_napari_viewer()
    img = _image(2)
    img[3, 4] = np.nan
    viewer.add_image(img, name="bad")
    widget = RunWidget(viewer)
    widget.add_model_card(cards["plain2d"])
    before = len(_errors())
    _run(qtbot, widget, image="bad", method="mc_dropout", n_samples=2, device="cpu")
    errors = _errors()[before:]
    assert len(errors) == 1 and "NaN" in errors[0] and errors[0].startswith("probseg: run failed")
    assert _names(viewer) == ["bad"]
    assert widget.run_button.isEnabled()


def test_out_of_memory_is_a_notification_and_the_panel_recovers(make_napari_viewer, qtbot, cards):
    import torch

    from napari_probseg.models import load_method

    method = load_method(cards["plain2d"], "mc_dropout")

    def oom(*_):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    method.network.register_forward_hook(oom)
    viewer = make_napari_viewer()
    layer = viewer.add_image(_image(2), name="img")
    widget = RunWidget(viewer)
    before = len(_errors())
    request = RunRequest(model=method, method="mc_dropout", n_samples=2, device="cpu")
    widget.start(layer, request, Placement("img", (1.0, 1.0)))
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    errors = _errors()[before:]
    # The engine retries with smaller batches, then says what to do.
    assert len(errors) == 1 and "out of memory" in errors[0], errors
    assert _names(viewer) == ["img"] and widget.run_button.isEnabled()


def test_bad_model_card_is_an_error_notification(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    bad = tmp_path / "broken.json"
    bad.write_text('{"name": "broken", "schema_version": 1}')
    widget = RunWidget(viewer)
    before = len(_errors())
    assert widget.add_model_card(bad) is False
    errors = _errors()[before:]
    assert len(errors) == 1 and "broken.json" in errors[0]


def test_stale_result_is_dropped(make_napari_viewer, qtbot, cards):
    viewer = make_napari_viewer()
    layer = viewer.add_image(_image(2), name="img")
    widget = RunWidget(viewer)
    widget.add_model_card(cards["plain2d"])
    widget.select(image="img", method="mc_dropout", n_samples=2, device="cpu")
    widget.run()
    layer.data = layer.data + 1.0  # the user changes the image while the run is going
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert widget.last_error is None
    assert _names(viewer) == ["img"]
    assert "dropped" in widget.status.text()
    warnings = _errors("WARNING")
    assert any("changed during the run" in w for w in warnings)


@pytest.mark.slow
def test_bundled_model_runs_from_the_panel(make_napari_viewer, qtbot):
    from napari_probseg._napari._choices import bundled_choices
    from napari_probseg.data.synthetic import sample_case

    choices = [c for c in bundled_choices() if c.spatial_dims == 2]
    assert choices, "the bundled 2D models ship in resources/models"
    image, _, scale = sample_case(2)
    viewer = make_napari_viewer()
    viewer.add_image(image[:64, :64], name="crop", scale=scale)
    widget = RunWidget(viewer)
    _run(qtbot, widget, image="crop", model=choices[0].key, n_samples=2, device="cpu")
    assert widget.last_error is None, widget.last_error
    assert "hypotheses (N=2)" in _names(viewer)


def test_demo_opens_panels_and_lands_a_run(make_napari_viewer, qtbot, cards):
    from napari_probseg._napari._demo import choose_model, open_demo

    with pytest.raises(ValueError, match=r"^model"):
        choose_model(4)
    viewer = make_napari_viewer()
    done = []
    _, run, review = open_demo(
        sample="2d",
        model=cards["plain2d"],
        n_samples=2,
        device="cpu",
        viewer=viewer,
        on_done=done.append,
    )
    qtbot.waitUntil(lambda: bool(done), timeout=120_000)
    assert done[0] is not None and review.record is done[0]
    assert run.status.text().startswith("Done")
    assert "hypotheses (N=2)" in _names(viewer)
    docks = set(viewer.window.dock_widgets)
    assert {"Run probabilistic segmentation", "Review uncertainty"} <= docks


def test_run_panel_defaults_to_a_model_of_the_image_dimensionality(make_napari_viewer, cards):
    viewer = make_napari_viewer()
    widget = RunWidget(viewer)
    assert widget.add_model_card(cards["plain2d"])
    assert widget.add_model_card(cards["plain3d"])
    widget.model_combo.setCurrentIndex(
        next(i for i, c in enumerate(widget._models) if c.spatial_dims == 2)
    )
    viewer.add_image(_image(3), name="vol")
    assert widget.image_combo.currentText() == "vol"
    assert widget.current_model().spatial_dims == 3
    viewer.add_image(_image(2), name="slice")
    widget.image_combo.setCurrentText("slice")
    assert widget.current_model().spatial_dims == 2


def test_rerun_updates_layers_in_place_and_hidden_layers_are_created_when_shown(
    make_napari_viewer, qtbot, cards
):
    from napari_probseg._napari._review_widget import ReviewWidget
    from napari_probseg._napari._session import show_layer

    viewer = make_napari_viewer()
    viewer.add_image(_image(2), name="scan")
    widget = RunWidget(viewer)
    review = ReviewWidget(viewer)
    widget.add_model_card(cards["plain2d"])
    _run(qtbot, widget, image="scan", method="mc_dropout", n_samples=2, device="cpu")
    first = get_session(viewer).current
    assert "predictive_entropy" in first.pending and "predictive entropy" not in _names(viewer)
    entropy = show_layer(viewer, first, "predictive_entropy")
    assert entropy.visible and entropy in viewer.layers
    assert review.layers_box.legend_texts()  # every map has a legend with its range and units
    assert any("nats" in t and "ln 2" in t for t in review.layers_box.legend_texts())
    hyp, highlight = first.layers["hypotheses"], first.layers["highlight"]
    _run(qtbot, widget, image="scan", method="mc_dropout", n_samples=3, seed=4, device="cpu")
    second = get_session(viewer).current
    assert second is not first
    assert second.layers["hypotheses"] is hyp and hyp.data.shape[0] == 3  # same layer, new data
    assert hyp.name == "hypotheses (N=3)"
    assert second.layers["highlight"] is highlight
    assert second.layers["predictive_entropy"] is entropy  # shown before: updated, still shown
    np.testing.assert_array_equal(entropy.data, second.result.maps.predictive_entropy)
    assert len([lay for lay in viewer.layers if lay.name.startswith("hypotheses")]) == 1
    contours = first.layers.get("contours")
    if contours is not None and "contours" in second.layers:
        from napari_probseg._napari._layers import sample_contours

        assert second.layers["contours"] is contours and contours.name == "plausible contours (N=3)"
        paths, owner = sample_contours(np.asarray(second.result.samples))
        assert len(contours.data) == len(paths)
        for got, want in zip(contours.data, paths):
            np.testing.assert_allclose(got, want)
        np.testing.assert_array_equal(contours.features["sample"], owner)


def test_contours_take_the_worker_built_shapes_without_a_new_layer(make_napari_viewer):
    """The re-run path that keeps the GUI thread free: the Shapes layer already in the viewer
    takes over the shapes (meshes included) built in the worker."""
    from napari.layers import Shapes

    from napari_probseg._napari._session import _swap_shapes

    viewer = make_napari_viewer()
    square = np.array([[0, 0], [0, 5], [5, 5], [5, 0], [0, 0]], np.float32)
    old = viewer.add_shapes([square], shape_type="path", features={"sample": [0]})
    paths = [square + 10, square * 2, square + np.float32([3, 7])]
    new = Shapes(
        paths,
        shape_type="path",
        edge_color=[(1.0, 0.0, 0.0, 1.0)] * 3,
        edge_width=0.7,
        features={"sample": [0, 1, 2]},
    )
    assert _swap_shapes(old, new)
    assert old in viewer.layers and old.nshapes == 3
    for got, want in zip(old.data, paths):
        np.testing.assert_allclose(got, want)
    np.testing.assert_array_equal(old.features["sample"], [0, 1, 2])
    np.testing.assert_allclose(old.edge_color, [(1.0, 0.0, 0.0, 1.0)] * 3)
    np.testing.assert_allclose(old.edge_width, [0.7] * 3)
    assert old.shape_type == ["path"] * 3
    np.testing.assert_array_equal(old.thumbnail, new.thumbnail)  # drawn in the worker
    np.testing.assert_allclose(old.extent.data[1], [15, 15])  # the new extent
    old.selected_data = {2}  # the layer still works: select, remove
    old.remove_selected()
    assert old.nshapes == 2
    assert viewer.screenshot(canvas_only=True).size > 0  # and draws
