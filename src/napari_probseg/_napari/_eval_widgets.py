"""Researcher panels: calibration (reliability diagram), observer variability, conformal bands.

Thin Qt widgets over :mod:`._eval_model`: they read what the user chose and the layers' data on
the GUI thread, compute in a napari thread worker, and report every problem as a napari
notification (never a traceback dialog). Runs come from the viewer's :class:`Session` (the run
panel's results), raters from Labels layers of the image's shape or from a project store.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_probseg._napari import _eval_model as model
from napari_probseg._napari._choices import describe_error
from napari_probseg._napari._layers import layer_name
from napari_probseg._napari._session import get_session, is_stale

__all__ = ["CalibrationWidget", "ConformalWidget", "ObserverWidget"]

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


def find_store(viewer: Any, path: str = "", image_layer: Any = None) -> Any:
    """The project store to use: ``path`` if given, else the annotation panel's open store, else
    the store the image layer came from (opened read-only); None if there is none."""
    from napari_probseg._napari._annotation_widget import AnnotationWidget
    from napari_probseg.store import ProjectStore

    if path.strip():
        return ProjectStore.open(Path(path.strip()).expanduser(), mode="r")
    for widget in QApplication.allWidgets():
        if isinstance(widget, AnnotationWidget) and widget.viewer is viewer and widget.store:
            return widget.store
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
        self.setLayout(QVBoxLayout())
        self.layout().addLayout(self.form)
        self.image_combo.currentIndexChanged.connect(lambda *_: self._refresh())
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self.session.changed.connect(self._on_run)

    # ------------------------------------------------------------- layers
    def _refresh_images(self, *_: Any) -> None:
        current = self.image_combo.currentText()
        names = [lay.name for lay in self.viewer.layers if isinstance(lay, Image) and not lay.rgb]
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
        if is_stale(layer, record.result):
            self.notify(f"{layer.name!r} changed since its run: run the model again")
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

    def _start(self, fn: Callable[[], Any], done: Callable[[Any], None]) -> Any:
        from napari.qt.threading import create_worker

        if self.running:
            self.notify("still computing; wait for the current computation")
            return None
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
        self.layout().addLayout(row)
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


class CalibrationWidget(_Panel):
    """Reliability diagram, ECE/MCE/ACE and adaptive ECE of the current image or a whole store."""

    action = "calibration"

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(["current image", "whole store"])
        self.path_edit = _path_row(self, "Project store for 'whole store'")
        self.class_combo = QComboBox()
        self.reference_combo = QComboBox()
        self.bins_spin = QSpinBox()
        self.bins_spin.setRange(2, 100)
        self.bins_spin.setValue(15)
        self.form.addRow("Scope", self.scope_combo)
        self.form.addRow("Class", self.class_combo)
        self.form.addRow("Reference", self.reference_combo)
        self.form.addRow("Bins", self.bins_spin)
        self.compute_button, self.fit_button = self._add_buttons(
            ("Compute", self.compute), ("Fit temperature", self.fit_temperature)
        )
        self.figure = Figure(figsize=(4.0, 5.0), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(320)
        self.artists: dict[str, Any] = {}
        self.layout().addWidget(self.result_label)
        self.layout().addWidget(self.canvas)
        self._add_buttons(
            (
                "Export figure…",
                lambda: self._export_dialog("PNG (*.png);;SVG (*.svg)", self.export),
            ),
            ("Export JSON…", lambda: self._export_dialog("JSON (*.json)", self.export_json)),
        )
        self.layout().addWidget(self.status)
        self.scope_combo.currentIndexChanged.connect(lambda *_: self._refresh())
        self._refresh_images()

    def _refresh(self) -> None:
        layer = self.image_layer()
        record = model.record_for(self.session, layer) if layer is not None else None
        store_mode = self.scope_combo.currentIndex() == 1
        store, names = None, list(getattr(record.result, "class_names", [])) if record else []
        raters: list[str] = []
        if store_mode:
            try:
                store = find_store(self.viewer, self.path_edit.text(), layer)
            except (OSError, ValueError):
                store = None
            if store is not None:
                names = list(store.class_names or names)
                raters = sorted({r for i in store.image_ids() for r in store.raters(i)})
        elif layer is not None:
            raters = [lay.name for lay in self._raters(layer)]
        _fill(self.class_combo, [("all classes (top-label)", None)] + [
            (f"{n} vs rest", i) for i, n in enumerate(names or ["background", "foreground"])
        ])  # fmt: skip
        _fill(self.reference_combo, [
            ("majority of raters", ("majority", None)), ("soft mean of raters", ("soft", None)),
        ] + [(f"rater: {r}", ("rater", r)) for r in raters])  # fmt: skip

    def _choice(self) -> tuple[str, str | None, int | None, int]:
        kind, rater = self.reference_combo.currentData() or ("majority", None)
        return kind, rater, self.class_combo.currentData(), self.bins_spin.value()

    def _image_inputs(self) -> tuple[Any, Any, dict[str, np.ndarray]] | None:
        layer, record = self._current_run()
        if record is None:
            return None
        raters = self._raters(layer)
        if not raters:
            self.notify(f"{layer.name!r} has no rater layers: {NO_RATERS}")
            return None
        return layer, record, {lay.name: np.array(lay.data) for lay in raters}

    def compute(self) -> Any:
        """Compute the calibration of the chosen scope in a worker; return it (None if not)."""
        kind, rater, class_index, n_bins = self._choice()
        if self.scope_combo.currentIndex() == 1:
            try:
                store = find_store(self.viewer, self.path_edit.text(), self.image_layer())
            except (OSError, ValueError) as exc:
                self.notify(f"cannot open the store: {exc}", error=True)
                return None
            if store is None:
                self.notify("no store: open one in the annotation panel or enter its path")
                return None
            return self._start(
                lambda: model.store_calibration(
                    store, kind=kind, rater=rater, n_bins=n_bins, class_index=class_index
                ),
                self._done,
            )
        inputs = self._image_inputs()
        if inputs is None:
            return None
        layer, record, masks = inputs
        if kind == "rater" and rater not in masks:
            self.notify(f"rater layer {rater!r} is not a rater layer of {layer.name!r}")
            return None
        res = record.result
        probs = res.maps.mean_probs
        scope = f"image {layer.name!r} ({res.method}, N={res.n_samples})"

        def job() -> Any:
            ref = model.make_reference(masks, kind=kind, rater=rater, n_classes=len(probs))
            return model.image_calibration(
                probs, ref, n_bins=n_bins, class_index=class_index,
                class_names=res.class_names, scope=scope,
            )  # fmt: skip

        return self._start(job, self._done)

    def fit_temperature(self) -> Any:
        """Fit a temperature on the current image's log-probabilities (worker); ECE before/after."""
        kind, rater, class_index, n_bins = self._choice()
        inputs = self._image_inputs()
        if inputs is None:
            return None
        layer, record, masks = inputs
        if kind == "rater" and rater not in masks:
            kind, rater = "majority", None  # the store's rater is not a layer of this image
        res = record.result
        probs = res.maps.mean_probs
        scope = f"image {layer.name!r} ({res.method}, N={res.n_samples})"

        def job() -> Any:
            ref = model.make_reference(masks, kind=kind, rater=rater, n_classes=len(probs))
            report = model.image_calibration(
                probs, ref, n_bins=n_bins, class_index=class_index,
                class_names=res.class_names, scope=scope,
            )  # fmt: skip
            return model.temperature_on_probs(report, probs, ref, class_index=class_index)

        return self._start(job, self._done)

    def _done(self, report: Any) -> None:
        self._show(report)
        self.artists = model.draw_reliability(self.figure, report)
        self.canvas.draw_idle()

    def export(self, path: str | Path) -> Path:
        """Save the diagram (format from the suffix: .png, .svg, .pdf) or, for .json, the numbers."""
        path = Path(path)
        if path.suffix.lower() == ".json":
            return self.export_json(path)
        if self.report is None:
            raise ValueError("path: nothing to export yet; compute first")
        if path.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise ValueError(f"path: expected a .png, .svg, .pdf or .json file, got {path.name!r}")
        self.figure.savefig(path, dpi=150, bbox_inches="tight")
        show_info(f"probseg: wrote {path}")
        return path


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


