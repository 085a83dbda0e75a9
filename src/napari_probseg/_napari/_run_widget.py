"""Run panel: choose image, model, method, N, seed and device; run in a thread worker; cancel.

The widget is thin: the job is :func:`napari_probseg._napari._runner.run_job` (plain generator),
landing the result is :func:`napari_probseg._napari._session.land`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QWidget,
)

from napari_probseg._napari._choices import (
    LOAD_CARD,
    ModelChoice,
    available_devices,
    bundled_choices,
    card_choice,
    describe_error,
)
from napari_probseg._napari._layers import Placement, create_layer, is_source_image
from napari_probseg._napari._runner import RunRequest, run_job
from napari_probseg._napari._scroll import content_height, scroll_layout
from napari_probseg._napari._session import (
    get_session,
    land_stepwise,
    run_warnings,
    stamp_run_id,
    store_image_id,
)
from napari_probseg.models.errors import UntrustedModelError

#: The model-list entry that opens a folder dialog (nnU-Net trained-model folder, MONAI bundle).
LOAD_FOLDER = "add model folder…"

#: Resolution of the napari progress bar (it counts thousandths of the engine's fraction).
_PBAR_STEPS = 1000


_WARM = {"done": False}


def _job_with_warm_layers(*args: Any, **kwargs: Any) -> Any:
    """:func:`run_job`, then build the napari layer objects in the worker thread too.

    Layer models hold no Qt objects; building them (Shapes meshes, napari's one-time numba
    compilations) on the GUI thread stalled the viewer for seconds. Only adding them to the
    viewer (controls, GPU visuals) is left to the GUI thread.
    """
    output = yield from run_job(*args, **kwargs)
    if not _WARM["done"]:
        _warm_napari()
        _WARM["done"] = True
    output.extra["layers"] = [create_layer(*item) for item in output.layers]
    return output


def _warm_napari() -> None:
    """Trigger napari's numba compilations (shape meshes, direct label colormaps) off the GUI
    thread; they are cached per process."""
    from napari.layers import Labels, Shapes

    Shapes([np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])], shape_type="path")
    Shapes([np.array([[0.0, 0.0], [1.0, 1.0]])], shape_type="rectangle")
    for dtype in (np.uint8, np.int32):
        layer = Labels(np.zeros((2, 2), dtype), colormap={None: "transparent", 1: "red"})
        try:  # private, warm-up only: harmless if napari changes it
            layer.colormap._data_to_texture(np.zeros((2, 2), dtype))
        except (AttributeError, TypeError, ValueError):
            pass


class RunWidget(QWidget):
    """Dock widget that runs a probabilistic segmentation on an image layer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (injected by napari).
    """

    #: Emitted with the RunRecord (or None when dropped/failed/cancelled) after each run ends.
    run_finished = Signal(object)

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.worker: Any = None
        self.last_record: Any = None
        self.last_error: BaseException | None = None
        self._cancel: threading.Event | None = None
        self._pbar: Any = None
        self._landing = False
        self._models: list[ModelChoice] = []
        self._trusted: set[str] = set()  # model keys the user confirmed may run code
        self._rerun = False

        self.image_combo = QComboBox()
        self.image_combo.setToolTip("Single-channel 2D or 3D image layer to segment")
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("Bundled model, or a model card (JSON/YAML) of your own")
        self.method_combo = QComboBox()
        self.method_combo.setToolTip("Source of the hypotheses (only those the model supports)")
        self.samples_spin = QSpinBox()
        self.samples_spin.setRange(1, 1024)
        self.samples_spin.setValue(16)
        self.samples_spin.setToolTip(
            "Number of hypotheses N (results depend on it; it is recorded)"
        )
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setToolTip("Same seed, model and N give the same hypotheses")
        self.device_combo = QComboBox()
        self.device_combo.addItems(available_devices())
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.save_button = QPushButton("Save run to store")
        self.save_button.setToolTip(
            "Save the newest run of this viewer as a prediction run of the open project store "
            "(as `probseg predict --store` does): annotations started from its hypotheses then "
            "record it as their source run"
        )
        self.save_button.setEnabled(False)
        self.save_worker: Any = None
        self.saved_run_id: str | None = None
        self.status = QLabel("Ready.")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("model", self.model_combo)
        form.addRow("method", self.method_combo)
        form.addRow("samples N", self.samples_spin)
        form.addRow("seed", self.seed_spin)
        form.addRow("device", self.device_combo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = scroll_layout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.save_button)
        layout.addWidget(self.status)
        layout.addStretch(1)

        # Compact: the panel takes the height of its form, the review panel below it the rest.
        self.setMaximumHeight(content_height(self) + 60)
        self._set_models(bundled_choices())
        self.model_combo.activated.connect(self._on_model_activated)
        self.model_combo.currentIndexChanged.connect(self._refresh_methods)
        self.run_button.clicked.connect(self.run)
        self.save_button.clicked.connect(lambda: self.save_to_store())
        session = get_session(self.viewer)
        session.changed.connect(lambda *_: self._update_save_button())
        session.store_changed.connect(lambda *_: self._update_save_button())
        self.cancel_button.clicked.connect(self.cancel)
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self.viewer.layers.events.reordered.connect(self._refresh_images)
        self.image_combo.currentIndexChanged.connect(self._match_model_to_image)
        self._refresh_images()
        self._match_model_to_image()

    # ------------------------------------------------------------------ choices
    def _image_layers(self) -> list[Image]:
        # Input images only (plain or store images), never the maps a run produced.
        return [layer for layer in self.viewer.layers if is_source_image(layer)]

    def current_image(self) -> Image | None:
        """The chosen image layer, or None."""
        name = self.image_combo.currentText()
        return next((lay for lay in self._image_layers() if lay.name == name), None)

    def _refresh_images(self, *_: Any) -> None:
        current = self.image_combo.currentText()
        names = [layer.name for layer in self._image_layers()]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        if self.image_combo.currentText() != current:
            self._match_model_to_image()

    def _match_model_to_image(self, *_: Any) -> None:
        """Choose a model of the image's dimensionality when the chosen one does not fit."""
        layer = self.current_image()
        choice = self.current_model()
        if layer is None or (choice is not None and choice.spatial_dims == layer.ndim):
            return
        fitting = [i for i, c in enumerate(self._models) if c.spatial_dims == layer.ndim]
        if fitting:
            self.model_combo.setCurrentIndex(fitting[0])

    def _set_models(self, choices: list[ModelChoice], select: str | None = None) -> None:
        self._models = choices
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for choice in choices:
            self.model_combo.addItem(choice.label)
        self.model_combo.addItem(LOAD_CARD)
        self.model_combo.addItem(LOAD_FOLDER)
        if select is not None:
            self.model_combo.setCurrentText(select)
        self.model_combo.blockSignals(False)
        self._refresh_methods()

    def _on_model_activated(self, index: int) -> None:
        if self.model_combo.itemText(index) == LOAD_FOLDER:
            folder = QFileDialog.getExistingDirectory(
                self, "Add model folder (nnU-Net trained model or MONAI bundle)"
            )
            if folder:
                self.add_model_folder(folder)
            elif self._models:
                self.model_combo.setCurrentIndex(0)
            return
        if self.model_combo.itemText(index) != LOAD_CARD:
            return
        path, _ = QFileDialog.getOpenFileName(
            self, "Load model card", "", "Model cards (*.json *.yaml *.yml)"
        )
        if path:
            self.add_model_card(path)
        elif self._models:
            self.model_combo.setCurrentIndex(0)

    def add_model_card(self, path: str | Path) -> bool:
        """Validate a model card and add it to the model list; errors become notifications."""
        try:
            choice = card_choice(path)
        except (ValueError, OSError) as exc:
            show_error(f"probseg: cannot load model card {Path(path).name}: {describe_error(exc)}")
            if self._models:
                self.model_combo.setCurrentIndex(0)
            return False
        self._set_models([*self._models, choice], select=choice.label)
        return True

    def add_model_folder(self, path: str | Path) -> bool:
        """Add an nnU-Net trained-model folder or a MONAI bundle to the model list (read from its
        JSON/YAML files only: nothing is imported or unpickled here); errors become
        notifications."""
        from napari_probseg.models.adapters import inspect_model_folder

        try:
            info = inspect_model_folder(path)
        except (ValueError, OSError) as exc:
            show_error(f"probseg: cannot add model folder {Path(path).name}: {describe_error(exc)}")
            if self._models:
                self.model_combo.setCurrentIndex(0)
            return False
        kind = {"nnunet": "nnU-Net", "monai_bundle": "MONAI bundle"}.get(info.kind, info.kind)
        label = f"{info.name} ({info.spatial_dims}D, {kind})"
        if any(c.label == label for c in self._models):  # same name elsewhere: say where
            label = f"{label} {info.path}"
        choice = ModelChoice(
            label,
            str(info.path),
            tuple(m for m in info.methods if not (info.kind == "monai_bundle" and m == "ensemble")),
            info.spatial_dims,
        )
        self._set_models([*self._models, choice], select=choice.label)
        return True

    def _confirm_trust(self, message: str) -> bool:
        """Ask the user whether a model that would run code may load (explicit confirmation)."""
        answer = QMessageBox.question(
            self,
            "Trust this model?",
            f"{message}\n\nLoad it anyway? Only do this if you trust where it came from.",
            QMessageBox.Yes | QMessageBox.No,
            QMessageBox.No,
        )
        return answer == QMessageBox.Yes

    def _refresh_methods(self, *_: Any) -> None:
        choice = self.current_model()
        self.method_combo.clear()
        if choice is not None:
            self.method_combo.addItems(list(choice.methods))

    def current_model(self) -> ModelChoice | None:
        """The selected model, or None."""
        index = self.model_combo.currentIndex()
        return self._models[index] if 0 <= index < len(self._models) else None

    def select(
        self,
        *,
        image: str | None = None,
        model: str | None = None,
        method: str | None = None,
        n_samples: int | None = None,
        seed: int | None = None,
        device: str | None = None,
    ) -> None:
        """Set the panel's choices programmatically (demo, scripts, tests)."""
        if image is not None:
            self._refresh_images()
            self.image_combo.setCurrentText(image)
        if model is not None:
            labels = [c.label for c in self._models]
            match = [lab for lab, c in zip(labels, self._models) if model in (c.label, c.key)]
            if not match:
                raise ValueError(f"model: expected one of {labels}, got {model!r}")
            self.model_combo.setCurrentText(match[0])
        if method is not None:
            methods = [self.method_combo.itemText(i) for i in range(self.method_combo.count())]
            if method not in methods:
                raise ValueError(f"method: expected one of {methods}, got {method!r}")
            self.method_combo.setCurrentText(method)
        if n_samples is not None:
            self.samples_spin.setValue(n_samples)
        if seed is not None:
            self.seed_spin.setValue(seed)
        if device is not None:
            self.device_combo.setCurrentText(device)

    # ------------------------------------------------------------------ store
    def _update_save_button(self) -> None:
        session = get_session(self.viewer)
        self.save_button.setEnabled(
            session.store is not None and session.current is not None and self.save_worker is None
        )

    def save_to_store(self) -> Any:
        """Save the viewer's newest run to the open store (a worker); return the worker or None.

        The run's image must be an image of that store (opened from it or added with the
        annotation panel). When it is saved, every layer of the run (and each "Use as annotation"
        copy of it) records the run id, which annotations started from it keep as ``source_run``.
        """
        from napari.qt.threading import create_worker

        from napari_probseg.evaluation import save_run

        session = get_session(self.viewer)
        record, store = session.current, session.store
        if record is None or store is None:
            show_error("probseg: open a project store (Annotate panel) and run a model first.")
            return None
        image_id = store_image_id(record.image_layer, store)
        if image_id is None:
            show_error(
                f"probseg: '{record.image_name}' is not an image of the open store: add it with "
                "'Add current image layer' in the Annotate panel first."
            )
            return None
        worker = create_worker(
            save_run,
            store,
            image_id,
            record.result,
            metadata={"saved_from": "napari run panel"},
            _start_thread=False,
            _ignore_errors=True,
        )
        worker.returned.connect(lambda run_id: self._on_saved(record, image_id, run_id))
        worker.errored.connect(
            lambda exc: show_error(f"probseg: saving the run failed: {describe_error(exc)}")
        )
        worker.finished.connect(self._on_save_finished)
        self.save_worker = worker
        self._update_save_button()
        self.status.setText(f"Saving the run to {store.path.name}…")
        worker.start()
        return worker

    def _on_saved(self, record: Any, image_id: str, run_id: str) -> None:
        stamp_run_id(self.viewer, record, run_id)
        self.saved_run_id = run_id
        self.status.setText(f"Saved as run {run_id!r} of {image_id!r}.")
        show_info(f"probseg: saved the run as {run_id!r} of store image {image_id!r}")

    def _on_save_finished(self) -> None:
        self.save_worker = None
        self._update_save_button()

    # ------------------------------------------------------------------ running
    @property
    def running(self) -> bool:
        """True while a run is in progress (sampling, or its layers being added)."""
        return self.worker is not None or self._landing

    def run(self) -> Any:
        """Start a run in a napari thread worker; return the worker (None if not started)."""
        if self.running:
            return None
        layer = self.current_image()
        choice = self.current_model()
        if layer is None or choice is None or not self.method_combo.currentText():
            show_error("probseg: choose an image layer, a model and a method first.")
            return None
        ndim = layer.ndim
        placement = Placement(
            layer.name,
            tuple(float(s) for s in layer.scale[-ndim:]),
            tuple(float(t) for t in layer.translate[-ndim:]),
        )
        request = RunRequest(
            model=choice.key,
            method=self.method_combo.currentText(),
            n_samples=self.samples_spin.value(),
            seed=self.seed_spin.value(),
            device=self.device_combo.currentText(),
            quantile=0.05,
            trust=choice.key in self._trusted,
        )
        return self.start(layer, request, placement)

    def start(self, layer: Image, request: RunRequest, placement: Placement) -> Any:
        """Run ``request`` on ``layer`` in a worker thread (what :meth:`run` calls)."""
        from napari.qt.threading import create_worker
        from napari.utils import progress

        self._cancel = threading.Event()
        self.last_error = None
        self.last_record = None
        worker = create_worker(
            _job_with_warm_layers,
            layer.data,
            request,
            placement,
            cancel=self._cancel,
            _start_thread=False,
            _ignore_errors=True,  # errors become notifications below, never a traceback dialog
        )
        self._pbar = progress(total=_PBAR_STEPS, desc=f"probseg: {request.method} on {layer.name}")
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda output: self._on_returned(layer, output))
        worker.errored.connect(self._on_errored)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText(f"Running {request.method}, N={request.n_samples}…")
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the running job at its next check; no partial result lands."""
        if self.worker is None:
            return
        if self._cancel is not None:
            self._cancel.set()
        self.worker.quit()
        self.status.setText("Cancelling…")

    def _on_progress(self, event: Any) -> None:
        if self._pbar is None or not hasattr(event, "fraction"):
            return
        if self._cancel is not None and self._cancel.is_set():
            return  # queued events of a cancelled run
        target = round(max(0.0, min(1.0, float(event.fraction))) * _PBAR_STEPS)
        if target > self._pbar.n:
            self._pbar.update(target - self._pbar.n)
        text = (
            f"{event.stage}: samples {event.samples_done}/{event.samples_total}, "
            f"tiles {event.tiles_done}/{event.tiles_total}"
        )
        self._pbar.set_description(f"probseg {text}")
        self.status.setText(event.message or text)

    def _on_returned(self, layer: Image, output: Any) -> None:
        if self._cancel is not None and self._cancel.is_set():
            return  # cancelled after the last check: drop it, as promised
        self._landing = True
        self.status.setText("Adding layers…")

        def landed(record: Any) -> None:
            self._landing = False
            self.run_button.setEnabled(self.worker is None)
            self._show_landed(record, output)
            if self.worker is None:  # the worker finished while the layers were being added
                self.run_finished.emit(self.last_record)

        try:
            land_stepwise(self.viewer, output, layer, landed)
        except Exception as exc:  # never a traceback dialog: report and keep the viewer usable
            self._landing = False
            self._on_errored(exc)

    def _show_landed(self, record: Any, output: Any) -> None:
        self.last_record = record
        if record is not None:
            res = output.result
            warnings = run_warnings(res)
            self.status.setText(
                f"Done: {res.method}, N={res.n_samples}, seed {output.request.seed}, "
                f"on {res.provenance.get('device', output.request.device)}."
                + "".join(f"\n⚠ {w}" for w in warnings)
            )
        else:
            self.status.setText("Result dropped: the image changed during the run.")

    def _on_errored(self, exc: BaseException) -> None:
        from napari_probseg.engine import Cancelled

        if isinstance(exc, Cancelled):
            self._on_aborted()
            return
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        if isinstance(cause, UntrustedModelError):
            choice = self.current_model()
            if choice is not None and choice.key not in self._trusted:
                if self._confirm_trust(str(cause)):
                    self._trusted.add(choice.key)
                    self._rerun = True
                    return
        self.last_error = exc
        message = describe_error(exc)
        self.status.setText(f"Failed: {message}")
        show_error(f"probseg: run failed: {message}")

    def _on_aborted(self) -> None:
        self.status.setText("Cancelled; no result was kept.")
        show_info("probseg: run cancelled.")

    def _on_finished(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.worker = None
        if self._rerun:  # the user just trusted the model: run again with trust
            self._rerun = False
            self.run_button.setEnabled(True)
            self.cancel_button.setEnabled(False)
            self.run()
            return
        self.run_button.setEnabled(not self._landing)
        self.cancel_button.setEnabled(False)
        if not self._landing:
            self.run_finished.emit(self.last_record)
