"""Researcher panels: calibration (reliability diagram), observer variability, conformal bands.

Thin Qt widgets over :mod:`._eval_model`: they read what the user chose and the layers' data on
the GUI thread, compute in a napari thread worker, and report every problem as a napari
notification (never a traceback dialog). Runs come from the viewer's :class:`Session` (the run
panel's results), raters from Labels layers of the image's shape or from a project store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Image
from napari.utils.notifications import show_info
from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QListWidget, QSpinBox

from napari_probseg._napari import _eval_model as model
from napari_probseg._napari._eval_base import (
    INNER_COLOR,
    NO_RATERS,
    OUTER_COLOR,
    _checked,
    _checked_list,
    _fill,
    _Panel,
    _path_row,
    find_store,
    unchanged,
)
from napari_probseg._napari._layers import layer_name
from napari_probseg.evaluation import store_reports as observer
from napari_probseg.store import StoreError

__all__ = ["CalibrationWidget", "ConformalWidget", "ObserverWidget"]


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
        self.content.addWidget(self.result_label)
        self.content.addWidget(self.canvas)
        self._add_buttons(
            (
                "Export figure…",
                lambda: self._export_dialog("PNG (*.png);;SVG (*.svg)", self.export),
            ),
            ("Export JSON…", lambda: self._export_dialog("JSON (*.json)", self.export_json)),
        )
        self.content.addWidget(self.status)
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
            except (OSError, ValueError, StoreError):
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
            except (OSError, ValueError, StoreError) as exc:
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

        return self._start(job, self._done, run=(layer, record))

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

        return self._start(job, self._done, run=(layer, record))

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
        self.content.addWidget(self.result_label)
        self.content.addWidget(self.status)
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
            return observer.observer_report(
                res.samples, masks, n_samples=n, unbiased=unbiased,
                n_classes=max(k, mk, int(res.samples.max(initial=0)) + 1), scope=scope,
            )  # fmt: skip

        return self._start(job, self._show, run=(layer, record))


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
        self.content.addWidget(self.result_label)
        self.content.addWidget(self.status)
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
            except (OSError, ValueError, StoreError) as exc:
                self.notify(f"cannot open the store: {exc}", error=True)
                return None
            if store is None:
                self.notify(f"no calibration data: {NO_RATERS} (or calibrate on other images)")
                return None
            exclude = [model._probseg_meta(layer).get("image_id", layer.name)]
            signature = record.result.input_signature

            def job() -> Any:
                pairs, ids = observer.store_conformal_pairs(
                    store, exclude=exclude, exclude_signatures=[signature]
                )
                where = f"store {store.path}: {', '.join(ids[:5])}{' …' * (len(ids) > 5)}"
                return observer.conformal_report(
                    pairs, probs, alpha=alpha, calibration_from=where, heldout=heldout,
                    heldout_from=held_text, holdout_share=share,
                )  # fmt: skip
        else:
            self._refresh()
            chosen = set(_checked(self.rater_list))
            groups: dict[int, tuple[Any, Any, dict]] = {}
            for key, (image, rec, rater) in self._other_raters().items():
                if key in chosen:
                    masks = groups.setdefault(id(image), (image, rec, {}))[2]
                    masks[rater.name] = np.array(rater.data)
            if not groups:
                self.notify(f"no calibration data: {NO_RATERS} to other images with runs")
                return None
            pairs_in = [
                (img.name, img.data, rec.result, masks) for img, rec, masks in groups.values()
            ]

            def job() -> Any:
                fresh = [p for p in pairs_in if unchanged(p[1], p[2].input_signature)]
                if not fresh:
                    raise ValueError("images: every calibration image changed since its run")
                pairs = [(r.maps.mean_probs, model.make_reference(m).hard) for *_, r, m in fresh]
                where = "viewer images " + ", ".join(repr(p[0]) for p in fresh)
                return observer.conformal_report(
                    pairs, probs, alpha=alpha, calibration_from=where, heldout=heldout,
                    heldout_from=held_text, holdout_share=share,
                )  # fmt: skip

        return self._start(job, lambda report: self._draw(layer, report), run=(layer, record))

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
