"""Derived state: each rater's latest committed version mirrored as an OME-Zarr label image.

``images/<id>/labels/<rater>`` is a copy (own chunk files, never hard links to a version) of the
committed version it names in ``attributes.probseg.version``; it is rebuilt from the versions
whenever it is stale or damaged, so it can never lose committed work.

Publication is atomic for NGFF readers: each update writes a complete new array
``labels/<rater>/<vNNNNNN>`` beside the current one (unchanged chunk files hard-linked from the
current *label* array, changed ones copied from the version), then replaces the label group's
``zarr.json`` (whose ``multiscales`` dataset path names the array) in one ``os.replace``. The
previous array is kept until the next update, so a reader that read the old ``zarr.json`` still
finds every chunk it names.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from napari_probseg.store._arrays import (
    check_array,
    chunk_path,
    file_hash,
    label_attrs,
    labels_list_attrs,
    read_array_meta,
)
from napari_probseg.store._errors import StoreCorruptionError
from napari_probseg.store._fs import (
    atomic_write_json,
    fsync_dir,
    fsync_tree,
    group_json,
    make_dirs,
    read_attrs,
    read_json,
    remove_tree,
    rename_into,
)
from napari_probseg.store._meta import AnnotationVersion


def version_name(version: int) -> str:
    """Directory name of annotation version ``version`` (``v000001``)."""
    return f"v{version:06d}"


class LabelsMixin:
    """Maintenance of the derived OME label images (mixed into :class:`ProjectStore`)."""

    # --- derived OME label images ------------------------------------------------------------

    def _sync_label(
        self, image_id: str, rater: str, version: AnnotationVersion, stage: Path
    ) -> None:
        """Publish ``version`` as ``labels/<rater>`` (caller holds the image lock).

        A new array is written aside (see the module docstring) and made current by replacing the
        group's ``zarr.json``; arrays older than the one it replaces are removed.
        """
        info = self.image_info(image_id)
        src = self._ann_dir(image_id, rater) / version_name(version.version)
        label_dir = self._label_dir(image_id, rater)
        current = _current_array(label_dir)
        current_index: dict[str, str] = {}
        if current is not None:
            try:
                current_index = read_array_meta(label_dir / current)["index"]
            except (StoreCorruptionError, FileNotFoundError, KeyError, TypeError):
                current = None
        src_index = read_array_meta(src)["index"]
        build = stage / "label-array"
        build.mkdir()
        shutil.copyfile(src / "zarr.json", build / "zarr.json")
        for key, h in src_index.items():
            dst = chunk_path(build, key)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if current is not None and current_index.get(key) == h:
                old = chunk_path(label_dir / current, key)
                try:  # label arrays may share files with each other, never with versions
                    if file_hash(old) == h:
                        os.link(old, dst)
                        continue
                except OSError:
                    pass
            shutil.copyfile(chunk_path(src, key), dst)
        fsync_tree(build)
        name = version_name(version.version)
        if name == current or (label_dir / name).exists():
            name = f"{name}-{uuid.uuid4().hex[:6]}"  # a resync: never touch what readers see
        if not label_dir.is_dir():
            group = stage / "label"
            group.mkdir()
            os.rename(build, group / name)
            self._write_label_group(group, image_id, rater, version, info, stage, array=name)
            fsync_dir(group)
            rename_into(group, label_dir, staging=stage)
        else:
            rename_into(build, label_dir / name, staging=stage)
            # the publication point: one os.replace of the group's zarr.json
            self._write_label_group(label_dir, image_id, rater, version, info, stage, array=name)
            for entry in sorted(label_dir.iterdir()):
                if entry.is_dir() and entry.name not in (name, current):
                    remove_tree(entry, staging=stage)
        self._write_labels_list(image_id, stage, ensure=rater)

    def _write_label_group(
        self,
        label_dir: Path,
        image_id: str,
        rater: str,
        version: AnnotationVersion | None,
        info: dict[str, Any],
        stage: Path,
        *,
        array: str = "0",
    ) -> None:
        probseg = {
            "kind": "label",
            "derived": True,
            "note": "copy of the rater's latest committed version; edits here are not kept",
            "image_id": image_id,
            "rater": rater,
            "version": None if version is None else version.version,
            "source": None
            if version is None
            else f"../../annotations/{rater}/{version_name(version.version)}",
            "role": None if version is None else version.role,
            "created": None if version is None else version.created,
            "content_hash": None if version is None else version.content_hash,
            "array": array,
        }
        attrs = label_attrs(rater, info["scale"], info.get("unit"), probseg, path=array)
        atomic_write_json(label_dir / "zarr.json", group_json(attrs), staging=stage)

    def _write_labels_list(self, image_id: str, stage: Path, *, ensure: str | None = None) -> None:
        """Rewrite ``labels/zarr.json`` to list the raters with a label image (if it changed)."""
        labels_dir = self._image_dir(image_id) / "labels"
        try:
            current = read_json(labels_dir / "zarr.json")["attributes"]["ome"]["labels"]
        except (FileNotFoundError, StoreCorruptionError, KeyError, TypeError):
            current = None
        wanted = sorted(
            r for r in self.raters(image_id) if (labels_dir / r / "zarr.json").is_file()
        )
        if ensure is not None and ensure not in wanted:
            wanted = sorted([*wanted, ensure])
        if current != wanted:
            atomic_write_json(
                labels_dir / "zarr.json", group_json(labels_list_attrs(wanted)), staging=stage
            )

    def _label_is_current(self, image_id: str, rater: str, latest: AnnotationVersion) -> bool:
        label_dir = self._label_dir(image_id, rater)
        array = _current_array(label_dir)
        if array is None:
            return False
        try:
            attrs = read_attrs(label_dir, "label")
            meta = read_array_meta(label_dir / array)
        except (StoreCorruptionError, FileNotFoundError):
            return False
        return (
            attrs.get("version") == latest.version and meta["content_hash"] == latest.content_hash
        )

    def _quick_repair(self) -> None:
        """Resync derived label images whose recorded version is not the latest (after a crash)."""
        for image_id in self.image_ids():
            try:
                stale = [
                    r
                    for r in self.raters(image_id)
                    if not self._label_is_current(image_id, r, self._load_versions(image_id, r)[-1])
                ]
                if stale or not self._labels_list_ok(image_id):
                    self._repair_labels(image_id)
            except (StoreCorruptionError, OSError, ValueError, KeyError):
                continue  # reported by verify(); opening must still work

    def _labels_list_ok(self, image_id: str) -> bool:
        try:
            listed = read_json(self._image_dir(image_id) / "labels" / "zarr.json")["attributes"][
                "ome"
            ]["labels"]
        except (FileNotFoundError, StoreCorruptionError, KeyError, TypeError):
            return False
        return listed == self.raters(image_id)

    def _repair_labels(self, image_id: str) -> list[str]:
        """Rebuild every stale derived label image of ``image_id``; return the raters repaired."""
        repaired = []
        with self._writing(image_id) as stage:
            labels_dir = self._image_dir(image_id) / "labels"
            make_dirs(labels_dir, staging=stage)
            raters = self.raters(image_id)
            for rater in raters:
                latest = self._load_versions(image_id, rater)[-1]
                if not self._label_is_current(image_id, rater, latest) or not self._label_chunks_ok(
                    image_id, rater, latest
                ):
                    self._sync_label(image_id, rater, latest, stage)
                    repaired.append(rater)
            for entry in labels_dir.iterdir():
                if entry.is_dir() and entry.name not in raters:
                    remove_tree(entry, staging=stage)
            self._write_labels_list(image_id, stage)
        return repaired

    def _label_chunks_ok(self, image_id: str, rater: str, latest: AnnotationVersion) -> bool:
        label_dir = self._label_dir(image_id, rater)
        array = _current_array(label_dir)
        return array is not None and not check_array(
            label_dir / array, expected_hash=latest.content_hash
        )


_ARRAY_NAME = re.compile(r"0|v\d{6}(-[0-9a-f]{6})?")


def _current_array(label_dir: Path) -> str | None:
    """Name of the array a label group publishes (its ``probseg.array``), or None.

    The name comes from the store, so it must look like one we write (never a path).
    """
    try:
        name = read_attrs(label_dir, "label").get("array", "0")
    except (StoreCorruptionError, FileNotFoundError, NotADirectoryError):
        return None
    return name if isinstance(name, str) and _ARRAY_NAME.fullmatch(name) else None
