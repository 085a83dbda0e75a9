"""Active-learning worklist panel: rank a store, annotate in rank order, retrain, re-rank.

The panel renders :func:`napari_probseg.active.worklist.worklist_rows` (the store's latest
ranking); "Re-rank" runs :func:`napari_probseg.active.rank.rank_store` and "Retrain" runs
:func:`napari_probseg.training.finetune.finetune`, both in napari thread workers with progress
and cancel, so the viewer never blocks. "Open next" hands the most informative unannotated image
to the annotation panel (created if needed) signed in as the current rater; after a save (the
panel's "Save version", or "Save && next" here) the worklist refreshes and opens the next image.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_probseg._napari._store_forms import RaterRow, StoreRow, notify_errors
from napari_probseg.active.scores import AGGREGATIONS, SCORES, STRUCTURE_SCORES
from napari_probseg.active.worklist import WorklistRow, next_image, worklist_rows
from napari_probseg.store import ProjectStore, validate_identifier

_COLUMNS = ("rank", "image", "score", "annotated", "by")


def import_dynamo() -> None:
    """Import ``torch._dynamo`` now, on the GUI thread, before a training thread starts.

    torch's optimizers import it (and triton's bundled LLVM) on first use; doing that in the
    training thread while the viewer's software OpenGL (Mesa llvmpipe under Xvfb) has its own
    LLVM loaded crashed the process. Importing it first is cheap once torch is loaded and
    harmless if torch lacks it.
    """
    try:
        import torch._dynamo  # noqa: F401
    except ImportError:  # an older or stripped-down torch: nothing to pre-load
        pass


class _Relay(QObject):
    """Carries progress from a worker thread's callback to the GUI thread (queued signal)."""

    progressed = Signal(object)
    trained = Signal(object)