class ObserverWidget(_Panel):
    """GED, HM-IoU and NCC of the run's samples against chosen raters; pairwise Dice, volume CoV."""

    action = "observer metrics"

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.rater_list = QListWidget()
        self.rater_list.setToolTip("Rater layers (Labels layers of the image's shape)")
        self.rater_list.setMaximumHeight(120)
        self.samples_spin = QSpinBox()
        self.samples_spin.setRange(0, 10_000)
        self.samples_spin.setSpecialValueText("all")
        self.samples_spin.setValue(16)
        self.samples_spin.setToolTip("First N samples used (16 = GED16 / HM-IoU16)")
        self.unbiased_check = QCheckBox("unbiased GED (exclude self-pairs)")
        self.form.addRow("Raters", self.rater_list)
        self.form.addRow("Samples N", self.samples_spin)
        self.form.addRow("", self.unbiased_check)
        self._add_buttons(
            ("Compute", self.compute),
            ("Export JSON…", lambda: self._export_dialog("JSON (*.json)", self.export_json)),
        )
        self.layout().addWidget(self.result_label)
        self.layout().addWidget(self.status)
        self._refresh_images()

    def _refresh(self) -> None:
        layer = self.image_layer()
        _checked_list(self.rater_list, [lay.name for lay in self._raters(layer)] if layer else [])

    def compute(self) -> Any:
        """Compute the observer metrics in a worker; return it (None if not started)."""
        layer, record = self._current_run()
        if record is None:
            return None
        self._refresh()
        chosen = set(_checked(self.rater_list))
        masks = {lay.name: np.array(lay.data) for lay in self._raters(layer) if lay.name in chosen}
        if not masks:
            self.notify(f"choose rater layers of {layer.name!r} ({NO_RATERS})")
            return None
        res = record.result
        n = self.samples_spin.value() or None
        k = max(len(res.class_names), 2)
        unbiased = self.unbiased_check.isChecked()
        scope = f"image {layer.name!r} ({res.method}, N={res.n_samples})"

        def job() -> Any:
            mk = max(int(m.max(initial=0)) for m in masks.values()) + 1
            return model.observer_report(
                res.samples, masks, n_samples=n, unbiased=unbiased,
                n_classes=max(k, mk, int(res.samples.max(initial=0)) + 1), scope=scope,
            )  # fmt: skip

        return self._start(job, self._show)


