"""Scrollable panel content, so that every dock widget fits a 1280×800 screen."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

#: Narrowest panel (napari gives a dock its widget's minimum width): rows of buttons and tables
#: stay readable without sideways scrolling.
MIN_WIDTH = 360


def scroll_layout(widget: QWidget, *, min_width: int = MIN_WIDTH) -> QVBoxLayout:
    """Give ``widget`` a vertical scroll area and return the layout of its content.

    The panel then asks napari for little height (its dock can be shorter than its content);
    nothing is clipped, the content scrolls instead.
    """
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    # As needed: a panel narrower than its content scrolls sideways rather than cutting it off.
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    content = QWidget()
    area.setMinimumWidth(min_width + area.verticalScrollBar().sizeHint().width() + 4)
    area.setWidget(content)
    outer.addWidget(area)
    widget.scroll_area = area  # for tests and screenshots
    return QVBoxLayout(content)


def content_height(widget: Any) -> int:
    """Height the panel's content needs (its size hint), whether or not it scrolls."""
    area = getattr(widget, "scroll_area", None)
    inner = area.widget() if area is not None else widget
    return int(inner.sizeHint().height())
