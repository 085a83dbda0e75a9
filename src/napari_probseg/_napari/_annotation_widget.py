"""Annotation panel: multi-rater annotation in a project store (open/create, add image, rater,
blind mode, edit from empty / consensus / hypothesis, save with provenance, autosave drafts and
recovery, version browser, agreement between raters).

A thin widget over :mod:`._annotation_model` (the rules, Qt-free) and the store. Every store error
becomes a napari notification, never a traceback dialog, and work is never dropped: a failed save
keeps the layer and writes a draft (or a recovery file when the store cannot be written at all).
"""

from __future__ import annotations

import copy
import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject, QTimer, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTreeWidget,
    QVBoxLayout,
    QWidget,
)

from napari_probseg._napari._annotation_model import (
    AutosavePolicy,
    EditSession,
    SaveOutcome,
    blind_action,
    can_see_others,
    edit_start,
    is_hypothesis_layer_metadata,
    is_unchanged,
    sanitize_identifier,
    save_or_keep,
)
from napari_probseg._napari._annotation_versions import VersionsMixin
from napari_probseg._napari._layers import SEP, is_source_image
from napari_probseg._napari._scroll import scroll_layout
from napari_probseg._napari._session import get_session
from napari_probseg._napari._store_forms import RaterRow, StoreRow, notify_errors, start_io
from napari_probseg._napari._store_reader import (
    image_layer_data,
)
from napari_probseg.store import ROLES, ProjectStore, StoreError, validate_identifier

_TREE_COLUMNS = ("rater / version", "time (UTC)", "role", "tools", "source", "note")
#: Longest wait (ms) for a running save when the panel closes (then a draft is written).
_CLOSE_WAIT_MS = 10_000


