"""The panels on a 1280×800 screen: dock them as a user would, check that nothing is clipped, and
save window screenshots: ``python -m napari_probseg._napari._layout_shots docs``.

Three arrangements (one viewer each): the clinician's (run + review panels), the annotator's
(annotation panel with a store open and an edit started), the researcher's (calibration,
observer and conformal panels, tabbed). :func:`clipped_widgets` is what the tests assert on.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

#: The laptop screen the panels must fit.
SCREEN = (1280, 800)


def _settle(ms: int = 300) -> None:
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def clipped_widgets(panel: Any, widgets: list[Any]) -> list[str]:
    """Names of ``widgets`` a user cannot bring fully into view in ``panel``.

    A widget inside the panel's scroll area counts as reachable when, after scrolling to it, its
    whole rectangle lies inside the visible viewport; outside a scroll area, inside the panel.
    """
    from qtpy.QtCore import QPoint, QRect

    area = getattr(panel, "scroll_area", None)
    bad = []
    for widget in widgets:
        if area is not None:
            area.ensureWidgetVisible(widget, 0, 0)
            view = area.viewport()
        else:
            view = panel
        _settle(10)
        top_left = widget.mapTo(view, QPoint(0, 0))
        rect = QRect(top_left, widget.size())
        if area is not None and area.horizontalScrollBar().maximum() > 0:
            bad.append("(panel scrolls sideways)")
        if not view.rect().contains(rect) or not widget.isVisibleTo(panel):
            name = widget.text() if hasattr(widget, "text") else type(widget).__name__
            bad.append(name)
            print(f"clipped: {name}: {rect} not in {view.rect()}", flush=True)
    return bad


def _viewer(title: str) -> Any:
    import napari

    viewer = napari.Viewer(title=title)
    viewer.window.resize(*SCREEN)
    return viewer


def _landed_run(viewer: Any, *, n_samples: int = 8) -> Any:
    """The 2D sample case with its rater layers and a real bundled-model run landed."""
    from napari_probseg._napari._layers import Placement
    from napari_probseg._napari._runner import RunRequest, run_job
    from napari_probseg._napari._session import land
    from napari_probseg.data.synthetic import sample_case

    image, raters, scale = sample_case(2)
    layer = viewer.add_image(image, name="lesions 2d", scale=scale, colormap="gray")
    for name, mask in raters.items():
        viewer.add_labels(mask, name=name, scale=scale, visible=False)
    request = RunRequest(model="lesions2d-unet", method="mc_dropout", n_samples=n_samples)
    gen = run_job(image, request, Placement(layer.name, scale))
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        output = stop.value
    return land(viewer, output, layer)


def clinician(viewer: Any) -> dict[str, Any]:
    """Run and review panels on the right, a run landed; returns the panels by name."""
    from napari_probseg._napari._review_widget import ReviewWidget
    from napari_probseg._napari._run_widget import RunWidget

    _landed_run(viewer)
    run, review = RunWidget(viewer), ReviewWidget(viewer)
    viewer.window.add_dock_widget(run, name="Run", area="right")
    viewer.window.add_dock_widget(review, name="Review uncertainty", area="right")
    review.select_region(0)
    viewer.reset_view()
    return {"run": run, "review": review}


def annotator(viewer: Any, store_path: str | Path) -> dict[str, Any]:
    """The annotation panel with a store, an image, a rater and an edit started."""
    from napari_probseg._napari._annotation_widget import AnnotationWidget
    from napari_probseg.data.synthetic import sample_case

    image, _raters, scale = sample_case(2)
    viewer.add_image(image, name="lesions 2d", scale=scale, colormap="gray")
    panel = AnnotationWidget(viewer)
    viewer.window.add_dock_widget(panel, name="Annotate", area="right")
    panel.open_store(store_path)
    panel.add_image_layer(layer=viewer.layers["lesions 2d"])
    panel.set_rater("alice", "expert")
    panel.start_editing("empty")
    return {"annotate": panel}


def researcher(viewer: Any) -> dict[str, Any]:
    """Calibration, observer and conformal panels tabbed on the right, calibration computed."""
    from qtpy.QtWidgets import QTabWidget

    from napari_probseg._napari._eval_widgets import (
        CalibrationWidget,
        ConformalWidget,
        ObserverWidget,
    )

    _landed_run(viewer)
    panels = {
        "calibration": CalibrationWidget(viewer),
        "observer": ObserverWidget(viewer),
        "conformal": ConformalWidget(viewer),
    }
    tabs = QTabWidget()
    for name, panel in panels.items():
        tabs.addTab(panel, name)
    viewer.window.add_dock_widget(tabs, name="Evaluate", area="right")
    worker = panels["calibration"].compute()
    while worker is not None and panels["calibration"].running:
        _settle(100)
    return panels


def save_window(viewer: Any, path: str | Path) -> Path:
    """Screenshot of the whole window (panels included)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _settle(500)
    viewer.screenshot(str(path), canvas_only=False)
    return path


def main(argv: list[str] | None = None) -> int:
    """Write the three 1280×800 screenshots into ``argv[0]`` (default ``docs``)."""
    import tempfile

    argv = list(sys.argv[1:] if argv is None else argv)
    out = Path(argv[0] if argv else "docs")
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in (
            ("clinician", clinician),
            ("annotator", lambda v: annotator(v, Path(tmp) / "p.zarr")),
            ("researcher", researcher),
        ):
            viewer = _viewer(f"napari-probseg at 1280x800 ({name})")
            build(viewer)
            path = save_window(viewer, out / f"screenshot_1280x800_{name}.png")
            print(f"saved {path}", flush=True)
            viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
