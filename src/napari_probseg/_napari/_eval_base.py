"""Shared parts of the researcher panels (:mod:`._eval_widgets`): the image chooser, worker
handling, notifications, JSON export, finding the project store, small list/combo helpers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QWidget,
)

from napari_probseg._napari import _eval_model as model
from napari_probseg._napari._choices import describe_error
from napari_probseg._napari._layers import is_source_image
from napari_probseg._napari._scroll import scroll_layout
from napari_probseg._napari._session import get_session

NO_RUN = "run a model on this image first (panel 'Run probabilistic segmentation')"
NO_RATERS = "add rater layers or open a store"
INNER_COLOR, OUTER_COLOR = "#00ff7f", "#ff8c00"


class _EvalError(Exception):
    """Wraps a RuntimeError from a worker (superqt reads RuntimeError as 'worker deleted')."""


def _guarded(fn: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        try:
            return fn()
        except RuntimeError as exc:
            raise _EvalError(str(exc)) from exc

    return call


def unchanged(data: Any, signature: str) -> bool:
    """Whether ``data`` is still the image a run with input ``signature`` was computed from."""
    from napari_probseg.engine import image_signature

    return image_signature(np.asarray(data)) == signature


def _checked_run(name: str, data: Any, signature: str, fn: Callable[[], Any]) -> Callable:
    def call() -> Any:
        if not unchanged(data, signature):
            raise ValueError(f"image: {name!r} changed since its run; run the model again")
        return fn()

    return call


def find_store(viewer: Any, path: str = "", image_layer: Any = None) -> Any:
    """The project store to use: ``path`` if given, else the viewer session's open store (the
    annotation panel opens it), else the store the image layer came from (opened read-only);
    None if there is none."""
    from napari_probseg.store import ProjectStore

    if path.strip():
        return ProjectStore.open(Path(path.strip()).expanduser(), mode="r")
    store = get_session(viewer).store
    if store is not None:
        return store
    meta = model._probseg_meta(image_layer) if image_layer is not None else {}
    if meta.get("store") and Path(meta["store"]).is_dir():
        return ProjectStore.open(meta["store"], mode="r")
    return None


class _Panel(QWidget):
    """Image chooser, status line, worker handling and notifications shared by the panels."""

    action = "evaluation"

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = get_session(napari_viewer)
        self.worker: Any = None
        self.report: Any = None
        self.last_message = ""
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("Image layer whose newest run is evaluated")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.form = QFormLayout()
        self.form.addRow("Image", self.image_combo)
        self.content = scroll_layout(self)
        self.content.addLayout(self.form)
        self.image_combo.currentIndexChanged.connect(lambda *_: self._refresh())
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self.session.changed.connect(self._on_run)

    # ------------------------------------------------------------- layers
    def _refresh_images(self, *_: Any) -> None:
        current = self.image_combo.currentText()
        names = [lay.name for lay in self.viewer.layers if is_source_image(lay)]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        self._refresh()

    def _on_run(self, record: Any) -> None:
        self._refresh_images()
        if record is not None and record.image_layer in self.viewer.layers:
            self.image_combo.setCurrentText(record.image_layer.name)

    def _refresh(self) -> None:
        """Update the choices that depend on the image (subclasses)."""

    def image_layer(self) -> Any:
        """The chosen image layer (or None)."""
        name = self.image_combo.currentText()
        return next((lay for lay in self.viewer.layers if lay.name == name), None)

    def _current_run(self) -> tuple[Any, Any]:
        """``(image layer, run record)`` of the chosen image; notifies and returns Nones if absent."""
        layer = self.image_layer()
        if layer is None:
            self.notify(f"add an image layer, then {NO_RUN}")
            return None, None
        record = model.record_for(self.session, layer)
        if record is None:
            self.notify(f"{layer.name!r}: {NO_RUN}")
            return None, None
        return layer, record

    # ------------------------------------------------------------- messages and workers
    def notify(self, message: str, *, error: bool = False) -> None:
        """Show ``message`` in the panel and as a napari notification."""
        self.last_message = message
        self.status.setText(message)
        (show_error if error else show_warning)(f"probseg: {message}")

    @property
    def running(self) -> bool:
        """True while a computation is in progress."""
        return self.worker is not None

    def _start(
        self, fn: Callable[[], Any], done: Callable[[Any], None], *, run: tuple | None = None
    ) -> Any:
        """Run ``fn`` in a worker, then ``done(result)``; with ``run = (image layer, record)``
        the worker first checks (hashing the image, off the GUI thread) that the image did not
        change since its run."""
        from napari.qt.threading import create_worker

        if self.running:
            self.notify("still computing; wait for the current computation")
            return None
        if run is not None:
            fn = _checked_run(run[0].name, run[0].data, run[1].result.input_signature, fn)
        worker = create_worker(_guarded(fn), _start_thread=False, _ignore_errors=True)
        worker.returned.connect(done)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.status.setText("Computing…")
        worker.start()
        return worker

    def _on_errored(self, exc: BaseException) -> None:
        if isinstance(exc, _EvalError) and exc.__cause__ is not None:
            exc = exc.__cause__
        self.notify(f"{self.action} failed: {describe_error(exc)}", error=True)

    def _on_finished(self) -> None:
        self.worker = None

    def _show(self, report: Any) -> None:
        self.report = report
        self.result_label.setText(report.text())
        self.last_message = ""
        self.status.setText("Done.")

    def export_json(self, path: str | Path) -> Path:
        """Write the numbers of the last result as JSON."""
        if self.report is None:
            raise ValueError("path: nothing to export yet; compute first")
        path = Path(path)
        path.write_text(json.dumps(self.report.to_dict(), indent=2, allow_nan=False))
        show_info(f"probseg: wrote {path}")
        return path

    def _export_dialog(self, filters: str, write: Callable[[str], Any]) -> None:
        if self.report is None:
            self.notify("nothing to export yet; compute first")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export", "", filters)
        if path:
            try:
                write(path)
            except (OSError, ValueError) as exc:
                self.notify(f"export failed: {exc}", error=True)

    def _raters(self, layer: Any) -> list[Any]:
        return model.rater_layers(list(self.viewer.layers), layer)

    def _add_buttons(self, *buttons: tuple[str, Callable[[], Any]]) -> list[QPushButton]:
        row = QHBoxLayout()
        out = []
        for text, slot in buttons:
            button = QPushButton(text)
            button.clicked.connect(lambda *_, s=slot: s())
            row.addWidget(button)
            out.append(button)
        self.content.addLayout(row)
        return out


def _path_row(panel: _Panel, tip: str) -> QLineEdit:
    edit = QLineEdit()
    edit.setPlaceholderText("store: the annotation panel's (or enter project.zarr)")
    edit.setToolTip(tip)
    browse = QPushButton("…")

    def choose() -> None:
        path = QFileDialog.getExistingDirectory(panel, "Project store")
        if path:
            edit.setText(path)
            panel._refresh()

    browse.clicked.connect(choose)
    row = QHBoxLayout()
    row.addWidget(edit)
    row.addWidget(browse)
    panel.form.addRow("Store", row)
    return edit


def _fill(combo: QComboBox, items: list[tuple[str, Any]]) -> None:
    """Replace the items of ``combo`` keeping the current text where it still exists."""
    current = combo.currentText()
    combo.blockSignals(True)
    combo.clear()
    for text, data in items:
        combo.addItem(text, data)
    index = combo.findText(current)
    combo.setCurrentIndex(max(index, 0))
    combo.blockSignals(False)


def _checked_list(widget: QListWidget, names: list[str], default: bool = True) -> None:
    """Fill a list of checkable names, keeping earlier check states."""
    old = {widget.item(i).text(): widget.item(i).checkState() for i in range(widget.count())}
    widget.clear()
    for name in names:
        item = QListWidgetItem(name)
        item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
        item.setCheckState(old.get(name, Qt.Checked if default else Qt.Unchecked))
        widget.addItem(item)


def _checked(widget: QListWidget) -> list[str]:
    return [
        widget.item(i).text()
        for i in range(widget.count())
        if widget.item(i).checkState() == Qt.Checked
    ]
