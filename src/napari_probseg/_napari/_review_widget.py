"""Review panel: image-level summary, ranked regions (table, "." / "," keys), highlight share, and
"use as annotation".

Render-only: the summary, its verdict and warnings are the dict of ``engine.summarize`` (formatted by
``_summary``), the same the CLI prints; navigation
from ``_regions_nav``, annotation layers from ``_layers.annotation_layer``.
"""

from __future__ import annotations

import html
from typing import Any

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_probseg._napari._layers import annotation_layer, unique_name
from napari_probseg._napari._regions_nav import go_to_region
from napari_probseg._napari._run_layers_box import RunLayersBox
from napari_probseg._napari._scroll import scroll_layout
from napari_probseg._napari._session import (
    RunRecord,
    get_session,
    run_layer_metadata,
    set_highlight,
)
from napari_probseg._napari._summary import (
    format_value,
    summary_for,
    summary_rows,
    verdict_text,
    warning_lines,
)

_COLUMNS = ("rank", "score", "size", "term")
#: Region keys. Not n / p: napari's Labels layer takes "p" (paint mode) while it is active, and an
#: active layer's keys win over the viewer's; no napari layer binds "." or ",".
NEXT_KEY, PREVIOUS_KEY = ".", ","


class ReviewWidget(QWidget):
    """Dock widget to review the newest run of a viewer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (injected by napari).
    """

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.record: RunRecord | None = None
        self.current_index = -1

        self.title = QLabel("No run yet: use the Run panel.")
        self.title.setWordWrap(True)
        self.sentence = QLabel("")
        self.sentence.setWordWrap(True)
        self.sentence.setStyleSheet("font-weight: bold;")
        self.warnings = QLabel("")
        self.warnings.setWordWrap(True)
        self.warnings.setStyleSheet("color: #e0a000;")
        self.warnings.setVisible(False)
        #: The summary dict shown (the one ``probseg predict --json`` prints for the same run).
        self.summary_data: dict | None = None
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)

        self.quantile_spin = QDoubleSpinBox()
        self.quantile_spin.setRange(0.1, 50.0)
        self.quantile_spin.setSingleStep(0.5)
        self.quantile_spin.setSuffix(" %")
        self.quantile_spin.setValue(5.0)
        self.quantile_spin.setToolTip("Share of the most uncertain voxels highlighted")

        self.table = QTableWidget(0, len(_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(_COLUMNS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.setToolTip(
            f"Most uncertain regions; select a row, or press {NEXT_KEY} (next) / "
            f"{PREVIOUS_KEY} (previous) in the viewer, in any layer mode"
        )
        self.prev_button = QPushButton(f"◀ previous ({PREVIOUS_KEY})")
        self.next_button = QPushButton(f"next ({NEXT_KEY}) ▶")

        self.source_combo = QComboBox()
        self.source_combo.setToolTip("Start the correction from this mask")
        self.annotate_button = QPushButton("Use as annotation")

        for label in (self.title, self.sentence, self.summary, self.warnings):
            # Take the panel's width and wrap, instead of widening the panel past the screen.
            label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
            label.setMinimumWidth(0)
        summary_box = QGroupBox("Image-level summary")
        cv = QVBoxLayout(summary_box)
        cv.addWidget(self.title)
        cv.addWidget(self.warnings)
        cv.addWidget(self.sentence)
        cv.addWidget(self.summary)
        self.layers_box = RunLayersBox(self.viewer)
        regions_box = QGroupBox("Most uncertain regions")
        rv = QVBoxLayout(regions_box)
        form = QFormLayout()
        form.addRow("highlight share", self.quantile_spin)
        rv.addLayout(form)
        self.table.setMinimumHeight(120)
        rv.addWidget(self.table)
        nav = QHBoxLayout()
        nav.addWidget(self.prev_button)
        nav.addWidget(self.next_button)
        rv.addLayout(nav)
        annot_box = QGroupBox("Correct")
        av = QHBoxLayout(annot_box)
        av.addWidget(self.source_combo, 1)
        av.addWidget(self.annotate_button)
        layout = scroll_layout(self)
        layout.addWidget(summary_box)
        layout.addWidget(regions_box)
        layout.addWidget(annot_box)
        layout.addWidget(self.layers_box)
        layout.addStretch(1)

        self.table.itemSelectionChanged.connect(self._on_selection)
        self.prev_button.clicked.connect(self.previous_region)
        self.next_button.clicked.connect(self.next_region)
        self.quantile_spin.editingFinished.connect(self._on_quantile)
        self.annotate_button.clicked.connect(lambda: self.use_as_annotation())
        self.viewer.bind_key(NEXT_KEY, self._key_next, overwrite=True)
        self.viewer.bind_key(PREVIOUS_KEY, self._key_previous, overwrite=True)
        session = get_session(self.viewer)
        session.changed.connect(self.show_record)
        if session.current is not None:
            self.show_record(session.current)

    # ------------------------------------------------------------------ display
    def show_record(self, record: RunRecord) -> None:
        """Show the summary, regions and annotation sources of a landed run."""
        self.record = record
        self.current_index = -1
        res = record.result
        self.title.setText(
            f"<b>{html.escape(record.image_name)}</b>: {html.escape(res.method)}, "
            f"N = {res.n_samples}, seed {record.output.request.seed}"
        )
        summary = self.summary_data = summary_for(record)
        lines = warning_lines(summary)
        self.warnings.setText("\n".join(f"⚠ {w}" for w in lines))
        self.warnings.setVisible(bool(lines))
        self.sentence.setText(verdict_text(summary))
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td align='right'>&nbsp;{html.escape(v)}</td></tr>"
            for k, v in summary_rows(summary)
        )
        self.summary.setText(f"<table width='100%'>{rows}</table>")
        self.quantile_spin.blockSignals(True)
        self.quantile_spin.setValue(100 * record.quantile)
        self.quantile_spin.blockSignals(False)
        self._fill_table()
        self._fill_sources()
        self.layers_box.show_record(record)

    def _fill_table(self) -> None:
        """The summary's ranked regions (the same list ``probseg predict --json`` prints)."""
        regions = (self.summary_data or {}).get("regions") or {}
        top = regions.get("top", [])
        term = regions.get("label", "")
        self.table.blockSignals(True)
        self.table.setRowCount(len(top))
        for i, region in enumerate(top):
            values = (str(region["rank"]), format_value(region["score"], 3), str(region["size"]))
            for j, value in enumerate((*values, term)):
                self.table.setItem(i, j, QTableWidgetItem(value))
        self.table.blockSignals(False)

    def _fill_sources(self) -> None:
        self.source_combo.clear()
        if self.record is None:
            return
        self.source_combo.addItem("consensus", ("consensus", None))
        for what, meta in run_layer_metadata(self.record).items():
            if what.startswith("hypothesis:"):
                share = meta.get("share")
                label = f"hypothesis {what.split(':')[1]}" + (
                    f" ({100 * share:.0f}%)" if share is not None else ""
                )
                self.source_combo.addItem(label, ("hypothesis", int(what.split(":")[1])))
        for i in range(self.record.result.n_samples):
            self.source_combo.addItem(f"sample {i}", ("sample", i))

    # ------------------------------------------------------------------ navigation
    def select_region(self, index: int) -> None:
        """Go to region ``index`` (0 = most uncertain) and select its row."""
        if self.record is None or not self.record.regions.get("rank"):
            return
        index = max(0, min(index, len(self.record.regions["rank"]) - 1))
        self.current_index = index
        go_to_region(self.viewer, self.record, index)
        self.table.blockSignals(True)
        self.table.selectRow(index)
        self.table.blockSignals(False)

    def next_region(self) -> None:
        """Go to the next (less uncertain) region."""
        self.select_region(self.current_index + 1)

    def previous_region(self) -> None:
        """Go to the previous (more uncertain) region."""
        self.select_region(max(self.current_index - 1, 0))

    def _key_next(self, viewer: Any) -> None:
        self.next_region()

    def _key_previous(self, viewer: Any) -> None:
        self.previous_region()

    def _on_selection(self) -> None:
        rows = {index.row() for index in self.table.selectedIndexes()}
        if rows:
            self.select_region(min(rows))

    def _on_quantile(self) -> None:
        if self.record is not None:
            set_highlight(self.record, self.quantile_spin.value() / 100.0)

    # ------------------------------------------------------------------ annotation
    def use_as_annotation(self, source: tuple[str, int | None] | None = None) -> Any:
        """Copy the consensus, a hypothesis or a sample into an editable Labels layer.

        Parameters
        ----------
        source : (kind, index), optional
            ``("consensus", None)``, ``("hypothesis", i)`` (1-based, as named) or
            ``("sample", i)``; default: the panel's choice.

        Returns
        -------
        napari.layers.Labels or None
        """
        from napari.layers import Layer

        if self.record is None:
            show_error("probseg: run a prediction first.")
            return None
        source = source or self.source_combo.currentData()
        try:
            data, kwargs, kind = annotation_layer(self.record, *source)
        except ValueError as exc:
            show_error(f"probseg: {exc}")
            return None
        # Who and which store image it is for: blind mode hides it from the next rater.
        meta = kwargs["metadata"]["probseg"]
        image_meta = self.record.image_layer.metadata.get("probseg") or {}
        for key in ("store", "image_id"):
            if image_meta.get(key) is not None:
                meta[key] = image_meta[key]
        if self.record.run_id is not None:  # saved to the store: a real source run
            meta["run_id"] = self.record.run_id
        rater = get_session(self.viewer).rater
        if rater is not None:
            meta["rater"] = rater
        kwargs["name"] = unique_name(
            kwargs["name"], self.record.image_name, {lay.name for lay in self.viewer.layers}
        )
        layer = Layer.create(data, kwargs, kind)
        self.viewer.layers.append(layer)
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"
        show_info(f"probseg: '{layer.name}' is ready to edit (from {source[0]}).")
        return layer
