"""Autosaved drafts: a rater's unsaved work, recoverable after a crash (one per image and rater)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from napari_probseg.store._arrays import SPATIAL_AXES, read_array, write_array
from napari_probseg.store._errors import StoreCorruptionError
from napari_probseg.store._fs import (
    atomic_write_json,
    group_json,
    make_dirs,
    read_attrs,
    remove_tree,
    rename_into,
)
from napari_probseg.store._meta import (
    DraftInfo,
    to_jsonable,
    utc_now,
    validate_identifier,
    zarr_children,
)

_DRAFT_NAME = re.compile(r"d\d{6}")


class DraftsMixin:
    """Draft methods of :class:`ProjectStore`.

    Layout: ``images/<id>/drafts/<rater>/zarr.json`` names the current draft array
    (``d000001``, ``d000002``...). A new draft is written next to the old one, then the pointer is
    replaced atomically, then the old array is removed, so a crash keeps one complete draft.
    Unchanged chunks are hard-linked from the previous draft (or the rater's latest version).
    """

    def _draft_dir(self, image_id: str, rater: str):
        return self._image_dir(image_id) / "drafts" / validate_identifier(rater, "rater")

    def _draft_pointer(self, image_id: str, rater: str) -> dict[str, Any] | None:
        directory = self._draft_dir(image_id, rater)
        try:
            attrs = read_attrs(directory, "draft")
        except FileNotFoundError:
            return None
        current = attrs.get("current")
        if not current:
            return None
        # the name comes from the store: it must be one we write, never a path
        if not isinstance(current, str) or not _DRAFT_NAME.fullmatch(current):
            raise StoreCorruptionError(directory / "zarr.json", f"invalid draft name {current!r}")
        return attrs

    def save_draft(
        self,
        image_id: str,
        rater: str,
        mask: Any,
        *,
        based_on: int | None = None,
        note: str = "",
        extra: dict[str, Any] | None = None,
    ) -> DraftInfo:
        """Autosave ``rater``'s work in progress on ``image_id`` (replacing the previous draft).

        Parameters
        ----------
        image_id, rater : str
            Validated identifiers.
        mask : ndarray, shape = image shape
            Integer labels or bool.
        based_on : int, optional
            The committed version the work started from.
        note : str
            Free text.
        extra : dict, optional
            JSON-able extra state (tools used so far, time spent, source run...).
        """
        validate_identifier(rater, "rater")
        info = self.image_info(image_id)
        arr = self._check_mask(mask, info["shape"])
        extra = to_jsonable(extra or {}, "extra")
        with self._writing(image_id) as stage:
            from napari_probseg.store._project import label_dtype

            try:
                pointer = self._draft_pointer(image_id, rater)
            except StoreCorruptionError:  # a damaged draft never blocks the next autosave
                pointer = None
            versions = self._load_versions(image_id, rater)
            arr = arr.astype(label_dtype(arr, versions[-1].dtype if versions else None), copy=False)
            directory = self._draft_dir(image_id, rater)
            if pointer:
                parent = directory / pointer["current"]
            elif versions:
                from napari_probseg.store._labels import version_name

                parent = self._ann_dir(image_id, rater) / version_name(versions[-1].version)
            else:
                parent = None
            counter = int(pointer["counter"]) + 1 if pointer else 1
            name = f"d{counter:06d}"
            record, _ = write_array(
                stage / "draft",
                arr,
                chunks=info["label_chunks"],
                dimension_names=SPATIAL_AXES[-arr.ndim :],
                parent=parent,
            )
            draft = DraftInfo(
                image_id=image_id,
                rater=rater,
                saved=utc_now(),
                based_on=based_on,
                note=str(note),
                content_hash=record["content_hash"],
                shape=tuple(arr.shape),
                dtype=record["dtype"],
                extra=extra,
            )
            if not directory.is_dir():
                image_dir = self._image_dir(image_id)
                self._check_new_name(
                    [image_dir / "annotations", image_dir / "drafts"], rater, "rater"
                )
            make_dirs(directory, staging=stage)
            if (directory / name).exists():
                remove_tree(directory / name, staging=stage)
            rename_into(stage / "draft", directory / name, staging=stage)
            attrs = {"kind": "draft", "current": name, "counter": counter, "info": draft.to_dict()}
            atomic_write_json(
                directory / "zarr.json", group_json({"probseg": attrs}), staging=stage
            )
            for entry in directory.iterdir():
                if entry.is_dir() and entry.name != name:
                    remove_tree(entry, staging=stage)
        return draft

    def load_draft(self, image_id: str, rater: str) -> tuple[np.ndarray, DraftInfo] | None:
        """Return ``(mask, DraftInfo)`` of the rater's draft, or None if there is none."""
        self.image_info(image_id)
        pointer = self._draft_pointer(image_id, rater)
        if pointer is None:
            return None
        draft = DraftInfo.from_dict(pointer["info"])
        mask = read_array(
            self._draft_dir(image_id, rater) / pointer["current"],
            shape=draft.shape,
            dtype=draft.dtype,
            expected_hash=draft.content_hash,
        )
        return mask, draft

    def discard_draft(self, image_id: str, rater: str) -> bool:
        """Delete the rater's draft; return whether there was one."""
        self.image_info(image_id)
        directory = self._draft_dir(image_id, rater)
        with self._writing(image_id) as stage:
            existed = directory.exists()
            remove_tree(directory, staging=stage)
        return existed

    def draft_raters(self, image_id: str) -> list[str]:
        """Raters holding a draft of ``image_id``."""
        return zarr_children(self._image_dir(image_id) / "drafts", "rater")
