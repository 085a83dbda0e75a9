"""Annotation panel and store reader in a real napari viewer with a real project store on disk:
versions with metadata, accepted hypotheses, blind mode, autosave and recovery, hostile ids,
failed saves that lose nothing, agreement, and opening a store with the reader."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from napari_helpers import make_result
from napari_probseg.store import ProjectStore

pytest.importorskip("napari")
pytestmark = pytest.mark.timeout(180)

from napari_probseg._napari._annotation_widget import AnnotationWidget  # noqa: E402


def _notes(kind: str = "ERROR") -> list[str]:
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records if n.severity.name == kind]


def _finish(qtbot, panel, worker):
    """Wait for the panel's store worker (save, agreement, loading) to end."""
    assert worker is not None
    qtbot.waitUntil(lambda: panel.worker is None, timeout=60_000)


def _save(qtbot, panel, note=None):
    """Save in the panel's worker and return the ``SaveOutcome`` (None: nothing changed)."""
    _finish(qtbot, panel, panel.save(note))
    return panel.last_outcome


def _show(qtbot, panel):
    """Names of the layers "Show raters' latest" added."""
    _finish(qtbot, panel, panel.show_raters())
    return [lay.name for lay in panel.last_loaded]


def _tree(root) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_size, st.st_mtime_ns)
    return out


def _store_with(tmp_path, masks: dict[str, np.ndarray], *, shape=(8, 8), scale=(0.5, 2.0)):
    store = ProjectStore.create(tmp_path / "p.zarr")
    store.add_image(
        np.arange(np.prod(shape), dtype=np.float32).reshape(shape), image_id="img", scale=scale
    )
    for rater, mask in masks.items():
        store.save_annotation("img", rater, mask, role="expert", tools=("brush",))
    return store


