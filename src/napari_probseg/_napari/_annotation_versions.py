"""The annotation panel's version browser and agreement between raters (part of
:class:`~napari_probseg._napari._annotation_widget.AnnotationWidget`).

The version tree lists the raters the signed-in rater may see (blind mode); loading versions and
computing the agreement read the store in the panel's worker (``_run_io``): the masks, the Dice
matrix (``core.agreement`` on the one IoU matrix) and the layer data are built there, the GUI
thread only fills the table and adds the layers.
"""

from __future__ import annotations

from typing import Any

from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QTableWidgetItem, QTreeWidgetItem

from napari_probseg._napari._annotation_model import (
    agreement,
    describe_version,
    latest_masks,
    visible_raters,
)
from napari_probseg._napari._store_forms import notify_errors
from napari_probseg._napari._store_reader import agreement_layer_data, rater_layer_data
from napari_probseg.store import ProjectStore


class VersionsMixin:
    """Versions and agreement of :class:`AnnotationWidget` (which provides the store, the
    identity, the tree, the Dice table and ``_run_io``)."""

    # ------------------------------------------------------------------ versions
    def refresh_versions(self) -> None:
        """Fill the version tree with the raters the current rater may see."""
        self.tree.clear()
        if self.store is None or self.image_id is None:
            return
        raters = (
            visible_raters(self.store, self.image_id, self.rater, blind=self.blind)
            if self.rater
            else ([] if self.blind else self.store.raters(self.image_id))
        )
        for rater in raters:
            history = self.store.history(self.image_id, rater)
            top = QTreeWidgetItem([rater, "", history[-1].role if history else "", "", "", ""])
            top.setData(0, Qt.ItemDataRole.UserRole, (rater, None))
            for v in history:
                d = describe_version(v)
                child = QTreeWidgetItem(
                    [d["version"], d["time"], d["role"], d["tools"], d["source"], d["note"]]
                )
                child.setData(0, Qt.ItemDataRole.UserRole, (rater, v.version))
                top.addChild(child)
            self.tree.addTopLevelItem(top)
            top.setExpanded(True)

    def load_selected(self) -> Any:
        """Load the version selected in the tree (a rater row: the latest) as a layer."""
        item = self.tree.currentItem()
        if item is None:
            show_warning("probseg: select a version in the list first")
            return None
        rater, version = item.data(0, Qt.ItemDataRole.UserRole)
        return self.load_version(rater, version)

    @notify_errors("loading the version")
    def load_version(self, rater: str, version: int | None = None) -> Any:
        """Add ``rater``'s version (default: latest) of the current image as a Labels layer.

        Read in a worker; returns it (None with a notification if refused). The layer ends in
        :attr:`last_loaded`.
        """
        store, image_id, _ = self._require_identity()
        if rater != self.rater and not self.may_see_others():
            raise ValueError(
                "rater: blind mode: other raters' annotations are hidden until you save your own"
            )
        return self._load_raters(store, image_id, [(rater, version)])

    @notify_errors("showing the raters")
    def show_raters(self) -> Any:
        """Load every visible rater's latest version of the current image (replacing old ones).

        Read in a worker; returns it (None if refused). The layers end in :attr:`last_loaded`.
        """
        store, image_id, me = self._require_identity()
        raters = visible_raters(store, image_id, me, blind=self.blind)
        hidden = len(store.raters(image_id)) - len(raters)
        if hidden:
            show_info(f"probseg: blind mode: {hidden} other rater(s) hidden until you save")
        return self._load_raters(store, image_id, [(r, None) for r in raters])

    def _load_raters(
        self, store: ProjectStore, image_id: str, wanted: list[tuple[str, int | None]]
    ) -> Any:
        self.last_loaded = []
        all_raters = store.raters(image_id)

        def read() -> list[Any]:
            colors = {r: i for i, r in enumerate(all_raters)}
            return [
                rater_layer_data(store, image_id, r, v, color_index=colors.get(r, 0))
                for r, v in wanted
            ]

        def add(items: list[Any]) -> None:
            if self.store is not store or self.image_id != image_id:
                return  # the image changed meanwhile: these layers belong to another one
            if not self.may_see_others():  # blind mode was switched on meanwhile
                items = [it for it in items if it[1]["metadata"]["probseg"]["rater"] == self.rater]
            self.last_loaded = [self._add_layer(item) for item in items]

        return self._run_io(
            read, add, action="loading the versions", button=self.show_button, text="Loading…"
        )

    def _add_layer(self, layer_data: tuple[Any, dict, str], index: int | None = None) -> Any:
        """Add a layer-data tuple (replacing a layer of the same name), at ``index`` or on top."""
        from napari.layers import Layer

        data, kwargs, kind = layer_data
        for old in [lay for lay in self.viewer.layers if lay.name == kwargs["name"]]:
            self.viewer.layers.remove(old)
        layer = Layer.create(data, kwargs, kind)
        if index is None:
            self.viewer.layers.append(layer)
        else:
            self.viewer.layers.insert(index, layer)
        return layer

    # ------------------------------------------------------------------ agreement
    @notify_errors("computing the agreement")
    def compute_agreement(self) -> Any:
        """Pairwise Dice matrix, majority vote and soft consensus layers, disagreement share.

        The raters' masks are read and compared in a worker (``core.agreement``); returns it
        (None with a notification if refused). The result ends in :attr:`last_agreement`.
        """
        store, image_id, _ = self._require_identity()
        if not self.may_see_others():
            raise ValueError("agreement: blind mode: save your own annotation first")
        raters = store.raters(image_id)
        if len(raters) < 2:
            raise ValueError(f"agreement: needs two raters, {image_id!r} has {len(raters)}")
        self.last_agreement = None

        def work() -> tuple[Any, list[Any]]:
            result = agreement(latest_masks(store, image_id, raters))
            return result, agreement_layer_data(store, image_id, result)

        return self._run_io(
            work,
            lambda out: self._show_agreement(store, image_id, *out),
            action="computing the agreement",
            button=self.agree_button,
            text="Computing…",
        )

    def _show_agreement(
        self, store: ProjectStore, image_id: str, result: Any, layers: list[Any]
    ) -> None:
        if self.store is not store or self.image_id != image_id or not self.may_see_others():
            return  # the image or the rater changed meanwhile
        self.last_agreement = result
        raters = list(result.raters)
        r = len(raters)
        self.dice_table.setRowCount(r)
        self.dice_table.setColumnCount(r)
        self.dice_table.setHorizontalHeaderLabels(raters)
        self.dice_table.setVerticalHeaderLabels(raters)
        for i in range(r):
            for j in range(r):
                self.dice_table.setItem(i, j, QTableWidgetItem(f"{result.dice[i, j]:.3f}"))
        self.agree_label.setText(result.summary())
        for layer_data in layers:
            self._add_layer(layer_data)
