"""Derived state: each rater's latest committed version mirrored as an OME-Zarr label image.

``images/<id>/labels/<rater>`` is a copy (own chunk files, never hard links) of the committed
version it names in ``attributes.probseg.version``; it is rebuilt from the versions whenever it is
stale or damaged, so it can never lose committed work.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from napari_probseg.store._arrays import (
    check_array,
    chunk_path,
    file_hash,
    label_attrs,
    labels_list_attrs,
    list_chunk_keys,
    read_array_meta,
)
from napari_probseg.store._errors import StoreCorruptionError
from napari_probseg.store._fs import (
    atomic_write_json,
    copy_file_atomic,
    fsync_tree,
    group_json,
    make_dirs,
    read_attrs,
    read_json,
    remove_file,
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
        """Make ``labels/<rater>`` a copy of ``version`` (caller holds the image lock).

        Only chunks that differ are copied. The label group's ``probseg.version`` is written last,
        so a crash leaves it naming an older version and the next open/verify resyncs it fully.
        """
        info = self.image_info(image_id)
        src = self._ann_dir(image_id, rater) / version_name(version.version)
        label_dir = self._label_dir(image_id, rater)
        dst = label_dir / "0"
        current = None
        if label_dir.is_dir():
            try:
                current = read_attrs(label_dir, "label").get("version")
                dst_index = read_array_meta(dst)["index"]
            except (StoreCorruptionError, FileNotFoundError):
                current, dst_index = None, None
        else:
            build = stage / "label"
            (build / "0").mkdir(parents=True)
            shutil.copyfile(src / "zarr.json", build / "0" / "zarr.json")
            self._write_label_group(build, image_id, rater, None, info, stage)
            fsync_tree(build)
            rename_into(build, label_dir, staging=stage)
            dst_index = None
        src_index = read_array_meta(src)["index"]
        if current is not None and dst_index is not None and current == version.previous:
            # Incremental: the derived copy is the previous version; its own index says what it holds.
            for key, h in src_index.items():
                if dst_index.get(key) != h:
                    copy_file_atomic(chunk_path(src, key), chunk_path(dst, key), staging=stage)
            for key in set(dst_index) - set(src_index):
                remove_file(chunk_path(dst, key), staging=stage)
        else:
            self._full_resync(src, dst, src_index, stage)
        copy_file_atomic(src / "zarr.json", dst / "zarr.json", staging=stage)
        self._write_label_group(label_dir, image_id, rater, version, info, stage)
        self._write_labels_list(image_id, stage, ensure=rater)

    @staticmethod
    def _full_resync(src: Path, dst: Path, src_index: dict[str, str], stage: Path) -> None:
        present = list_chunk_keys(dst)
        for key, h in src_index.items():
            path = chunk_path(dst, key)
            if key not in present or file_hash(path) != h:
                copy_file_atomic(chunk_path(src, key), path, staging=stage)
        for key in present - set(src_index):
            remove_file(chunk_path(dst, key), staging=stage)

    def _write_label_group(
        self,
        label_dir: Path,
        image_id: str,
        rater: str,
        version: AnnotationVersion | None,
        info: dict[str, Any],
        stage: Path,
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
        }
        attrs = label_attrs(rater, info["scale"], info.get("unit"), probseg)
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
        try:
            attrs = read_attrs(label_dir, "label")
            meta = read_array_meta(label_dir / "0")
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
                    label_dir = self._label_dir(image_id, rater)
                    if label_dir.is_dir():  # resync in place, forcing a full comparison
                        try:
                            attrs = read_json(label_dir / "zarr.json")
                            attrs["attributes"]["probseg"]["version"] = None
                            atomic_write_json(label_dir / "zarr.json", attrs, staging=stage)
                        except (FileNotFoundError, StoreCorruptionError, KeyError, TypeError):
                            remove_tree(label_dir, staging=stage)
                    self._sync_label(image_id, rater, latest, stage)
                    repaired.append(rater)
            for entry in labels_dir.iterdir():
                if entry.is_dir() and entry.name not in raters:
                    remove_tree(entry, staging=stage)
            self._write_labels_list(image_id, stage)
        return repaired

    def _label_chunks_ok(self, image_id: str, rater: str, latest: AnnotationVersion) -> bool:
        return not check_array(
            self._label_dir(image_id, rater) / "0", expected_hash=latest.content_hash
        )