class AnnotationWidget(VersionsMixin, QWidget):
    """Dock widget to annotate images of a multi-rater project store.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (injected by napari).
    recovery_dir : path, optional
        Where a mask goes if neither a version nor a draft can be written to the store.

    Saving, autosaving, the agreement and loading raters' versions read and write the store in a
    napari thread worker (:attr:`worker`); meanwhile the panel's controls are disabled and the
    button says what runs ("Saving…"). Painting on the edited layer goes on; what is painted
    during a save stays unsaved (and is autosaved).
    """

    #: Emitted on the GUI thread once a save's worker ended, with its ``SaveOutcome`` (None:
    #: nothing changed); the panel is usable again, so a listener may open the next image.
    saved = Signal(object)

    def __init__(self, napari_viewer: Any, *, recovery_dir: str | Path | None = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.store: ProjectStore | None = None
        self.image_id: str | None = None
        self.rater: str | None = None
        self.role: str = "expert"
        self.session: EditSession | None = None
        self.edit_layer: Any = None
        self.recovery_dir = recovery_dir
        self.last_outcome: SaveOutcome | None = None
        self.last_agreement: Any = None
        self.last_loaded: list[Any] = []
        self.draft_available = False
        self.policy = AutosavePolicy()
        #: The running store worker (save, autosave, agreement, loading versions), or None.
        self.worker: Any = None
        self._busy: tuple[Any, str] | None = None
        self._painted_while_busy = False
        self._quiet = False
        self._saved_outcome: tuple[SaveOutcome | None] | None = None
        self.timer = QTimer(self)
        self.timer.setInterval(self.policy.interval_ms)
        self.timer.timeout.connect(self.autosave)
        self.viewer_session = get_session(napari_viewer)
        self._build_ui()
        self._close_filter: Any = None
        self.viewer.layers.events.inserted.connect(self._refresh_sources)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self._refresh_sources()
        self._check_draft()
        self._update_state()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        self.store_row = StoreRow(
            self.open_store,
            button_text="Open / create",
            placeholder="project.zarr (opened, or created if new)",
        )
        self.path_edit = self.store_row.path_edit
        self.browse_button = self.store_row.browse_button
        self.open_button = self.store_row.open_button
        self.store_label = QLabel("No store open.")
        self.store_label.setWordWrap(True)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("Image of the store to annotate")
        self.id_edit = QLineEdit()
        self.id_edit.setPlaceholderText("image id (default: the layer name)")
        self.add_button = QPushButton("Add current image layer")
        self.rater_row = RaterRow()
        self.rater_combo = self.rater_row.rater_combo
        self.role_combo = self.rater_row.role_combo
        self.blind_check = QCheckBox("blind: hide other raters until I have saved")
        self.blind_check.setChecked(True)
        self.rater_button = QPushButton("Sign in")
        self.start_combo = QComboBox()
        self.start_button = QPushButton("Start editing")
        self.draft_label = QLabel("")
        self.draft_label.setWordWrap(True)
        self.recover_button = QPushButton("Recover draft")
        self.discard_button = QPushButton("Discard draft")
        self.tools_label = QLabel("")
        self.note_edit = QLineEdit()
        self.note_edit.setPlaceholderText("note (optional)")
        self.save_button = QPushButton("Save version")
        self.autosave_check = QCheckBox("autosave every")
        self.autosave_check.setChecked(True)
        self.autosave_spin = QDoubleSpinBox()
        self.autosave_spin.setRange(0.1, 120.0)
        self.autosave_spin.setSuffix(" min")
        self.autosave_spin.setValue(self.policy.interval_s / 60)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(list(_TREE_COLUMNS))
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.load_button = QPushButton("Load selected as layer")
        self.show_button = QPushButton("Show raters' latest")
        self.agree_button = QPushButton("Compute agreement")
        self.dice_table = QTableWidget(0, 0)
        self.dice_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.dice_table.setToolTip("Pairwise Dice between the raters' latest versions")
        self.agree_label = QLabel("")
        self.agree_label.setWordWrap(True)

        store_box = QGroupBox("Project store")
        sl = QVBoxLayout(store_box)
        sl.addWidget(self.store_row)
        sl.addWidget(self.store_label)
        image_box = QGroupBox("Image")
        il = QFormLayout(image_box)
        il.addRow("image", self.image_combo)
        il.addRow(self.id_edit, self.add_button)
        rater_box = QGroupBox("Rater")
        rl = QFormLayout(rater_box)
        rl.addRow("rater", self.rater_combo)
        rl.addRow("role", self.role_combo)
        rl.addRow(self.blind_check)
        rl.addRow(self.rater_button)
        edit_box = QGroupBox("Edit")
        el = QFormLayout(edit_box)
        el.addRow("start from", self.start_combo)
        el.addRow(self.start_button)
        drafts = QHBoxLayout()
        drafts.addWidget(self.recover_button)
        drafts.addWidget(self.discard_button)
        el.addRow(self.draft_label)
        el.addRow(drafts)
        el.addRow("tools used", self.tools_label)
        el.addRow("note", self.note_edit)
        auto = QHBoxLayout()
        auto.addWidget(self.autosave_check)
        auto.addWidget(self.autosave_spin)
        el.addRow(auto)
        el.addRow(self.save_button)
        versions_box = QGroupBox("Versions")
        vl = QVBoxLayout(versions_box)
        vl.addWidget(self.tree)
        buttons = QHBoxLayout()
        buttons.addWidget(self.load_button)
        buttons.addWidget(self.show_button)
        vl.addLayout(buttons)
        agree_box = QGroupBox("Agreement between raters")
        al = QVBoxLayout(agree_box)
        al.addWidget(self.agree_button)
        al.addWidget(self.dice_table)
        al.addWidget(self.agree_label)
        layout = scroll_layout(self)
        self._boxes = (store_box, image_box, rater_box, edit_box, versions_box, agree_box)
        for box in self._boxes:
            layout.addWidget(box)
        layout.addStretch(1)

        self.image_combo.activated.connect(
            lambda _: self.select_image(self.image_combo.currentText())
        )
        self.add_button.clicked.connect(lambda: self.add_image_layer())
        self.rater_button.clicked.connect(
            lambda: self.set_rater(self.rater_row.rater, self.rater_row.role)
        )
        self.blind_check.toggled.connect(lambda _: self._after_identity_change())
        self.start_button.clicked.connect(
            lambda: self.start_editing(*(self.start_combo.currentData() or ("empty", None)))
        )
        self.recover_button.clicked.connect(lambda: self.recover_draft())
        self.discard_button.clicked.connect(lambda: self.discard_draft())
        self.save_button.clicked.connect(lambda: self.save())
        self.autosave_check.toggled.connect(self._on_autosave_toggled)
        self.autosave_spin.valueChanged.connect(lambda v: self.set_autosave_interval(60 * v))
        self.load_button.clicked.connect(lambda: self.load_selected())
        self.tree.itemDoubleClicked.connect(lambda *_: self.load_selected())
        self.show_button.clicked.connect(lambda: self.show_raters())
        self.agree_button.clicked.connect(lambda: self.compute_agreement())

    @property
    def blind(self) -> bool:
        """Whether blind mode is on."""
        return self.blind_check.isChecked()

    # ------------------------------------------------------------------ store workers
    @property
    def busy(self) -> bool:
        """Whether a store worker (save, autosave, agreement, loading) is running."""
        return self.worker is not None

    def _run_io(
        self,
        fn: Callable[[], Any],
        done: Callable[[Any], Any],
        *,
        action: str,
        button: Any = None,
        text: str = "Working…",
        failed: Callable[[BaseException], Any] | None = None,
        quiet: bool = False,
    ) -> Any:
        """Run ``fn`` (store I/O, no Qt) in a worker, then ``done(result)`` on the GUI thread.

        The panel's controls are disabled meanwhile and ``button`` shows ``text`` (not for a
        ``quiet`` one: an autosave); errors become notifications. A running autosave is waited
        for. Returns the worker, or None (with a notification) if another action runs.
        """
        if self.worker is not None and self._quiet:
            self.wait()  # an autosave: short, and its draft must not land after this save
        if self.worker is not None:
            show_warning("probseg: the panel is still saving or reading; wait for it to finish")
            return None
        self._painted_while_busy = False
        self._quiet = quiet
        if button is not None:
            self._busy = (button, button.text())
            button.setText(text)
        for box in () if quiet else self._boxes:
            box.setEnabled(False)
        self.worker = start_io(
            fn, action=action, done=done, finished=self._on_io_finished, failed=failed
        )
        return self.worker

    def _on_io_finished(self) -> None:
        self.worker = None
        if self._busy is not None:
            button, text = self._busy
            button.setText(text)
            self._busy = None
        for box in self._boxes:
            box.setEnabled(True)
        self._update_state()
        if self._saved_outcome is not None:  # after the worker ended: listeners may start more
            (outcome,) = self._saved_outcome
            self._saved_outcome = None
            self.saved.emit(outcome)

    def wait(self, timeout_ms: int = _CLOSE_WAIT_MS) -> bool:
        """Process events until the running store worker ended; False if it still runs."""
        from qtpy.QtCore import QCoreApplication, QElapsedTimer, QEventLoop

        clock = QElapsedTimer()
        clock.start()
        while self.worker is not None and clock.elapsed() < timeout_ms:
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        return self.worker is None

    def _update_state(self) -> None:
        has_store = self.store is not None
        ready = has_store and self.image_id is not None and self.rater is not None
        self.add_button.setEnabled(has_store)
        self.start_button.setEnabled(bool(ready))
        self.save_button.setEnabled(self.session is not None)
        self.agree_button.setEnabled(bool(ready))
        tools = ", ".join(self.session.tools) if self.session else ""
        self.tools_label.setText(tools or "-")

    # ------------------------------------------------------------------ store and image
    @notify_errors("opening the store")
    def open_store(self, path: str | Path) -> ProjectStore | None:
        """Open the project store at ``path``, creating it if the folder is new or empty."""
        text = str(path).strip()
        if not text:
            raise ValueError("path: choose a folder for the project store")
        self._end_session()
        target = Path(text).expanduser()
        if (target / "zarr.json").exists():
            store = ProjectStore.open(target)
            verb = "opened"
        else:
            store = ProjectStore.create(target)
            verb = "created"
        self.store, self.image_id = store, None
        self.viewer_session.set_store(store)
        self.path_edit.setText(str(target))
        self._refresh_images()
        n = self._show_store_label(verb)
        show_info(f"probseg: {verb} project store {target} ({n} images)")
        if n:
            self.select_image(store.image_ids()[0])
        self._update_state()
        return store

    def _show_store_label(self, verb: str = "open:") -> int:
        """Say which store is open and how many images it holds; return that number."""
        if self.store is None:
            self.store_label.setText("No store open.")
            return 0
        n = len(self.store.image_ids())
        self.store_label.setText(f"{verb} {html.escape(str(self.store.path))}: {n} image(s)")
        return n

    def _refresh_images(self) -> None:
        self.image_combo.clear()
        if self.store is not None:
            self.image_combo.addItems(self.store.image_ids())
            if self.image_id:
                self.image_combo.setCurrentText(self.image_id)

    def _require_store(self) -> ProjectStore:
        if self.store is None:
            raise ValueError("store: open or create a project store first")
        return self.store

    @notify_errors("adding the image")
    def add_image_layer(self, layer: Any = None, image_id: str | None = None) -> str | None:
        """Add an image layer (default: the selected or first image layer) to the store."""
        store = self._require_store()
        if layer is None:
            active = self.viewer.layers.selection.active
            images = [lay for lay in self.viewer.layers if is_source_image(lay)]
            layer = active if is_source_image(active) else (images[0] if images else None)
        if layer is None:
            raise ValueError("layer: no image layer in the viewer")
        if getattr(layer, "rgb", False) or getattr(layer, "multiscale", False):
            raise ValueError(f"layer: {layer.name!r} is RGB or multiscale; add a 2D/3D grey image")
        text = image_id if image_id is not None else self.id_edit.text().strip()
        image_id = (
            validate_identifier(text, "image_id") if text else sanitize_identifier(layer.name)
        )
        data = np.asarray(layer.data)
        if data.ndim not in (2, 3):
            raise ValueError(f"layer: expected a 2D or 3D image, got {data.ndim} dimensions")
        scale = tuple(float(s) for s in layer.scale[-data.ndim :])
        store.add_image(data, image_id=image_id, scale=scale, metadata={"layer": str(layer.name)})
        layer.metadata.setdefault("probseg", {}).update(
            what="store-image", store=str(store.path), image_id=image_id
        )
        show_info(f"probseg: added {layer.name!r} to the store as {image_id!r}")
        self._refresh_images()
        self._show_store_label()
        self.select_image(image_id)
        return image_id

    def _image_layer(self, image_id: str) -> Any:
        for layer in self.viewer.layers:
            meta = layer.metadata.get("probseg", {})
            if meta.get("what") == "store-image" and meta.get("image_id") == image_id:
                return layer
        return None

    @notify_errors("opening the image")
    def select_image(self, image_id: str) -> bool:
        """Make ``image_id`` the current image (shown in the viewer if it is not yet).

        The image is current at once (editing can start: only its shape is needed); if it is not
        in the viewer yet, its voxels are read in a quiet worker (the panel stays usable) and the
        layer is added under the edited layer when they arrive.
        """
        store = self._require_store()
        store.image_info(validate_identifier(image_id, "image_id"))
        if image_id != self.image_id:
            self._end_session(reason=f"you switched to image {image_id!r}")
        self.image_id = image_id
        self.image_combo.setCurrentText(image_id)
        layer = self._image_layer(image_id)
        if layer is None:
            if self.edit_layer is None:  # nothing stays active over the image to come
                self.viewer.layers.selection.active = None
            self._run_io(
                lambda: image_layer_data(store, image_id),
                lambda item: self._show_image(store, image_id, item),
                action="opening the image",
                quiet=True,
            )
        elif layer in self.viewer.layers:
            self.viewer.layers.selection.active = layer
        self._after_identity_change()
        return True

    def _show_image(self, store: ProjectStore, image_id: str, item: Any) -> None:
        if self.store is not store or self.image_id != image_id:
            return  # another image was chosen meanwhile
        if self._image_layer(image_id) is not None:
            return
        edit = self.edit_layer
        below = self.viewer.layers.index(edit) if edit in self.viewer.layers else None
        layer = self._add_layer(item, index=below)  # never over the layer being painted
        self.viewer.layers.selection.active = layer if edit is None else edit

    # ------------------------------------------------------------------ rater and blind mode
    @notify_errors("choosing the rater")
    def set_rater(self, rater: str, role: str | None = None) -> bool:
        """Sign in as ``rater`` (a validated id) with ``role`` (expert/resident/trainee/other)."""
        rater = validate_identifier(str(rater).strip(), "rater")
        role = role or self.role_combo.currentText()
        if role not in ROLES:
            raise ValueError(f"role: expected one of {', '.join(ROLES)}, got {role!r}")
        if rater != self.rater:
            self._end_session(reason=f"{rater} signed in")
        self.rater, self.role = rater, role
        self.viewer_session.rater = rater
        self.role_combo.setCurrentText(role)
        self.rater_row.show(rater)
        self._after_identity_change()
        return True

    def _own_versions(self) -> int:
        if self.store is None or self.image_id is None or self.rater is None:
            return 0
        return len(self.store.history(self.image_id, self.rater))

    def may_see_others(self) -> bool:
        """Whether the current rater may see other raters' work on the current image."""
        return can_see_others(blind=self.blind, own_versions=self._own_versions())

    def _after_identity_change(self) -> None:
        if self.store is None or self.image_id is None:
            self._update_state()
            return
        try:
            self.rater_row.remember(*self.store.raters(self.image_id))
            self._apply_blind()
            self.refresh_versions()
            self._check_draft()
        except StoreError as exc:
            show_error(f"probseg: reading {self.image_id!r} failed: {exc}")
        self._refresh_sources()
        self._update_state()

    def _apply_blind(self) -> None:
        """Remove layers showing other raters' work of this image while the rater is blind."""
        if self.may_see_others():
            return
        for layer in list(self.viewer.layers):
            action = blind_action(layer.metadata, self.image_id, self.rater)
            if action == "remove":
                self.viewer.layers.remove(layer)
            elif action == "hide" and layer is not self.edit_layer:
                layer.visible = False  # another rater's unsaved work: hidden, never dropped
        self.dice_table.setRowCount(0)
        self.dice_table.setColumnCount(0)
        self.agree_label.setText("")

    # ------------------------------------------------------------------ editing
    def _refresh_sources(self, *_: Any) -> None:
        current = self.start_combo.currentData()
        self.start_combo.clear()
        self.start_combo.addItem("empty", ("empty", None))
        self.start_combo.addItem("consensus of saved raters", ("consensus", None))
        self.start_combo.addItem("my latest version", ("version", None))
        for layer in self.viewer.layers:
            if is_hypothesis_layer_metadata(layer.metadata):
                origin = layer.metadata["probseg"].get("origin", "hypothesis")
                self.start_combo.addItem(f"{layer.name} ({origin})", ("hypothesis", layer.name))
        index = self.start_combo.findData(current) if current else -1
        self.start_combo.setCurrentIndex(max(index, 0))

    def _check_draft(self) -> None:
        store, has = self.store, False
        if store is not None and self.image_id and self.rater:
            has = self.rater in store.draft_raters(self.image_id)
        self.draft_available = has and self.session is None
        self.draft_label.setText(
            "An autosaved draft of your unsaved work exists: recover it, or discard it."
            if self.draft_available
            else ""
        )
        self.recover_button.setVisible(self.draft_available)
        self.discard_button.setVisible(self.draft_available)
        if self.draft_available:
            show_info(
                f"probseg: {self.rater} has an autosaved draft of {self.image_id!r} "
                "(unsaved work from an earlier session): use 'Recover draft' or 'Discard draft'."
            )

    def _require_identity(self) -> tuple[ProjectStore, str, str]:
        store = self._require_store()
        if self.image_id is None:
            raise ValueError("image: choose or add an image first")
        if self.rater is None:
            raise ValueError("rater: sign in with a rater id first")
        return store, self.image_id, self.rater

    @notify_errors("starting the edit")
    def start_editing(self, origin: str = "empty", source: Any = None) -> Any:
        """Start editing a Labels layer: ``origin`` is ``"empty"``, ``"consensus"``,
        ``"version"`` (my latest) or ``"hypothesis"`` (``source``: the review panel's
        "Use as annotation" layer or its name; default the newest such layer)."""
        store, image_id, rater = self._require_identity()
        if self.session is not None and self.session.dirty:
            raise ValueError("edit: save the current edit first (or remove its layer)")
        if rater in store.draft_raters(image_id):
            raise ValueError(
                "draft: you have an autosaved draft of this image (unsaved work): "
                "save or recover it, or discard it first"
            )
        layer = self._hypothesis_layer(source) if origin == "hypothesis" else None
        hyp = None if layer is None else (layer.data, layer.metadata, layer.name)
        data, kwargs = edit_start(store, image_id, rater, origin, blind=self.blind, hypothesis=hyp)
        self._end_session()
        session = EditSession(
            image_id=image_id,
            rater=rater,
            role=self.role,
            origin=origin,
            **kwargs,
        )
        if layer is None:
            layer = self._new_edit_layer(data, store.image_info(image_id)["scale"])
        self._begin(session, layer)
        show_info(f"probseg: editing {image_id!r} as {rater} (from {origin}); save when done.")
        return layer

    def _hypothesis_layer(self, source: Any) -> Any:
        if source is not None and not isinstance(source, str):
            return source
        for layer in reversed(list(self.viewer.layers)):
            if is_hypothesis_layer_metadata(layer.metadata) and source in (None, layer.name):
                return layer
        raise ValueError("source: no 'Use as annotation' layer of the review panel in the viewer")

    def _new_edit_layer(self, data: np.ndarray, scale: tuple[float, ...]) -> Any:
        from napari.layers import Labels

        arr = np.array(data, dtype=data.dtype if data.dtype.itemsize > 1 else np.uint8, copy=True)
        meta = {
            "probseg": {
                "what": "store-edit",
                "store": str(self.store.path),
                "image_id": self.image_id,
                "rater": self.rater,
            }
        }
        layer = Labels(
            arr, name=f"{self.image_id}{SEP}{self.rater} (editing)", scale=scale, metadata=meta
        )
        self.viewer.layers.append(layer)
        return layer

    def _begin(self, session: EditSession, layer: Any) -> None:
        # The layer now holds this rater's work on this store image (also a "Use as annotation"
        # layer edited in place): blind mode hides it from the next rater.
        layer.metadata.setdefault("probseg", {}).update(
            what="store-edit",
            store=str(self.store.path),
            image_id=session.image_id,
            rater=session.rater,
        )
        layer.visible = True
        self.session, self.edit_layer = session, layer
        layer.events.paint.connect(self._on_paint)
        layer.events.data.connect(self._on_data)
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"
        self.timer.setInterval(self.policy.interval_ms)
        if self.policy.enabled:
            self.timer.start()
        self._check_draft()
        self._update_state()

    def _end_session(self, *, reason: str | None = None) -> bool:
        """Stop editing; unsaved changes are first written as a draft (never dropped).

        The edit layer leaves paint mode (it must not keep painting over another image); with a
        ``reason`` a notification says that editing stopped and whether a draft was kept.
        Returns True if a draft was written.
        """
        session, layer = self.session, self.edit_layer
        kept = False
        if session is not None and session.dirty:
            kept = self.autosave(force=True) is not None
        if layer is not None:
            layer.events.paint.disconnect(self._on_paint)
            layer.events.data.disconnect(self._on_data)
            if layer in self.viewer.layers and layer.mode != "pan_zoom":
                layer.mode = "pan_zoom"
        self.session, self.edit_layer = None, None
        self.timer.stop()
        if session is not None and reason:
            what = f"{session.image_id!r} as {session.rater}"
            if kept:
                show_warning(
                    f"probseg: stopped editing {what} ({reason}); your unsaved changes are kept "
                    "as a draft: 'Recover draft' brings them back."
                )
            else:
                show_info(f"probseg: stopped editing {what} ({reason}); nothing was unsaved.")
        return kept

    def showEvent(self, event: Any) -> None:
        # Once docked, watch the main window: its close writes a draft of unsaved work.
        window = self.window()
        if window is not self and getattr(self, "_close_filter", None) is None:
            self._close_filter = _CloseFilter(self.close_edit)
            window.installEventFilter(self._close_filter)
        super().showEvent(event)

    def close_edit(self) -> bool:
        """End the edit session because the panel or viewer closes; True if a draft was kept.

        A save still running is waited for first (at most ``_CLOSE_WAIT_MS``), so that its
        outcome is known and unsaved work goes to a draft, never lost.
        """
        self.wait()
        return self._end_session(reason="the viewer is closing")

    def closeEvent(self, event: Any) -> None:
        self.close_edit()
        super().closeEvent(event)

    def _on_paint(self, event: Any = None) -> None:
        if self.session is not None and self.edit_layer is not None:
            self.session.record_paint(self.edit_layer.mode)
            self._painted_while_busy = self.busy
            self._update_state()

    def _on_data(self, event: Any = None) -> None:
        if self.session is not None:
            self.session.dirty = True
            self._painted_while_busy = self.busy

    def _on_layer_removed(self, event: Any) -> None:
        if event.value is self.edit_layer and self.session is not None:
            if self.session.dirty:
                self.autosave(layer=event.value, force=True)
                show_warning("probseg: the edited layer was removed; its work is kept as a draft")
            self._end_session()
            self._check_draft()
        self._refresh_sources()
        self._update_state()

    # ------------------------------------------------------------------ saving
    @notify_errors("saving")
    def save(self, note: str | None = None) -> Any:
        """Commit the edited layer as a new version of the rater's annotation, in a worker.

        The layer's labels are copied on the GUI thread; the worker checks whether anything
        changed since the rater's latest version and commits (:func:`save_or_keep`). If the commit
        fails the layer stays, and the work is written as a draft (or, if the store cannot be
        written at all, to a recovery file); a notification says where. When the worker ends,
        :attr:`last_outcome` holds the ``SaveOutcome`` (None: nothing changed) and :attr:`saved`
        is emitted.

        Returns
        -------
        The started worker, or None (with a notification) when no save started.
        """
        store, _, _ = self._require_identity()
        if self.session is None or self.edit_layer is None:
            raise ValueError("edit: start editing first")
        note = self.note_edit.text() if note is None else note
        mask = np.array(self.edit_layer.data, copy=True)
        # The worker works on a copy: painting during the save keeps marking the live session.
        work_session = copy.copy(self.session)
        work_session.tools = list(self.session.tools)
        live, recovery_dir = self.session, self.recovery_dir

        def work() -> SaveOutcome | None:
            if is_unchanged(store, work_session, mask):
                return None
            return save_or_keep(store, work_session, mask, note=note, recovery_dir=recovery_dir)

        def failed(exc: BaseException) -> None:  # an unexpected error: keep the work as a draft
            self.last_outcome = SaveOutcome(error=str(exc))
            if self.session is live and self.autosave(force=True) is not None:
                show_warning("probseg: your work is kept in the layer and as an autosaved draft")
            self._saved_outcome = (self.last_outcome,)

        self.last_outcome = None
        return self._run_io(
            work,
            lambda outcome: self._on_saved(store, live, outcome),
            action="saving",
            button=self.save_button,
            text="Saving…",
            failed=failed,
        )

    def _on_saved(
        self, store: ProjectStore, live: EditSession, outcome: SaveOutcome | None
    ) -> None:
        if outcome is None:
            show_info(
                f"probseg: nothing changed since version {live.parent_version}; "
                "no new version saved"
            )
            self._saved_outcome = (None,)
            return
        self.last_outcome = outcome
        painted = self._painted_while_busy
        if outcome.committed:
            live.committed(outcome.version)
        elif outcome.draft is not None:
            live.dirty = False
        if painted:
            live.dirty = True  # painted while saving: not in the saved version
        severity, message = outcome.message()
        (show_info if severity == "info" else show_error)(message)
        if outcome.committed:
            v = outcome.version
            self.note_edit.clear()
            was_blind = self.blind and v.version == 1
            if self.store is store:
                self._after_identity_change()
            if was_blind and len(store.raters(v.image_id)) > 1:
                show_info("probseg: other raters' annotations of this image are now available.")
        self._update_state()
        self._saved_outcome = (outcome,)

    def set_autosave_interval(self, seconds: float) -> None:
        """Set the autosave interval in seconds."""
        self.policy.set_interval(seconds)
        self.timer.setInterval(self.policy.interval_ms)

    def _on_autosave_toggled(self, on: bool) -> None:
        self.policy.enabled = bool(on)
        if on and self.session is not None:
            self.timer.start()
        else:
            self.timer.stop()

    def autosave(self, layer: Any = None, *, force: bool = False) -> Any:
        """Write the edited layer as the rater's draft if it has unsaved changes.

        A timer tick writes it in a worker (returned; skipped while another store action runs).
        ``force`` writes it now, on the GUI thread, even with autosave turned off: editing ends
        (image switch, sign-in, closing), and work must never be dropped. Returns the draft
        (forced), the worker (tick) or None.
        """
        layer = layer if layer is not None else self.edit_layer
        if self.store is None or layer is None or self.session is None:
            return None
        if not (self.session.dirty if force else self.policy.should_save(self.session)):
            return None
        store, session, note = self.store, self.session, self.note_edit.text()
        mask = np.array(layer.data, copy=True)
        extra = session.draft_extra(note)

        def write() -> Any:
            return store.save_draft(
                session.image_id,
                session.rater,
                mask,
                based_on=session.parent_version,
                note=note,
                extra=extra,
            )

        if not force:
            if self.busy:
                return None
            return self._run_io(
                write, lambda draft: self._on_drafted(session, draft), action="autosave",
                quiet=True,
            )  # fmt: skip
        try:
            draft = write()
        except (StoreError, OSError, ValueError) as exc:
            show_warning(f"probseg: autosave failed ({exc}); keep the layer open and save")
            return None
        session.dirty = False
        self.policy.saved(draft)
        return draft

    def _on_drafted(self, session: EditSession, draft: Any) -> None:
        if not self._painted_while_busy:
            session.dirty = False
        self.policy.saved(draft)

    @notify_errors("recovering the draft")
    def recover_draft(self) -> Any:
        """Reopen the rater's autosaved draft of the current image as the edited layer."""
        store, image_id, rater = self._require_identity()
        if self.session is not None:
            raise ValueError("draft: you are editing this image; save the current edit first")
        found = store.load_draft(image_id, rater)
        if found is None:
            raise ValueError("draft: there is no draft to recover")
        mask, draft = found
        self._end_session()
        session = EditSession.from_draft(draft, role=self.role)
        layer = self._new_edit_layer(mask, store.image_info(image_id)["scale"])
        session.dirty = False  # identical to the stored draft
        self._begin(session, layer)
        show_info(f"probseg: recovered the draft saved {draft.saved} ({', '.join(session.tools)})")
        return layer

    @notify_errors("discarding the draft")
    def discard_draft(self) -> bool:
        """Delete the rater's autosaved draft of the current image."""
        store, image_id, rater = self._require_identity()
        done = store.discard_draft(image_id, rater)
        self._check_draft()
        return done


class _CloseFilter(QObject):
    """Calls ``on_close`` when the watched window receives a close event (lets it through)."""

    def __init__(self, on_close: Callable[[], Any]) -> None:
        super().__init__()
        self._on_close = on_close

    def eventFilter(self, obj: Any, event: Any) -> bool:
        if event.type() == QEvent.Type.Close:
            self._on_close()
        return False