def test_create_store_add_image_and_save_two_versions(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    image = np.random.default_rng(0).normal(size=(4, 16, 20)).astype(np.float32)
    viewer.add_image(image, name="case 1 · T1", scale=(2.0, 0.5, 0.5))
    panel = AnnotationWidget(viewer)
    store = panel.open_store(tmp_path / "new.zarr")
    assert store is not None and (tmp_path / "new.zarr" / "zarr.json").is_file()
    assert panel.add_image_layer() == "case_1_T1"
    assert store.image_info("case_1_T1")["scale"] == (2.0, 0.5, 0.5)
    np.testing.assert_array_equal(store.read_image("case_1_T1")[0], image)
    assert panel.set_rater("alice", "resident")
    layer = panel.start_editing("empty")
    assert layer.name == "case_1_T1 · alice (editing)" and tuple(layer.scale) == (2.0, 0.5, 0.5)
    assert not layer.data.any()

    layer.mode = "paint"
    layer.brush_size = 3
    layer.paint((1, 8, 10), 1)
    layer.mode = "fill"
    layer.fill((2, 0, 0), 2)  # flood-fills plane 2's background with label 2
    assert panel.session.tools == ["brush", "fill"] and panel.session.dirty
    assert panel.tools_label.text() == "brush, fill"
    out = _save(qtbot, panel, note="first pass")
    assert out is not None and out.committed
    v1 = out.version
    assert (v1.version, v1.rater, v1.role, v1.note) == (1, "alice", "resident", "first pass")
    assert v1.tools == ("brush", "fill") and v1.time_spent_s > 0
    assert v1.source_run is None and v1.extra["origin"] == "empty"
    mask, record = store.latest("case_1_T1", "alice")
    np.testing.assert_array_equal(mask, layer.data)
    assert record == v1

    layer.mode = "erase"
    layer.paint((1, 8, 10), 0)
    v2 = _save(qtbot, panel).version
    assert v2.version == 2 and v2.based_on == 1 and not v2.conflict
    assert v2.tools == ("brush", "fill", "eraser")
    assert [v.version for v in store.history("case_1_T1", "alice")] == [1, 2]
    top = panel.tree.topLevelItem(0)
    assert top.text(0) == "alice" and top.childCount() == 2
    assert [top.child(i).text(0) for i in range(2)] == ["v1", "v2"]
    assert top.child(0).text(3) == "brush, fill" and top.child(0).text(2) == "resident"
    # any version loads back as a layer with the image's scale
    panel.tree.setCurrentItem(top.child(0))
    _finish(qtbot, panel, panel.load_selected())
    (old,) = panel.last_loaded
    assert old.name == "case_1_T1 · alice v1" and tuple(old.scale) == (2.0, 0.5, 0.5)
    np.testing.assert_array_equal(old.data, store.read_version("case_1_T1", "alice", 1)[0])


def _land_run(viewer):
    from napari_probseg._napari._layers import Placement, prediction_layers
    from napari_probseg._napari._runner import RunOutput, RunRequest
    from napari_probseg._napari._session import land

    image, result = make_result(ndim=2)
    layer = viewer.add_image(image, name="img", scale=tuple(result.scale))
    placement = Placement("img", tuple(result.scale))
    output = RunOutput(
        result=result,
        layers=prediction_layers(result, placement, quantile=0.1),
        placement=placement,
        request=RunRequest(model="synthetic", method="mc_dropout", n_samples=result.n_samples),
    )
    assert land(viewer, output, layer) is not None
    return image, result


def test_accepted_hypothesis_records_its_source_run(make_napari_viewer, qtbot, tmp_path):
    from napari_probseg._napari._review_widget import ReviewWidget

    viewer = make_napari_viewer()
    _image, result = _land_run(viewer)
    review = ReviewWidget(viewer)
    hyp = review.use_as_annotation(("sample", 6))
    assert hyp.name == "annotation"
    panel = AnnotationWidget(viewer)
    panel.open_store(tmp_path / "p.zarr")
    panel.add_image_layer(layer=viewer.layers["img"])
    panel.set_rater("carol", "expert")
    assert panel.start_combo.findText("annotation (sample 6)") >= 0
    layer = panel.start_editing("hypothesis")
    assert layer is hyp  # the review panel's layer is edited in place
    layer.mode = "paint"
    layer.paint((5, 5), 1)
    v = _save(qtbot, panel).version
    assert v.tools == ("accepted_hypothesis", "brush")
    assert v.source_sample == 6
    assert v.source_run == "mc_dropout-seed0"  # derived from the run's provenance
    assert v.extra["origin"] == "hypothesis" and v.extra["source_mask"] == "sample 6"
    assert v.extra["input_signature"] == result.input_signature


def test_blind_mode_hides_other_raters_until_own_save(make_napari_viewer, qtbot, tmp_path):
    a = np.zeros((8, 8), np.uint8)
    a[2:6, 2:6] = 1
    store = _store_with(tmp_path, {"alice": a})
    viewer = make_napari_viewer()
    panel = AnnotationWidget(viewer)
    panel.blind_check.setChecked(False)
    panel.open_store(store.path)
    panel.set_rater("bob", "trainee")
    assert _show(qtbot, panel) == ["img · alice"]
    panel.blind_check.setChecked(True)  # blind: alice's layer leaves the viewer
    assert "img · alice" not in [lay.name for lay in viewer.layers]
    assert panel.tree.topLevelItemCount() == 0
    assert _show(qtbot, panel) == []
    before = len(_notes())
    assert panel.load_version("alice") is None
    assert panel.start_editing("consensus") is None
    assert panel.compute_agreement() is None
    errors = _notes()[before:]
    assert len(errors) == 3 and all("blind mode" in e for e in errors)
    assert "img · alice" not in [lay.name for lay in viewer.layers]

    layer = panel.start_editing("empty")
    layer.mode = "paint"
    layer.paint((3, 3), 1)
    assert _save(qtbot, panel).version.version == 1
    names = _show(qtbot, panel)
    assert names == ["img · alice", "img · bob"]
    np.testing.assert_array_equal(viewer.layers["img · alice"].data, a)
    assert panel.tree.topLevelItemCount() == 2


def test_autosave_writes_a_draft_recovered_on_reopen(make_napari_viewer, qtbot, tmp_path):
    store = _store_with(tmp_path, {})
    viewer = make_napari_viewer()
    panel = AnnotationWidget(viewer)
    panel.open_store(store.path)
    panel.set_rater("dora", "expert")
    panel.set_autosave_interval(0.05)
    layer = panel.start_editing("empty")
    layer.mode = "paint"
    layer.paint((4, 4), 1)
    # The tick writes the draft in a worker; its end is handled on the GUI thread.
    qtbot.waitUntil(lambda: panel.policy.drafts_written >= 1 and not panel.busy, timeout=10_000)
    assert "dora" in store.draft_raters("img")
    assert panel.policy.drafts_written >= 1 and not panel.session.dirty
    np.testing.assert_array_equal(store.load_draft("img", "dora")[0], layer.data)
    expected = np.array(layer.data)
    panel.timer.stop()  # "crash": the session ends without a save

    viewer2 = make_napari_viewer()
    panel2 = AnnotationWidget(viewer2)
    before = len(_notes("INFO"))
    panel2.open_store(store.path)
    panel2.set_rater("dora", "expert")
    assert panel2.draft_available and panel2.recover_button.isVisibleTo(panel2)
    assert any("autosaved draft" in n for n in _notes("INFO")[before:])
    assert panel2.start_editing("empty") is None  # the draft is not silently overwritten
    recovered = panel2.recover_draft()
    np.testing.assert_array_equal(recovered.data, expected)
    assert panel2.session.origin == "draft" and panel2.session.tools == ["brush"]
    v = _save(qtbot, panel2).version
    assert v.version == 1 and v.tools == ("brush",) and v.extra["recovered_draft"]
    assert store.draft_raters("img") == []  # the commit retires the draft


def test_hostile_rater_id_is_a_notification_and_writes_nothing(make_napari_viewer, tmp_path):
    store = _store_with(tmp_path, {})
    viewer = make_napari_viewer()
    panel = AnnotationWidget(viewer)
    panel.open_store(store.path)
    assert panel.wait()  # the image is read in a worker
    snapshot = _tree(store.path)
    before = len(_notes())
    for hostile in ("../../etc/passwd", "alice/../../x", ".hidden", "CON", "a b", ""):
        assert panel.set_rater(hostile) is None
    assert panel.rater is None
    assert panel.save() is None and panel.start_editing() is None
    assert panel.add_image_layer(layer=viewer.layers["img"], image_id="../img2") is None
    errors = _notes()[before:]
    assert len(errors) == 9, errors
    assert sum("not a valid identifier" in e for e in errors) >= 5
    assert _tree(store.path) == snapshot
    assert not (tmp_path / "etc").exists()


def test_failed_save_keeps_the_layer_and_the_work(make_napari_viewer, qtbot, tmp_path):
    store = _store_with(tmp_path, {"erin": np.zeros((8, 8), np.uint8)})
    viewer = make_napari_viewer()
    panel = AnnotationWidget(viewer, recovery_dir=tmp_path / "rescue")
    panel.open_store(store.path)
    panel.set_rater("erin", "expert")
    layer = panel.start_editing("version")
    layer.mode = "paint"
    layer.paint((2, 2), 1)
    # the rater's history is damaged meanwhile (by another tool): commit and draft both fail
    (store.path / "images" / "img" / "annotations" / "erin" / "zarr.json").write_text("{")
    before = len(_notes())
    out = _save(qtbot, panel)
    assert out is not None and not out.committed
    errors = _notes()[before:]
    assert len(errors) == 1 and "saving failed" in errors[0] and "rescue" in errors[0]
    assert layer in viewer.layers and panel.edit_layer is layer
    np.testing.assert_array_equal(np.load(out.recovery_path), layer.data)


def test_agreement_panel_known_dice_matrix(make_napari_viewer, qtbot, tmp_path):
    a = np.zeros((8, 8), np.uint8)
    a[0, 0:4] = 1
    b = np.zeros((8, 8), np.uint8)
    b[0, 0:2] = 1
    b[1, 0:2] = 1
    c = np.zeros((8, 8), np.uint8)
    store = _store_with(tmp_path, {"a": a, "b": b, "c": c})
    viewer = make_napari_viewer()
    panel = AnnotationWidget(viewer)
    panel.blind_check.setChecked(False)
    panel.open_store(store.path)
    panel.set_rater("a", "expert")
    _finish(qtbot, panel, panel.compute_agreement())
    result = panel.last_agreement
    table = [[panel.dice_table.item(i, j).text() for j in range(3)] for i in range(3)]
    assert table == [
        ["1.000", "0.500", "0.000"],
        ["0.500", "1.000", "0.000"],
        ["0.000", "0.000", "1.000"],
    ]
    assert panel.dice_table.horizontalHeaderItem(2).text() == "c"
    majority = viewer.layers["img · majority vote"]
    soft = viewer.layers["img · soft consensus"]
    np.testing.assert_array_equal(majority.data, a & b)
    assert soft.data.dtype == np.float32 and soft.data[0, 0] == pytest.approx(2 / 3)
    assert tuple(soft.scale) == (0.5, 2.0) and tuple(majority.scale) == (0.5, 2.0)
    assert result.disagreement == pytest.approx(6 / 64)
    assert "9.38% of all voxels" in panel.agree_label.text()


def test_reader_opens_a_store_with_one_labels_layer_per_rater(make_napari_viewer, tmp_path):
    from napari.layers import Image, Labels

    a = np.zeros((8, 8), np.uint8)
    a[1:4, 1:4] = 1
    store = _store_with(tmp_path, {"alice": np.zeros((8, 8), np.uint8), "bob": a})
    store.save_annotation("img", "alice", a * 2, role="expert")  # alice's latest: version 2
    vol = np.zeros((3, 6, 7), np.uint8)
    store.add_image(vol, image_id="vol", scale=(3.0, 1.0, 0.5))
    store.save_annotation("vol", "bob", vol + 1, role="resident")
    viewer = make_napari_viewer()
    layers = viewer.open(str(store.path), plugin="napari-probseg")
    names = [lay.name for lay in layers]
    assert names == ["img", "img · alice", "img · bob", "vol", "vol · bob"]
    assert [type(lay) for lay in layers] == [Image, Labels, Labels, Image, Labels]
    np.testing.assert_array_equal(viewer.layers["img · alice"].data, a * 2)
    assert viewer.layers["img · alice"].metadata["probseg"]["version"] == 2
    assert tuple(viewer.layers["img · bob"].scale) == (0.5, 2.0)
    assert tuple(viewer.layers["vol · bob"].scale) == (3.0, 1.0, 0.5)
    assert viewer.layers["img"].visible and not viewer.layers["vol"].visible


def test_reader_and_panel_report_a_newer_store(make_napari_viewer, tmp_path):
    store = _store_with(tmp_path, {"alice": np.ones((8, 8), np.uint8)})
    meta_path = store.path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["probseg"]["schema_version"] = 99
    meta_path.write_text(json.dumps(meta))
    viewer = make_napari_viewer()
    before = len(_notes())
    assert viewer.open(str(store.path), plugin="napari-probseg") == []
    panel = AnnotationWidget(viewer)
    assert panel.open_store(store.path) is None and panel.store is None
    errors = _notes()[before:]
    assert len(errors) == 2 and all("newer" in e for e in errors)
    assert len(viewer.layers) == 0


def test_damaged_annotation_is_skipped_with_a_notification(make_napari_viewer, qtbot, tmp_path):
    a = np.zeros((8, 8), np.uint8)
    a[1:4, 1:4] = 1
    store = _store_with(tmp_path, {"alice": a, "bob": a})
    chunks = sorted((store.path / "images/img/annotations/bob/v000001/c").rglob("*"))
    next(p for p in chunks if p.is_file()).write_bytes(b"garbage")
    viewer = make_napari_viewer()
    before = len(_notes("WARNING"))
    layers = viewer.open(str(store.path), plugin="napari-probseg")
    assert [lay.name for lay in layers] == ["img", "img · alice"]
    warnings = _notes("WARNING")[before:]
    assert len(warnings) == 1 and "'bob'" in warnings[0] and "v000001" in warnings[0]
    panel = AnnotationWidget(viewer)
    panel.blind_check.setChecked(False)
    panel.open_store(store.path)
    panel.set_rater("alice")
    before = len(_notes())
    _finish(qtbot, panel, panel.load_version("bob"))
    assert panel.last_loaded == []
    _finish(qtbot, panel, panel.compute_agreement())
    assert panel.last_agreement is None
    assert "img · majority vote" not in [lay.name for lay in viewer.layers]
    errors = _notes()[before:]
    assert len(errors) == 2 and all("the store is damaged" in e for e in errors)


def test_manifest_contributes_the_panel_and_a_store_only_reader(make_napari_viewer, tmp_path):
    from napari_probseg._napari._store_reader import get_store_reader

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(
        "napari-probseg", "Annotate (multi-rater store)"
    )
    assert isinstance(widget, AnnotationWidget)
    plain = tmp_path / "plain.zarr"
    plain.mkdir()
    (plain / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    assert get_store_reader(str(plain)) is None  # a zarr group, not a project store
    assert get_store_reader(str(tmp_path / "missing.zarr")) is None
    store = _store_with(tmp_path, {})
    assert callable(get_store_reader(str(store.path)))
    assert get_store_reader([str(store.path), str(plain)]) is None


# --------------------------------------------------------------------------- issue 12 bugs


def test_store_images_stay_in_the_run_panel_and_the_label_counts_them(make_napari_viewer, tmp_path):
    from napari_probseg._napari._run_widget import RunWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((8, 8), np.float32), name="scan")
    run = RunWidget(viewer)
    panel = AnnotationWidget(viewer)
    panel.open_store(tmp_path / "p.zarr")
    assert "0 image(s)" in panel.store_label.text()
    assert panel.add_image_layer() == "scan"
    assert "1 image(s)" in panel.store_label.text()  # not "0 image(s)" any more
    items = [run.image_combo.itemText(i) for i in range(run.image_combo.count())]
    assert items == ["scan"]  # "Add current image layer" no longer hides it from the run panel
    opened = AnnotationWidget(viewer)  # a second store opened from the store: its image too
    store2 = ProjectStore.create(tmp_path / "q.zarr")
    store2.add_image(np.ones((6, 6), np.float32), image_id="other", scale=(1.0, 1.0))
    opened.open_store(tmp_path / "q.zarr")
    assert "other" not in viewer.layers  # its voxels are read in a worker...
    assert opened.image_id == "other" and opened.wait()  # ...and arrive as a layer
    assert viewer.layers["other"].metadata["probseg"]["image_id"] == "other"
    items = [run.image_combo.itemText(i) for i in range(run.image_combo.count())]
    assert "other" in items


def test_blind_second_rater_never_sees_a_mask_made_with_use_as_annotation(
    make_napari_viewer, qtbot, tmp_path
):
    from napari_probseg._napari._review_widget import ReviewWidget

    viewer = make_napari_viewer()
    _land_run(viewer)
    panel = AnnotationWidget(viewer)
    panel.open_store(tmp_path / "p.zarr")
    panel.add_image_layer(layer=viewer.layers["img"])
    panel.set_rater("alice", "expert")
    review = ReviewWidget(viewer)
    hyp = review.use_as_annotation(("sample", 6))
    assert hyp.metadata["probseg"]["rater"] == "alice"
    assert hyp.metadata["probseg"]["image_id"] == "img"
    panel.start_editing("hypothesis")
    hyp.paint((5, 5), 1)
    assert _save(qtbot, panel).committed
    panel.set_rater("bob", "expert")  # blind by default
    assert hyp not in viewer.layers or not hyp.visible
    visible_masks = [
        lay for lay in viewer.layers if lay.visible and lay._type_string == "labels" and lay.data.any()
        and lay.metadata.get("probseg", {}).get("rater") == "alice"
    ]  # fmt: skip
    assert visible_masks == []


def test_saving_without_changes_adds_no_version(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 1
    _store_with(tmp_path, {"alice": mask})
    panel = AnnotationWidget(viewer)
    panel.open_store(tmp_path / "p.zarr")
    panel.set_rater("alice", "expert")
    layer = panel.start_editing("version")
    assert _save(qtbot, panel) is None
    assert len(panel.store.history("img", "alice")) == 1
    assert any("nothing changed" in n for n in _notes("INFO"))
    layer.paint((6, 6), 1)
    assert _save(qtbot, panel).version.version == 2
    assert _save(qtbot, panel) is None  # saved: unchanged again
    assert len(panel.store.history("img", "alice")) == 2


def test_switching_image_mid_edit_leaves_paint_mode_and_keeps_a_draft(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    store = _store_with(tmp_path, {})
    store.add_image(np.zeros((6, 6), np.float32), image_id="img2", scale=(1.0, 1.0))
    panel = AnnotationWidget(viewer)
    panel.open_store(tmp_path / "p.zarr")
    panel.select_image("img")
    panel.set_rater("alice", "expert")
    panel.policy.enabled = False  # even with autosave off, switching keeps the work
    layer = panel.start_editing("empty")
    layer.paint((3, 3), 1)
    panel.select_image("img2")
    assert layer.mode == "pan_zoom"
    assert viewer.layers.selection.active is not layer
    assert panel.wait() and viewer.layers.selection.active is viewer.layers["img2"]
    assert "alice" in panel.store.draft_raters("img")
    assert any("stopped editing" in n and "draft" in n for n in _notes("WARNING"))


def test_closing_with_unsaved_edits_says_a_draft_was_kept(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _store_with(tmp_path, {})
    panel = AnnotationWidget(viewer)
    viewer.window.add_dock_widget(panel)
    panel.open_store(tmp_path / "p.zarr")
    panel.set_rater("alice", "expert")
    layer = panel.start_editing("empty")
    layer.paint((3, 3), 1)
    panel.close()
    assert "alice" in panel.store.draft_raters("img")
    assert any("viewer is closing" in n and "draft" in n for n in _notes("WARNING"))


def test_a_run_saved_from_the_run_panel_is_the_source_run_of_an_annotation(
    make_napari_viewer, qtbot, tmp_path
):
    from napari_probseg._napari._review_widget import ReviewWidget
    from napari_probseg._napari._run_widget import RunWidget

    viewer = make_napari_viewer()
    _land_run(viewer)
    panel = AnnotationWidget(viewer)
    run_panel = RunWidget(viewer)
    assert not run_panel.save_button.isEnabled()  # no store yet
    panel.open_store(tmp_path / "p.zarr")
    panel.add_image_layer(layer=viewer.layers["img"])
    assert run_panel.save_button.isEnabled()  # the panels observe the viewer's session
    worker = run_panel.save_to_store()
    assert worker is not None
    qtbot.waitUntil(lambda: run_panel.save_worker is None, timeout=60_000)
    run_id = run_panel.saved_run_id
    assert run_id and run_id in [p["run_id"] for p in panel.store.list_predictions("img")]
    panel.set_rater("dora", "expert")
    hyp = ReviewWidget(viewer).use_as_annotation(("sample", 2))
    panel.start_editing("hypothesis", hyp)
    hyp.paint((4, 4), 1)
    assert _save(qtbot, panel).version.source_run == run_id


def test_save_runs_in_a_worker_with_the_panel_disabled(make_napari_viewer, qtbot, tmp_path):
    store = _store_with(tmp_path, {})
    viewer = make_napari_viewer()
    panel = AnnotationWidget(viewer)
    panel.open_store(store.path)
    panel.set_rater("alice", "expert")
    layer = panel.start_editing("empty")
    layer.paint((3, 3), 1)
    outcomes = []
    panel.saved.connect(outcomes.append)
    worker = panel.save(note="in a worker")
    # Started, not done: the GUI thread has not yet seen the worker's end.
    assert worker is not None and panel.busy
    assert panel.save_button.text() == "Saving…"
    assert not panel.start_button.isEnabled() and not panel.open_button.isEnabled()
    assert panel.save() is None  # a second save while the first runs is refused
    assert any("still saving" in n for n in _notes("WARNING"))
    _finish(qtbot, panel, worker)
    assert panel.save_button.text() == "Save version" and panel.open_button.isEnabled()
    assert len(outcomes) == 1 and outcomes[0].committed
    assert not panel.session.dirty and panel.session.parent_version == 1
    # What is on disk, read by a fresh handle: the version with its note and labels.
    mask, version = ProjectStore.open(store.path).latest("img", "alice")
    assert version.version == 1 and version.note == "in a worker"
    np.testing.assert_array_equal(mask, layer.data)
    assert any("saved 'img' as alice version 1" in n for n in _notes("INFO"))


def test_painting_during_a_save_stays_unsaved(make_napari_viewer, qtbot, tmp_path):
    store = _store_with(tmp_path, {})
    viewer = make_napari_viewer()
    panel = AnnotationWidget(viewer)
    panel.open_store(store.path)
    panel.set_rater("alice", "expert")
    layer = panel.start_editing("empty")
    layer.paint((3, 3), 1)
    worker = panel.save()
    layer.paint((6, 6), 1)  # while the worker commits the copy made at "Save"
    _finish(qtbot, panel, worker)
    mask, _ = store.latest("img", "alice")
    assert mask[3, 3] == 1 and mask[6, 6] == 0
    assert panel.session.dirty  # the later stroke is not lost: it is still to be saved
    assert _save(qtbot, panel).version.version == 2
    assert store.latest("img", "alice")[0][6, 6] == 1


@pytest.mark.parametrize("error", [OSError("disk full"), RuntimeError("zarr exploded")])
def test_a_failing_save_notifies_and_keeps_the_draft(
    make_napari_viewer, qtbot, tmp_path, monkeypatch, error
):
    store = _store_with(tmp_path, {})
    viewer = make_napari_viewer()
    panel = AnnotationWidget(viewer, recovery_dir=tmp_path / "rescue")
    panel.open_store(store.path)
    panel.set_rater("erin", "expert")
    layer = panel.start_editing("empty")
    layer.paint((2, 2), 1)

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(panel.store, "save_annotation", broken)
    before = len(_notes())
    outcome = _save(qtbot, panel)
    errors = _notes()[before:]
    assert len(errors) == 1 and "sav" in errors[0] and str(error) in errors[0]
    assert outcome is not None and not outcome.committed
    # Nothing lost: the layer stays edited, and the work is the rater's draft on disk.
    assert layer in viewer.layers and panel.edit_layer is layer
    assert store.history("img", "erin") == []
    found = ProjectStore.open(store.path).load_draft("img", "erin")
    assert found is not None
    np.testing.assert_array_equal(found[0], layer.data)
    assert panel.open_button.isEnabled() and panel.save_button.text() == "Save version"


def test_agreement_and_raters_are_read_in_a_worker(make_napari_viewer, qtbot, tmp_path):
    a = np.zeros((8, 8), np.uint8)
    a[1:5, 1:5] = 1
    store = _store_with(tmp_path, {"a": a, "b": a.copy()})
    viewer = make_napari_viewer()
    panel = AnnotationWidget(viewer)
    panel.blind_check.setChecked(False)
    panel.open_store(store.path)
    panel.set_rater("a", "expert")
    worker = panel.compute_agreement()
    assert panel.busy and panel.agree_button.text() == "Computing…"
    assert "img · majority vote" not in [lay.name for lay in viewer.layers]
    _finish(qtbot, panel, worker)
    assert panel.last_agreement.dice[0, 1] == pytest.approx(1.0)
    np.testing.assert_array_equal(viewer.layers["img · majority vote"].data, a)
    assert _show(qtbot, panel) == ["img · a", "img · b"]


def test_store_image_is_read_in_a_worker_and_lands_under_the_edit(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    store = _store_with(tmp_path, {})
    panel = AnnotationWidget(viewer)
    panel.open_store(store.path)
    assert panel.busy and panel.open_button.isEnabled()  # a quiet read: the panel stays usable
    assert "img" not in viewer.layers
    panel.set_rater("alice", "expert")
    edit = panel.start_editing("empty")  # before the voxels arrived: only the shape is needed
    assert edit is not None and edit.data.shape == (8, 8)
    assert panel.wait()
    image = viewer.layers["img"]
    assert viewer.layers.index(image) < viewer.layers.index(edit)  # never over the painted layer
    assert viewer.layers.selection.active is edit and edit.mode == "paint"
    np.testing.assert_array_equal(image.data, store.read_image("img")[0])
