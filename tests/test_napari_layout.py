"""The panels on a 1280×800 screen (real viewer windows under Xvfb): every button and the
reliability plot can be brought into view (scroll areas, nothing clipped), and the arrangements
are saved as screenshots (``python -m napari_probseg._napari._layout_shots docs`` writes the
ones in docs/)."""

from __future__ import annotations

import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.timeout(240)

from napari_probseg._napari import _layout_shots as shots  # noqa: E402


def _sized(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(*shots.SCREEN)
    return viewer


def _fits(viewer, panel):
    window = panel.window()
    assert window.height() <= shots.SCREEN[1] + 1
    assert panel.height() <= window.height()


def test_annotation_panel_fits_1280x800(make_napari_viewer, tmp_path):
    viewer = _sized(make_napari_viewer)
    panel = shots.annotator(viewer, tmp_path / "p.zarr")["annotate"]
    shots._settle(200)
    _fits(viewer, panel)
    wanted = [panel.start_button, panel.save_button, panel.agree_button, panel.open_button]
    assert shots.clipped_widgets(panel, wanted) == []
    assert shots.save_window(viewer, tmp_path / "annotator.png").stat().st_size > 10_000


def test_clinician_and_researcher_panels_fit_1280x800(make_napari_viewer, tmp_path):
    viewer = _sized(make_napari_viewer)
    panels = shots.clinician(viewer)
    shots._settle(200)
    run, review = panels["run"], panels["review"]
    _fits(viewer, review)
    assert shots.clipped_widgets(run, [run.run_button, run.cancel_button]) == []
    assert review.height() >= 250  # the run panel leaves the review panel room
    assert shots.clipped_widgets(review, [review.next_button, review.annotate_button]) == []
    viewer2 = _sized(make_napari_viewer)
    panels = shots.researcher(viewer2)
    shots._settle(200)
    calib = panels["calibration"]
    _fits(viewer2, calib)
    assert shots.clipped_widgets(calib, [calib.compute_button, calib.canvas]) == []
    for name in ("observer", "conformal"):
        buttons = [b for b in panels[name].findChildren(type(calib.compute_button))]
        assert buttons and shots.clipped_widgets(panels[name], buttons[:1]) == []
    assert shots.save_window(viewer2, tmp_path / "researcher.png").stat().st_size > 10_000
