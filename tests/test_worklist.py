"""Active-learning worklist panel in a real viewer on a real store: rank, open next, save and move
on, retrain from the store, re-rank with the new card -- all in workers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

# torch's optimizers import torch._dynamo -> triton on first use; loading triton's bundled LLVM
# after the viewer's software OpenGL (Mesa llvmpipe under Xvfb) has loaded its own LLVM segfaults.
# Importing it before any viewer exists avoids the clash (see the report on issue 11).
import torch._dynamo  # noqa: F401

pytest.importorskip("napari")
pytestmark = pytest.mark.timeout(300)

sys.path.insert(0, str(Path(__file__).parent))

from model_helpers import tiny_card  # noqa: E402
from napari_probseg._napari._worklist_widget import WorklistWidget  # noqa: E402
from napari_probseg.active.worklist import next_image, worklist_rows  # noqa: E402
from napari_probseg.store import ProjectStore  # noqa: E402


def _store(path, n=4):
    from napari_probseg.data.synthetic import make_lesions

    store = ProjectStore.create(path, class_names=["background", "lesion"])
    data = make_lesions(n, shape=(32, 32), seed=3)
    for i, image in enumerate(data.images):
        store.add_image(image, image_id=f"img{i}")
    return store, data


def _wait(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


def test_worklist_rows_and_next_image(tmp_path):
    store, data = _store(tmp_path / "p.zarr", n=3)
    store.save_annotation("img1", "bob", data.raters[1, 0], role="expert")
    record = {
        "entries": [
            {"image_id": "img1", "rank": 1, "value": 0.9},
            {"image_id": "img0", "rank": 2, "value": 0.5},
        ],
        "failed": [{"image_id": "img2", "error": "boom"}],
    }
    rows = worklist_rows(store, record)
    assert [(r.image_id, r.rank, r.raters) for r in rows] == [
        ("img1", 1, ("bob",)),
        ("img0", 2, ()),
        ("img2", None, ()),
    ]
    assert rows[2].error == "boom"
    assert next_image(rows) == "img0"  # img1 is annotated, img2 unranked
    assert next_image(rows, skip=["img0"]) is None


def test_worklist_rank_annotate_retrain_rerank(make_napari_viewer, qtbot, tmp_path):
    store, data = _store(tmp_path / "p.zarr")
    store.save_annotation("img3", "bob", data.raters[3, 0], role="expert")
    card = tiny_card(tmp_path / "model", dropout=0.5)
    viewer = make_napari_viewer()
    widget = WorklistWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.open_store(tmp_path / "p.zarr") is not None
    assert widget.record is None and widget.table.rowCount() == 4
    widget.model_edit.setText(card)
    widget.method_edit.setText("mc_dropout")
    widget.samples_spin.setValue(4)
    widget.workers_spin.setValue(1)
    widget.processes_check.setChecked(False)

    assert widget.rerank() is not None
    assert not widget.rank_button.isEnabled()  # busy: the viewer is not blocked, buttons are
    _wait(qtbot, widget)
    assert widget.record is not None and len(widget.record["entries"]) == 4
    assert widget.table.item(0, 0).text() == "1"
    first_sha = widget.record["config"]["card_sha256"]

    widget.rater_edit.setText("alice")
    expected = next_image(widget.rows)
    assert widget.open_next() == expected != "img3"
    panel = widget.annotation
    assert panel.image_id == expected and panel.rater == "alice"
    assert panel.edit_layer is not None
    panel.edit_layer.data = data.raters[int(expected[-1]), 1].astype(np.uint8)
    panel.session.dirty = True
    assert widget.save_and_next() is not None  # the save runs in the panel's worker
    qtbot.waitUntil(lambda: panel.worker is None and widget.current != expected, timeout=60_000)
    second = widget.current
    assert store.raters(expected) == ["alice"]
    assert second is not None and second not in (expected, "img3")
    assert widget.annotation.image_id == second
    assert panel.wait() and second in viewer.layers  # the next image's voxels arrived too
    assert panel.edit_layer is not None and panel.edit_layer.mode == "paint"
    assert widget.table.item([r.image_id for r in widget.rows].index(expected), 3).text() == "yes"

    widget.epochs_spin.setValue(1)
    widget.out_edit.setText(str(tmp_path / "models" / "ft1.json"))
    assert widget.retrain() is not None
    _wait(qtbot, widget)
    assert widget.last_card == str(tmp_path / "models" / "ft1.json")
    assert Path(widget.last_card).is_file() and widget.model_edit.text() == widget.last_card

    widget.rerank()
    _wait(qtbot, widget)
    assert widget.record["config"]["card_sha256"] != first_sha
    assert len(store.ranking_ids()) == 2


_RETRAIN_SCRIPT = r"""
import sys, time
import numpy as np
import napari
from qtpy.QtWidgets import QApplication
from model_helpers import tiny_card
from napari_probseg._napari._worklist_widget import WorklistWidget
from napari_probseg.data.synthetic import make_lesions
from napari_probseg.store import ProjectStore

root = sys.argv[1]
store = ProjectStore.create(root + "/p.zarr", class_names=["background", "lesion"])
data = make_lesions(2, shape=(32, 32), seed=3)
for i, image in enumerate(data.images):
    store.add_image(image, image_id=f"img{i}")
    store.save_annotation(f"img{i}", "bob", data.raters[i, 0], role="expert")
card = tiny_card(root + "/model", dropout=0.5)
viewer = napari.Viewer(show=True)  # the viewer (and its OpenGL) exists before any training
widget = WorklistWidget(viewer)
viewer.window.add_dock_widget(widget)
widget.open_store(root + "/p.zarr")
widget.model_edit.setText(card)
widget.epochs_spin.setValue(1)
widget.out_edit.setText(root + "/ft.json")
QApplication.processEvents()
assert "torch._dynamo" not in sys.modules, "imported too early for this test to mean anything"
assert widget.retrain() is not None
assert "torch._dynamo" in sys.modules, "retrain must import torch._dynamo before its thread"
start = time.time()
while widget.worker is not None and time.time() - start < 200:
    QApplication.processEvents()
    time.sleep(0.01)
print("CARD", widget.last_card, flush=True)
viewer.close()
"""


def test_retrain_in_a_fresh_viewer_process_imports_dynamo_first_and_survives(tmp_path):
    """The product, not the test, imports torch._dynamo before the training thread starts
    (without it, retraining under Xvfb/llvmpipe could segfault): a fresh process with a shown
    viewer retrains from the worklist and exits cleanly."""
    import os
    import shutil
    import subprocess

    script = tmp_path / "retrain.py"
    script.write_text(_RETRAIN_SCRIPT)
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent / "src"), str(here)])}
    cmd = [sys.executable, str(script), str(tmp_path)]
    if not os.environ.get("DISPLAY"):
        xvfb = shutil.which("xvfb-run")
        if xvfb is None:
            pytest.skip("no display and no xvfb-run")
        cmd = [xvfb, "-a", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=280, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"CARD {tmp_path / 'ft.json'}" in proc.stdout
    assert (tmp_path / "ft.json").is_file()
