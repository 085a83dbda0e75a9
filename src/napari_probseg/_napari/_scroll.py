"""Scrollable panel content, so that every dock widget fits a 1280×800 screen."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget


def scroll_layout(widget: QWidget, *, min_width: int = 0) -> QVBoxLayout:
    """Give ``widget`` a vertical scroll area and return the layout of its content.

    The panel then asks napari for little height (its dock can be shorter than its content);
    nothing is clipped, the content scrolls instead.
    """
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    content = QWidget()
    if min_width:
        content.setMinimumWidth(min_width)
    area.setWidget(content)
    outer.addWidget(area)
    widget.scroll_area = area  # for tests and screenshots
    return QVBoxLayout(content)


def content_height(widget: Any) -> int:
    """Height the panel's content needs (its size hint), whether or not it scrolls."""
    area = getattr(widget, "scroll_area", None)
    inner = area.widget() if area is not None else widget
    return int(inner.sizeHint().height())
