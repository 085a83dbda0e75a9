"""What the annotation and worklist panels share: the store and rater form rows, the error
notifications of their actions, and running store I/O in a napari thread worker.

- :class:`StoreRow`: a path field, "Browse…" and an open button on one row;
- :class:`RaterRow`: an editable rater id box and the role choice;
- :func:`notify_errors`: an action's store, file-system and argument errors become one error
  notification (never a traceback dialog), :func:`error_message` says what the notification says;
- :func:`start_io`: run a function in a thread worker, its errors reported the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from napari.utils.notifications import show_error
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget

from napari_probseg.store import (
    ROLES,
    InvalidIdentifierError,
    StoreCorruptionError,
    StoreError,
    StoreVersionError,
)

T = TypeVar("T")


def error_message(action: str, exc: BaseException) -> str:
    """The notification text of an action that failed with ``exc``.

    Parameters
    ----------
    action : str
        What was being done, e.g. ``"saving"``.
    exc : BaseException
        The error (a wrapped worker error is unwrapped to its cause).
    """
    if isinstance(exc, WorkerError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, InvalidIdentifierError | StoreVersionError):
        return f"probseg: {exc}"
    if isinstance(exc, StoreCorruptionError):
        return f"probseg: {action}: the store is damaged ({exc}); run `probseg store verify` on it"
    if isinstance(exc, StoreError | OSError | ValueError):
        return f"probseg: {action} failed: {exc}"
    return f"probseg: {action} failed: {type(exc).__name__}: {exc}"


def notify_errors(action: str) -> Callable[[Callable[..., T]], Callable[..., T | None]]:
    """Decorator: store, file-system and argument errors of a panel method become a notification
    (see :func:`error_message`) and the method returns None."""

    def wrap(fn: Callable[..., T]) -> Callable[..., T | None]:
        @functools.wraps(fn)
        def inner(self: Any, *args: Any, **kwargs: Any) -> T | None:
            try:
                return fn(self, *args, **kwargs)
            except (StoreError, OSError, ValueError) as exc:
                show_error(error_message(action, exc))
            return None

        return inner

    return wrap


class WorkerError(Exception):
    """Wraps a ``RuntimeError`` raised in a worker (superqt reads a RuntimeError as "worker
    deleted" and would then never report the end); ``__cause__`` holds it."""


def start_io(
    fn: Callable[[], T],
    *,
    action: str,
    done: Callable[[T], Any],
    finished: Callable[[], Any],
    failed: Callable[[BaseException], Any] | None = None,
) -> Any:
    """Run ``fn()`` in a napari thread worker and call ``done(result)`` on the GUI thread.

    Parameters
    ----------
    fn : callable
        The store I/O (no Qt, no layer access: it runs in another thread).
    action : str, keyword-only
        What it does, for the error notification.
    done : callable, keyword-only
        Called with the result on the GUI thread; its own errors become notifications too.
    finished : callable, keyword-only
        Called on the GUI thread once the worker ended (after ``done``, or after an error).
    failed : callable, keyword-only
        Called with the error after its notification (e.g. to say that a draft is kept).

    Returns
    -------
    The started worker (``napari.qt.threading.FunctionWorker``).
    """
    from napari.qt.threading import create_worker

    def guarded() -> T:
        try:
            return fn()
        except RuntimeError as exc:
            raise WorkerError(str(exc)) from exc

    def on_error(exc: BaseException) -> None:
        show_error(error_message(action, exc))
        if failed is not None:
            failed(exc)

    def on_done(result: T) -> None:
        try:
            done(result)
        except Exception as exc:  # never a traceback dialog
            on_error(exc)

    worker = create_worker(guarded, _start_thread=False, _ignore_errors=True)
    worker.returned.connect(on_done)
    worker.errored.connect(on_error)
    worker.finished.connect(finished)
    worker.start()
    return worker


class StoreRow(QWidget):
    """One row: the project store's path, "Browse…" (a folder dialog) and an open button.

    Parameters
    ----------
    on_open : callable
        Called with the path text when the button is pressed or a folder was chosen.
    button_text : str, keyword-only
        Text of the open button.
    placeholder : str, keyword-only
    """

    def __init__(
        self,
        on_open: Callable[[str], Any],
        *,
        button_text: str = "Open",
        placeholder: str = "project.zarr",
    ) -> None:
        super().__init__()
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText(placeholder)
        self.browse_button = QPushButton("Browse…")
        self.open_button = QPushButton(button_text)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.path_edit, 1)
        row.addWidget(self.browse_button)
        row.addWidget(self.open_button)
        self._on_open = on_open
        self.open_button.clicked.connect(lambda: on_open(self.path_edit.text()))
        self.browse_button.clicked.connect(self._browse)

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Project store (a folder)")
        if path:
            self.path_edit.setText(path)
            self._on_open(path)


class RaterRow:
    """The rater id (an editable box remembering the raters seen) and the role choice."""

    def __init__(self) -> None:
        self.rater_combo = QComboBox()
        self.rater_combo.setEditable(True)
        self.rater_combo.setToolTip("Your rater id (letters, digits, '.', '_', '-')")
        self.rater_combo.lineEdit().setPlaceholderText("your rater id")
        self.role_combo = QComboBox()
        self.role_combo.addItems(list(ROLES))

    @property
    def rater(self) -> str:
        """The rater id typed or chosen (stripped, not validated)."""
        return self.rater_combo.currentText().strip()

    @property
    def role(self) -> str:
        """The role chosen."""
        return self.role_combo.currentText()

    def remember(self, *raters: str) -> None:
        """Offer ``raters`` in the rater box (each once)."""
        for r in raters:
            if self.rater_combo.findText(r) < 0:
                self.rater_combo.addItem(r)

    def show(self, rater: str, role: str | None = None) -> None:
        """Show ``rater`` (and ``role``) as the current choice."""
        self.remember(rater)
        self.rater_combo.setCurrentText(rater)
        if role is not None:
            self.role_combo.setCurrentText(role)
