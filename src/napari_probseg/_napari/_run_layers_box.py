"""The review panel's "Layers" box: every layer of the run (shown or not yet created) with a check
box, and a legend (colour bar, value range and units) for each uncertainty map.

Hidden layers of a run are only created when first shown here (creating a napari layer costs
its controls and GPU visual, tens to hundreds of milliseconds of frozen viewer each).
"""

from __future__ import annotations

import html
import math
from typing import Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_probseg._napari._layers import MAP_COLORMAPS
from napari_probseg._napari._session import RunRecord, run_layer_metadata, show_layer

#: Order of the run's layers in the list (then the distinct hypotheses, by number).
ORDER = (
    "hypotheses",
    "contours",
    "highlight",
    "consensus",
    "envelope",
    "regions",
    "mean_probability",
    "predictive_entropy",
    "mutual_information",
    "expected_entropy",
)
_BAR_W, _BAR_H = 120, 12


def _order_key(what: str) -> tuple[int, str]:
    if what in ORDER:
        return ORDER.index(what), ""
    if what.startswith("hypothesis:"):
        return ORDER.index("consensus"), what
    return len(ORDER), what


def colorbar_pixmap(colormap: str, width: int = _BAR_W, height: int = _BAR_H) -> QPixmap:
    """A horizontal colour bar of a napari colormap (low values on the left)."""
    from napari.utils.colormaps import ensure_colormap

    rgba = ensure_colormap(colormap).map(np.linspace(0.0, 1.0, width))
    row = (np.clip(rgba, 0, 1) * 255).astype(np.uint8)
    img = np.ascontiguousarray(np.repeat(row[None], height, axis=0))
    qimg = QImage(img.data, width, height, 4 * width, QImage.Format.Format_RGBA8888)
    return QPixmap.fromImage(qimg.copy())


def map_legend_text(n_classes: int, units: str = "nats") -> str:
    """Value range of an entropy map: 0 to ln K (the most a K-class prediction can have)."""
    ln_k = math.log(max(n_classes, 2))
    return f"0 – {ln_k:.3g} {units} (max ln {max(n_classes, 2)})"


class RunLayersBox(QGroupBox):
    """Check boxes for a run's layers, and a legend for its uncertainty maps."""

    def __init__(self, viewer: Any) -> None:
        super().__init__("Layers of this run")
        self.viewer = viewer
        self.record: RunRecord | None = None
        self.list = QListWidget()
        self.list.setToolTip("Tick to show a layer (hidden layers are created when first shown)")
        self.legend = QWidget()
        self.legend_grid = QGridLayout(self.legend)
        self.legend_grid.setContentsMargins(0, 0, 0, 0)
        layout = QVBoxLayout(self)
        layout.addWidget(self.list)
        layout.addWidget(QLabel("<b>Legend</b> (uncertainty maps, colour = value):"))
        layout.addWidget(self.legend)
        self.list.itemChanged.connect(self._on_item_changed)

    def show_record(self, record: RunRecord) -> None:
        """List the layers of ``record`` (ticked = visible) and draw the maps' legend."""
        self.record = record
        metas = run_layer_metadata(record)
        self.list.blockSignals(True)
        self.list.clear()
        for what in sorted(metas, key=_order_key):
            layer = record.layers.get(what)
            item = QListWidgetItem(self._label(what, metas[what]))
            item.setData(Qt.ItemDataRole.UserRole, what)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            shown = layer is not None and layer in self.viewer.layers and layer.visible
            item.setCheckState(Qt.CheckState.Checked if shown else Qt.CheckState.Unchecked)
            item.setToolTip(self._tooltip(record, what, metas[what]))
            self.list.addItem(item)
        self.list.blockSignals(False)
        rows = min(self.list.count(), 8)
        self.list.setFixedHeight(max(60, rows * (self.list.sizeHintForRow(0) or 18) + 6))
        self._fill_legend(record, metas)

    def _label(self, what: str, meta: dict) -> str:
        layer = self.record.layers.get(what) if self.record else None
        if layer is not None:
            return str(layer.name)
        item = self.record.pending.get(what) if self.record else None
        if isinstance(item, tuple):
            return str(item[1].get("name", what))
        return str(getattr(item, "name", what))

    def _tooltip(self, record: RunRecord, what: str, meta: dict) -> str:
        parts = [f"image: {record.image_name}", f"run: {record.result.method}, "
                 f"N = {record.result.n_samples}, seed {record.output.request.seed}"]  # fmt: skip
        if meta.get("meaning"):
            parts.append(f"meaning: {meta['meaning']}")
        if meta.get("units"):
            parts.append(f"units: {meta['units']}")
        return "\n".join(parts)

    def _fill_legend(self, record: RunRecord, metas: dict[str, dict]) -> None:
        while self.legend_grid.count():
            child = self.legend_grid.takeAt(0).widget()
            if child is not None:
                child.deleteLater()
        n_classes = len(record.result.class_names)
        row = 0
        for what, colormap in MAP_COLORMAPS.items():
            if what not in metas:
                continue
            name = self._label(what, metas[what]).split(" · ")[-1]
            bar = QLabel()
            bar.setPixmap(colorbar_pixmap(colormap))
            units = metas[what].get("units") or "nats"
            # Name on its own row, bar and range below: fits a narrow panel.
            self.legend_grid.addWidget(QLabel(html.escape(name)), row, 0, 1, 2)
            self.legend_grid.addWidget(bar, row + 1, 0)
            self.legend_grid.addWidget(QLabel(map_legend_text(n_classes, units)), row + 1, 1)
            row += 2
        if "mean_probability" in metas:
            bar = QLabel()
            bar.setPixmap(colorbar_pixmap("viridis"))
            self.legend_grid.addWidget(QLabel("foreground probability"), row, 0, 1, 2)
            self.legend_grid.addWidget(bar, row + 1, 0)
            self.legend_grid.addWidget(QLabel("0 – 1 (no units)"), row + 1, 1)

    def legend_texts(self) -> list[str]:
        """The legend's text cells, row by row (for tests and reports)."""
        out = []
        for i in range(self.legend_grid.count()):
            widget = self.legend_grid.itemAt(i).widget()
            if isinstance(widget, QLabel) and widget.text():
                out.append(widget.text())
        return out

    def _on_item_changed(self, item: QListWidgetItem) -> None:
        if self.record is None:
            return
        what = item.data(Qt.ItemDataRole.UserRole)
        checked = item.checkState() == Qt.CheckState.Checked
        layer = show_layer(self.viewer, self.record, what, visible=checked)
        if layer is not None and checked:
            item.setText(str(layer.name))