class WorklistWidget(QWidget):
    """Dock widget: the store's images by informativeness, and the annotate-retrain loop.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.store: ProjectStore | None = None
        self.record: dict[str, Any] | None = None
        self.rows: list[WorklistRow] = []
        self.current: str | None = None
        self.annotation: Any = None
        self.worker: Any = None
        self.last_card: str | None = None
        self._cancel = threading.Event()
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_rank_progress)
        self._relay.trained.connect(self._on_train_progress)
        self._build_ui()
        self._update_state()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.store_row = StoreRow(self.open_store, button_text="Open store")
        self.path_edit = self.store_row.path_edit
        self.open_button = self.store_row.open_button
        self.rater_row = RaterRow()
        self.rater_edit = self.rater_row.rater_combo.lineEdit()
        self.role_combo = self.rater_row.role_combo
        self.model_edit = QLineEdit("lesions2d-unet")
        self.model_edit.setToolTip("bundled model name or model card file")
        self.method_edit = QLineEdit()
        self.method_edit.setPlaceholderText("method (default: the card's)")
        self.score_combo = QComboBox()
        self.score_combo.addItems(list(SCORES))
        self.agg_combo = QComboBox()
        self.agg_combo.addItems(list(AGGREGATIONS))
        self.score_combo.currentTextChanged.connect(
            lambda s: self.agg_combo.setEnabled(s not in STRUCTURE_SCORES)
        )
        self.samples_spin = QSpinBox()
        self.samples_spin.setRange(2, 256)
        self.samples_spin.setValue(16)
        self.workers_spin = QSpinBox()
        self.workers_spin.setRange(1, 256)
        from napari_probseg.active.rank import default_workers

        self.workers_spin.setValue(default_workers())
        self.processes_check = QCheckBox("worker processes")
        self.processes_check.setChecked(True)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 1000)
        self.epochs_spin.setValue(2)
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("new model card (default: beside the store)")
        self.table = QTableWidget(0, len(_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(_COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.cellDoubleClicked.connect(lambda r, _c: self.open_image(self.rows[r].image_id))
        self.info_label = QLabel("No store open.")
        self.info_label.setWordWrap(True)
        self.next_button = QPushButton("Open next")
        self.save_next_button = QPushButton("Save && next")
        self.rank_button = QPushButton("Re-rank")
        self.train_button = QPushButton("Retrain")
        self.cancel_button = QPushButton("Cancel")
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)

        store_box = QGroupBox("Store and rater")
        sl = QFormLayout(store_box)
        sl.addRow(self.store_row)
        sl.addRow("rater", self.rater_row.rater_combo)
        sl.addRow("role", self.role_combo)
        model_box = QGroupBox("Model and score")
        ml = QFormLayout(model_box)
        ml.addRow("model", self.model_edit)
        ml.addRow("method", self.method_edit)
        ml.addRow("score", self.score_combo)
        ml.addRow("aggregation", self.agg_combo)
        ml.addRow("samples N", self.samples_spin)
        ml.addRow("dask workers", self.workers_spin)
        ml.addRow(self.processes_check)
        ml.addRow("retrain epochs", self.epochs_spin)
        ml.addRow("new card", self.out_edit)
        list_box = QGroupBox("Worklist (most informative first)")
        ll = QVBoxLayout(list_box)
        ll.addWidget(self.info_label)
        ll.addWidget(self.table)
        buttons = QHBoxLayout()
        buttons.addWidget(self.next_button)
        buttons.addWidget(self.save_next_button)
        ll.addLayout(buttons)
        run_box = QGroupBox("Loop")
        rl = QVBoxLayout(run_box)
        run_buttons = QHBoxLayout()
        for b in (self.rank_button, self.train_button, self.cancel_button):
            run_buttons.addWidget(b)
        rl.addLayout(run_buttons)
        rl.addWidget(self.progress)
        rl.addWidget(self.status_label)
        layout = QVBoxLayout(self)
        for box in (store_box, model_box, list_box, run_box):
            layout.addWidget(box)
        layout.addStretch(1)

        self.next_button.clicked.connect(lambda: self.open_next())
        self.save_next_button.clicked.connect(lambda: self.save_and_next())
        self.rank_button.clicked.connect(lambda: self.rerank())
        self.train_button.clicked.connect(lambda: self.retrain())
        self.cancel_button.clicked.connect(self.cancel)

    def _update_state(self) -> None:
        has_store = self.store is not None
        busy = self.worker is not None
        self.next_button.setEnabled(has_store and self.record is not None)
        self.save_next_button.setEnabled(has_store and self.annotation is not None)
        self.rank_button.setEnabled(has_store and not busy)
        self.train_button.setEnabled(has_store and not busy)
        self.cancel_button.setEnabled(busy)

    # ------------------------------------------------------------------ store and worklist
    @notify_errors("opening the store")
    def open_store(self, path: str | Path) -> ProjectStore | None:
        """Open an existing project store and show its latest ranking."""
        text = str(path).strip()
        if not text:
            raise ValueError("path: choose a project store folder")
        self.store = ProjectStore.open(Path(text).expanduser())
        self.path_edit.setText(str(self.store.path))
        self.refresh()
        return self.store

    def refresh(self) -> None:
        """Re-read the latest ranking and the annotations, and redraw the table."""
        if self.store is None:
            return
        self.record = self.store.latest_ranking()
        self.rows = worklist_rows(self.store, self.record)
        self.table.setRowCount(len(self.rows))
        for r, row in enumerate(self.rows):
            value = "-" if row.value is None else f"{row.value:.5g}"
            if row.error:
                value = "failed"
            cells = (
                "-" if row.rank is None else str(row.rank),
                row.image_id,
                value,
                "yes" if row.annotated else "no",
                ", ".join(row.raters),
            )
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if row.error and c == 2:
                    item.setToolTip(row.error)
                self.table.setItem(r, c, item)
        if self.record is None:
            self.info_label.setText(f"{len(self.rows)} image(s), no ranking yet: press Re-rank.")
        else:
            cfg = self.record["config"]
            n_open = sum(1 for row in self.rows if row.rank is not None and not row.annotated)
            self.info_label.setText(
                f"{self.record.get('model_name')} {cfg['method'] or ''} · {cfg['score']} / "
                f"{cfg['aggregation']} · N = {cfg['n_samples']} · {len(self.record['entries'])} "
                f"ranked, {n_open} not annotated · card {cfg['card_sha256'][:10]}"
            )
        self._update_state()

    # ------------------------------------------------------------------ annotating
    def _annotation_panel(self) -> Any:
        if self.annotation is None:
            from napari_probseg._napari._annotation_widget import AnnotationWidget

            self.annotation = AnnotationWidget(self.viewer)
            self.viewer.window.add_dock_widget(self.annotation, name="Annotate (worklist)")
            # The panel's own "Save version" also moves the worklist on (after its save ran).
            self.annotation.saved.connect(self._after_save)
        return self.annotation

    @notify_errors("opening the image")
    def open_image(self, image_id: str) -> str | None:
        """Show ``image_id`` in the annotation panel, signed in as the rater, ready to paint."""
        store = self._require_store()
        rater = validate_identifier(self.rater_edit.text().strip(), "rater")
        panel = self._annotation_panel()
        if panel.store is None or Path(panel.store.path) != Path(store.path):
            panel.open_store(store.path)
        if panel.set_rater(rater, self.role_combo.currentText()) is None:
            return None
        if not panel.select_image(image_id):
            return None
        panel.start_editing("empty")
        self.current = image_id
        self._select_row(image_id)
        self._update_state()
        return image_id

    def _select_row(self, image_id: str) -> None:
        for r, row in enumerate(self.rows):
            if row.image_id == image_id:
                self.table.selectRow(r)

    @notify_errors("opening the next image")
    def open_next(self) -> str | None:
        """Open the most informative image nobody has annotated yet."""
        self._require_store()
        self.refresh()
        rater = self.rater_edit.text().strip() or None
        image_id = next_image(self.rows, rater=rater)
        if image_id is None:
            show_info("probseg: every ranked image is annotated: retrain, then re-rank.")
            return None
        return self.open_image(image_id)

    def save_and_next(self) -> Any:
        """Save the current edit in the annotation panel (a worker, returned); once it is
        committed the worklist refreshes and opens the next image."""
        if self.annotation is None:
            return None
        return self.annotation.save()

    def _after_save(self, outcome: Any) -> str | None:
        if outcome is None or not outcome.committed:
            return None
        self.refresh()
        return self.open_next()

    def _require_store(self) -> ProjectStore:
        if self.store is None:
            raise ValueError("store: open a project store first")
        return self.store

    # ------------------------------------------------------------------ workers
    def _start(self, worker: Any, what: str, done: Callable[[Any], None]) -> None:
        self._cancel.clear()
        self.worker = worker
        self.progress.setValue(0)
        self.status_label.setText(f"{what}…")
        worker.returned.connect(done)
        worker.errored.connect(lambda exc: self._on_error(what, exc))
        worker.finished.connect(self._on_finished)
        self._update_state()
        worker.start()

    def _on_error(self, what: str, exc: BaseException) -> None:
        from napari_probseg.engine import Cancelled

        if isinstance(exc, Cancelled):
            self.status_label.setText(f"{what} cancelled; nothing was written.")
            show_info(f"probseg: {what} cancelled")
        else:
            self.status_label.setText(f"{what} failed: {exc}")
            show_error(f"probseg: {what} failed: {exc}")

    def _on_finished(self) -> None:
        self.worker = None
        self._update_state()

    def cancel(self) -> None:
        """Ask the running ranking or training to stop (it keeps what it finished)."""
        self._cancel.set()
        self.status_label.setText("cancelling…")

    @notify_errors("ranking")
    def rerank(self) -> Any:
        """Rank the store with the model shown (e.g. the card just trained), in a worker."""
        from napari_probseg.active.rank import RankConfig, rank_store

        store = self._require_store()
        method = self.method_edit.text().strip() or None
        score = self.score_combo.currentText()
        config = RankConfig(
            model=self.model_edit.text().strip(),
            method=method,
            score=score,
            aggregation=None if score in STRUCTURE_SCORES else self.agg_combo.currentText(),
            n_samples=self.samples_spin.value(),
        )
        relay, cancel = self._relay, self._cancel
        kwargs = {
            "n_workers": self.workers_spin.value(),
            "processes": self.processes_check.isChecked(),
        }

        def work() -> dict[str, Any]:
            return rank_store(
                store.path, config, progress=relay.progressed.emit, cancel=cancel, **kwargs
            )

        worker = create_worker(work, _start_thread=False)
        self._start(worker, "ranking", self._on_ranked)
        return worker

    def _on_rank_progress(self, event: Any) -> None:
        if event.total:
            self.progress.setValue(int(100 * event.done / event.total))
        text = f"ranked {event.done}/{event.total}"
        if event.error:
            show_warning(f"probseg: skipped {event.image_id}: {event.error}")
        self.status_label.setText(text)

    def _on_ranked(self, record: dict[str, Any]) -> None:
        failed = len(record["failed"])
        state = "complete" if record["status"] == "complete" else "interrupted (resumable)"
        self.status_label.setText(
            f"ranking {state}: {len(record['entries'])} scored, {failed} failed, "
            f"{record['seconds']:.0f} s"
        )
        self.progress.setValue(100 if record["status"] == "complete" else self.progress.value())
        self.refresh()

    @notify_errors("retraining")
    def retrain(self) -> Any:
        """Fine-tune the model on the store's annotations in a worker; then use the new card."""
        from napari_probseg.training.finetune import run_finetune

        store = self._require_store()
        import_dynamo()  # before the training thread: see import_dynamo
        model = self.model_edit.text().strip()
        out = self.out_edit.text().strip() or str(self._default_card_path(store, model))
        epochs, cancel, relay = self.epochs_spin.value(), self._cancel, self._relay

        def work() -> Any:
            return run_finetune(
                store.path,
                model,
                out=out,
                epochs=epochs,
                cancel=cancel,
                seed=0,
                progress=relay.trained.emit,
            )

        worker = create_worker(work, _start_thread=False)
        self._start(worker, "retraining", self._on_trained)
        return worker

    @staticmethod
    def _default_card_path(store: ProjectStore, model: str) -> Path:
        """``<store's folder>/<store name>-models/<model>-al<n>.json`` (a new file)."""
        folder = store.path.parent / f"{store.path.stem}-models"
        stem = Path(model).stem if model.endswith(".json") else model
        stem = stem.split("-al")[0]
        n = 1
        while (folder / f"{stem}-al{n}.json").exists():
            n += 1
        return folder / f"{stem}-al{n}.json"

    def _on_train_progress(self, event: Any) -> None:
        self.progress.setValue(int(100 * event.fraction))
        loss = "" if event.loss is None else f", loss {event.loss:.4f}"
        self.status_label.setText(f"{event.stage} epoch {event.epoch}/{event.epochs}{loss}")

    def _on_trained(self, result: Any) -> None:
        self.last_card = str(result.card_path)
        self.model_edit.setText(self.last_card)
        self.out_edit.clear()
        val = "" if result.val_loss is None else f", validation loss {result.val_loss:.4f}"
        self.status_label.setText(f"new card {result.card_path.name}{val}: press Re-rank.")
        show_info(f"probseg: retrained model saved as {result.card_path}")