class ConformalWidget(_Panel):
    """Conformal inner/outer bands of the current image, calibrated on a store or other images."""

    action = "conformal calibration"

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.source_combo = QComboBox()
        self.source_combo.addItems(["project store", "other images in the viewer"])
        self.path_edit = _path_row(self, "Store whose annotated images with runs calibrate")
        self.rater_list = QListWidget()
        self.rater_list.setToolTip("Rater layers of other images with runs (majority per image)")
        self.rater_list.setMaximumHeight(120)
        self.alpha_spin = QDoubleSpinBox()
        self.alpha_spin.setRange(0.01, 0.5)
        self.alpha_spin.setSingleStep(0.01)
        self.alpha_spin.setValue(0.1)
        self.alpha_spin.setToolTip("Risk level α: expected missed share of the reference ≤ α")
        self.holdout_spin = QDoubleSpinBox()
        self.holdout_spin.setRange(0.0, 0.9)
        self.holdout_spin.setSingleStep(0.1)
        self.holdout_spin.setToolTip("Share of calibration images held out to measure coverage")
        self.form.addRow("Calibrate on", self.source_combo)
        self.form.addRow("Other raters", self.rater_list)
        self.form.addRow("α", self.alpha_spin)
        self.form.addRow("Held-out share", self.holdout_spin)
        self._add_buttons(
            ("Calibrate and draw", self.compute),
            ("Export JSON…", lambda: self._export_dialog("JSON (*.json)", self.export_json)),
        )
        self.layout().addWidget(self.result_label)
        self.layout().addWidget(self.status)
        self.layers: dict[str, Any] = {}
        self._refresh_images()

    def _other_raters(self) -> dict[str, tuple[Any, Any, Any]]:
        """``"<rater> (on <image>)"`` -> (image layer, record, rater layer) for other images."""
        current = self.image_layer()
        out = {}
        for layer in self.viewer.layers:
            if not isinstance(layer, Image) or layer is current:
                continue
            record = model.record_for(self.session, layer)
            if record is None:
                continue
            for rater in self._raters(layer):
                out[f"{rater.name} (on {layer.name})"] = (layer, record, rater)
        return out

    def _refresh(self) -> None:
        _checked_list(self.rater_list, list(self._other_raters()))

    def compute(self) -> Any:
        """Calibrate the bands (worker) and draw them on the current image; return the worker."""
        layer, record = self._current_run()
        if record is None:
            return None
        alpha, share = self.alpha_spin.value(), self.holdout_spin.value()
        probs = np.asarray(record.result.maps.mean_probs)
        own = self._raters(layer)
        heldout = []
        if own:
            heldout = [(probs, model.make_reference({r.name: np.array(r.data) for r in own}).hard)]
        held_text = f"{layer.name!r} vs its {len(own)} rater layer(s)" if own else ""
        if self.source_combo.currentIndex() == 0:
            try:
                store = find_store(self.viewer, self.path_edit.text(), layer)
            except (OSError, ValueError) as exc:
                self.notify(f"cannot open the store: {exc}", error=True)
                return None
            if store is None:
                self.notify(f"no calibration data: {NO_RATERS} (or calibrate on other images)")
                return None
            exclude = [model._probseg_meta(layer).get("image_id", layer.name)]

            def job() -> Any:
                pairs, ids = model.store_conformal_pairs(store, exclude=exclude)
                where = f"store {store.path}: {', '.join(ids[:5])}{' …' * (len(ids) > 5)}"
                return model.conformal_report(
                    pairs, probs, alpha=alpha, calibration_from=where, heldout=heldout,
                    heldout_from=held_text, holdout_share=share,
                )  # fmt: skip
        else:
            self._refresh()
            chosen = set(_checked(self.rater_list))
            groups: dict[int, tuple[Any, Any, dict]] = {}
            for key, (image, rec, rater) in self._other_raters().items():
                if key in chosen and not is_stale(image, rec.result):
                    groups.setdefault(id(image), (image, rec, {}))[2][rater.name] = np.array(
                        rater.data
                    )
            if not groups:
                self.notify(f"no calibration data: {NO_RATERS} to other images with runs")
                return None
            pairs_in = [(rec.result.maps.mean_probs, masks) for _, rec, masks in groups.values()]
            where = "viewer images " + ", ".join(repr(img.name) for img, _, _ in groups.values())

            def job() -> Any:
                pairs = [(p, model.make_reference(m).hard) for p, m in pairs_in]
                return model.conformal_report(
                    pairs, probs, alpha=alpha, calibration_from=where, heldout=heldout,
                    heldout_from=held_text, holdout_share=share,
                )  # fmt: skip

        return self._start(job, lambda report: self._draw(layer, report))

    def _draw(self, image: Any, report: Any) -> None:
        if image not in self.viewer.layers:
            self.notify(f"{image.name!r} was removed; bands not drawn")
            return
        self._show(report)
        old = [
            lay
            for lay in self.viewer.layers
            if model._probseg_meta(lay).get("what") in ("conformal-inner", "conformal-outer")
            and model._probseg_meta(lay).get("image") == image.name
        ]
        for lay in old:
            self.viewer.layers.remove(lay)
        alpha = report.bands.alpha
        self.layers = {}
        for which, mask, color in (
            ("outer", report.outer, OUTER_COLOR),
            ("inner", report.inner, INNER_COLOR),
        ):
            meta = {
                "what": f"conformal-{which}",
                "image": image.name,
                "alpha": alpha,
                "lambda": getattr(report.bands, f"lambda_{which}"),
                "n_calibration": report.bands.n_calibration,
            }
            lay = self.viewer.add_labels(
                mask.astype(np.uint8),
                name=layer_name(image.name, f"conformal {which} (α={alpha:g})"),
                scale=image.scale,
                translate=image.translate,
                colormap={None: "transparent", 0: "transparent", 1: color},
                metadata={"probseg": meta},
            )
            lay.contour = 2
            self.layers[which] = lay
        self.viewer.layers.selection.active = image
