"""The :class:`ProjectStore`: images, versioned multi-rater annotations, drafts and predictions."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from napari_probseg._version import __version__
from napari_probseg.core._validation import check_finite, to_numpy
from napari_probseg.store._arrays import (
    SPATIAL_AXES,
    default_chunks,
    image_attrs,
    labels_list_attrs,
    read_array,
    write_array,
)
from napari_probseg.store._drafts import DraftsMixin
from napari_probseg.store._errors import (
    StoreCorruptionError,
    StoreError,
    StoreLinkError,
    StoreVersionError,
)
from napari_probseg.store._fs import (
    atomic_write_json,
    check_within,
    file_lock,
    find_links,
    fsync_tree,
    group_json,
    make_dirs,
    read_attrs,
    read_json,
    remove_tree,
    rename_into,
)
from napari_probseg.store._labels import LabelsMixin, version_name
from napari_probseg.store._meta import (
    SCHEMA_VERSION,
    AnnotationVersion,
    check_case_collision,
    check_role,
    check_time_spent,
    check_tools,
    to_jsonable,
    utc_now,
    validate_identifier,
    zarr_children,
)
from napari_probseg.store._predictions import PredictionsMixin
from napari_probseg.store._rankings import RankingsMixin
from napari_probseg.store._verify import VerifyMixin

MODES = ("r", "r+")


def label_dtype(mask: np.ndarray, floor: str | None = None) -> np.dtype:
    """Smallest unsigned dtype holding ``mask``'s labels, never narrower than ``floor``."""
    top = int(mask.max()) if mask.size else 0
    dt = np.dtype(np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.uint32)
    if floor is not None and np.dtype(floor).itemsize > dt.itemsize:
        dt = np.dtype(floor)
    return dt


def present_labels(mask: np.ndarray) -> tuple[int, ...]:
    """Sorted label values present in ``mask``.

    A few labels (the usual case): one comparison pass per label, much faster than ``np.unique``
    or ``np.bincount`` (which converts the whole volume to intp) on large volumes.
    """
    if mask.size == 0:
        return ()
    top = int(mask.max())
    if top <= 16:
        return tuple(v for v in range(top + 1) if v == top or bool((mask == v).any()))
    return tuple(int(v) for v in np.unique(mask))


class ProjectStore(LabelsMixin, DraftsMixin, PredictionsMixin, VerifyMixin, RankingsMixin):
    """A multi-rater annotation project: a zarr v3 / OME-Zarr 0.5 directory (see the package docs).

    Use :meth:`create` or :meth:`open`; do not call the constructor directly.
    """

    def __init__(self, path: str | Path, mode: str, root: dict[str, Any]) -> None:
        self.path = Path(path)
        self.mode = mode
        self._root = root
        self._internal = self.path / ".probseg"
        self._tmp = self._internal / "tmp"

    # --- opening -----------------------------------------------------------------------------

    @classmethod
    def create(
        cls, path: str | Path, *, class_names: list[str] | None = None, exist_ok: bool = False
    ) -> ProjectStore:
        """Create an empty store at ``path`` (a new or empty directory) and open it read-write.

        Parameters
        ----------
        path : path
            Directory of the store (conventionally ending in ``.zarr``).
        class_names : list of str, optional
            Names of the label values, index = label (``class_names[0]`` is the background).
        exist_ok : bool
            If True and ``path`` already holds a store, open it instead of failing.
        """
        path = Path(path)
        if (path / "zarr.json").exists():
            if exist_ok:
                return cls.open(path)
            raise FileExistsError(f"path: {path} already exists")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise FileExistsError(f"path: {path} exists and is not an empty directory")
        if class_names is not None:
            class_names = [str(c) for c in class_names]
        path.mkdir(parents=True, exist_ok=True)
        staging = path / ".probseg" / "tmp"
        staging.mkdir(parents=True, exist_ok=True)
        internal = {"probseg": {"kind": "internal", "note": "locks and staging; not data"}}
        atomic_write_json(path / ".probseg" / "zarr.json", group_json(internal), staging=staging)
        (path / "images").mkdir(exist_ok=True)
        atomic_write_json(
            path / "images" / "zarr.json",
            group_json({"probseg": {"kind": "images"}}),
            staging=staging,
        )
        root = {
            "kind": "project",
            "schema_version": SCHEMA_VERSION,
            "created": utc_now(),
            "software": f"napari-probseg {__version__}",
            "class_names": class_names,
        }
        # The root metadata is written last: its presence marks a complete store.
        atomic_write_json(path / "zarr.json", group_json({"probseg": root}), staging=staging)
        return cls(path, "r+", root)

    @classmethod
    def open(cls, path: str | Path, *, mode: str = "r+", allow_links: bool = False) -> ProjectStore:
        """Open an existing store.

        Parameters
        ----------
        path : path
            Store directory.
        mode : {"r+", "r"}
            ``"r+"`` (default) allows writes and repairs derived state left stale by a crash
            (the OME label image of a rater's latest version); ``"r"`` never writes.

        Raises
        ------
        FileNotFoundError
            If ``path`` holds no store.
        StoreVersionError
            If the store was written by a newer schema version.
        StoreCorruptionError
            If the root metadata is damaged.
        StoreLinkError
            If the store holds a symbolic link (the store never follows links).
        """
        if mode not in MODES:
            raise ValueError(f"mode: expected 'r' or 'r+', got {mode!r}")
        path = Path(path)
        meta_path = path / "zarr.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"path: {path} is not a probseg project store (no zarr.json)")
        meta = read_json(meta_path)
        attrs = meta.get("attributes") if isinstance(meta, dict) else None
        root = attrs.get("probseg") if isinstance(attrs, dict) else None
        if not isinstance(root, dict) or root.get("kind") != "project":
            raise StoreError(f"{path}: a zarr group but not a probseg project store")
        version = root.get("schema_version")
        if not isinstance(version, int) or version < 1:
            raise StoreCorruptionError(meta_path, f"invalid schema_version {version!r}")
        if version > SCHEMA_VERSION:
            raise StoreVersionError(
                f"{path}: store schema version {version} is newer than this napari-probseg "
                f"({__version__}) supports ({SCHEMA_VERSION}); upgrade napari-probseg"
            )
        links = find_links(path)
        if links and not (allow_links and mode == "r"):
            raise StoreLinkError(
                links[0],
                f"is a symbolic link (to {os.readlink(links[0])!r}) inside the store {path}; a "
                f"store never follows links, so it cannot be opened ({len(links)} link(s); "
                "`probseg store verify` lists them) -- remove them",
            )
        store = cls(path, mode, root)
        if mode == "r+":
            store._clean_idle_staging()
            store._quick_repair()
        return store

    def __repr__(self) -> str:
        return f"ProjectStore({str(self.path)!r}, mode={self.mode!r})"

    @property
    def schema_version(self) -> int:
        """The store's ``probseg`` schema version."""
        return int(self._root["schema_version"])

    @property
    def class_names(self) -> list[str] | None:
        """Names of the label values, if the store defines them."""
        return self._root.get("class_names")

    # --- paths, locks, staging ---------------------------------------------------------------

    def _image_dir(self, image_id: str) -> Path:
        directory = self.path / "images" / validate_identifier(image_id, "image_id")
        if directory.is_symlink():  # cheap; writes check every component (_fs.check_within)
            check_within(directory, self.path)
        return directory

    def _ann_dir(self, image_id: str, rater: str) -> Path:
        return self._image_dir(image_id) / "annotations" / validate_identifier(rater, "rater")

    def _label_dir(self, image_id: str, rater: str) -> Path:
        return self._image_dir(image_id) / "labels" / validate_identifier(rater, "rater")

    @staticmethod
    def _check_new_name(parents: list[Path], value: str, name: str) -> None:
        """Refuse a new id that differs from an existing one only in case (caller holds the lock)."""
        existing = [e for p in parents if p.is_dir() for e in os.listdir(p)]
        check_case_collision(value, existing, name)

    def _check_writable(self) -> None:
        if self.mode != "r+":
            raise StoreError(f"{self.path}: store opened read-only (mode='r')")

    def _clean_staging(self, owner: str) -> None:
        """Remove staging leftovers of ``owner`` (a crashed writer); caller holds its lock."""
        if not self._tmp.is_dir():
            return
        for entry in self._tmp.iterdir():
            if entry.name.split("+")[0] == owner:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    def _idle_owners(self) -> list[str]:
        """Owners of staging leftovers whose writer is gone (their lock is free right now)."""
        if not self._tmp.is_dir():
            return []
        idle = []
        for owner in sorted({e.name.split("+")[0] for e in self._tmp.iterdir()}):
            lock = self._internal / "locks" / f"{owner}.lock"
            try:
                if owner != ".root":
                    validate_identifier(owner, "owner")
                if not lock.is_file():  # staging is only made under the lock: its writer is gone
                    idle.append(owner)
                    continue
                with file_lock(lock, timeout=0):
                    idle.append(owner)
            except (StoreError, ValueError, OSError):
                continue  # a writer is at work (or a stray name): not a leftover
        return idle

    def _clean_idle_staging(self) -> None:
        """Remove what crashed writers left in staging (on read-write open)."""
        for owner in self._idle_owners():
            try:
                with file_lock(self._internal / "locks" / f"{owner}.lock", timeout=0):
                    self._clean_staging(owner)
            except (StoreError, OSError):
                continue

    def _check_links(self, *tops: Path) -> None:
        """Refuse to write when the internal folder or ``tops`` hold a symbolic link."""
        check_within(self._tmp, self.path)
        for top in (self._internal, *tops):
            check_within(top, self.path)
            links = find_links(top) if top.is_dir() else []
            if links:
                raise StoreLinkError(
                    links[0],
                    f"is a symbolic link (to {os.readlink(links[0])!r}); the store never follows "
                    "links -- remove it (probseg store verify lists every link)",
                )

    @contextlib.contextmanager
    def _reading(self, owner: str) -> Iterator[None]:
        """Hold ``owner``'s lock shared: a consistent view while writers wait (for verify).

        Lock files are not data; on a read-only file system the view is simply not locked.
        """
        try:
            lock = file_lock(self._internal / "locks" / f"{owner}.lock", shared=True)
            lock.__enter__()
        except OSError:
            yield
            return
        try:
            yield
        finally:
            lock.__exit__(None, None, None)

    @contextlib.contextmanager
    def _writing(self, owner: str) -> Iterator[Path]:
        """Hold ``owner``'s lock (an image id, or ``.root``) and yield a fresh staging dir.

        Under the lock, the owner's image folder is checked for symbolic links first (a link
        created after the store was opened must not redirect this write).
        """
        self._check_writable()
        self._check_links()
        with file_lock(self._internal / "locks" / f"{owner}.lock"):
            image_dir = self.path / "images" / owner
            self._check_links(*([image_dir] if owner != ".root" and image_dir.exists() else []))
            self._clean_staging(owner)
            stage = self._tmp / f"{owner}+{uuid.uuid4().hex}"
            stage.mkdir(parents=True)
            try:
                yield stage
            finally:
                shutil.rmtree(stage, ignore_errors=True)

    # --- images ------------------------------------------------------------------------------

    def add_image(
        self,
        data: Any,
        *,
        image_id: str,
        scale: tuple[float, ...] | None = None,
        metadata: dict[str, Any] | None = None,
        unit: str | None = None,
        chunks: tuple[int, ...] | None = None,
        label_chunks: tuple[int, ...] | None = None,
    ) -> str:
        """Add an image as an OME-Zarr image group ``images/<image_id>``.

        Parameters
        ----------
        data : ndarray, shape (Z, Y, X) or (Y, X)
            Image intensities (numeric; bool is stored as uint8).
        image_id : str
            Identifier (validated, unique in the store).
        scale : tuple of float, optional
            Voxel size per axis (default 1), written as the OME ``scale`` transformation.
        metadata : dict, optional
            JSON-able user metadata (modality, patient pseudonym, ...).
        unit : str, optional
            Spatial unit of ``scale`` (e.g. ``"millimeter"``).
        chunks, label_chunks : tuple of int, optional
            Chunk shapes of the image and of every annotation of it.

        Returns
        -------
        str
            ``image_id``.
        """
        validate_identifier(image_id, "image_id")
        arr = to_numpy(data)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        if arr.ndim not in (2, 3):
            raise ValueError(f"data: expected shape (Z, Y, X) or (Y, X), got {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise ValueError(f"data: expected a numeric image, got dtype {arr.dtype}")
        if np.issubdtype(arr.dtype, np.floating):
            check_finite(arr, "data")
        if min(arr.shape) < 1:
            raise ValueError(f"data: empty image of shape {arr.shape}")
        scale = self._check_scale(scale, arr.ndim)
        chunks = self._check_chunks(chunks, arr.shape, "chunks", label=False)
        label_chunks = self._check_chunks(label_chunks, arr.shape, "label_chunks", label=True)
        metadata = to_jsonable(metadata or {}, "metadata")
        axes = SPATIAL_AXES[-arr.ndim :]
        self._check_new_name([self.path / "images"], image_id, "image_id")  # before any lock file
        with self._writing(image_id) as stage:
            target = self._image_dir(image_id)
            if target.exists():
                raise ValueError(f"image_id: {image_id!r} already exists in {self.path}")
            self._check_new_name([self.path / "images"], image_id, "image_id")
            build = stage / "image"
            record, _ = write_array(build / "0", arr, chunks=chunks, dimension_names=axes)
            for sub, kind in (("annotations", "annotations"), ("predictions", "predictions")):
                (build / sub).mkdir()
                atomic_write_json(
                    build / sub / "zarr.json",
                    group_json({"probseg": {"kind": kind}}),
                    staging=stage,
                )
            (build / "drafts").mkdir()
            atomic_write_json(
                build / "drafts" / "zarr.json",
                group_json({"probseg": {"kind": "drafts"}}),
                staging=stage,
            )
            (build / "labels").mkdir()
            atomic_write_json(
                build / "labels" / "zarr.json", group_json(labels_list_attrs([])), staging=stage
            )
            info = {
                "kind": "image",
                "image_id": image_id,
                "created": utc_now(),
                "scale": list(scale),
                "unit": unit,
                "label_chunks": list(label_chunks),
                "metadata": metadata,
                **record,
            }
            atomic_write_json(
                build / "zarr.json",
                group_json(image_attrs(image_id, scale, unit, info)),
                staging=stage,
            )
            fsync_tree(build)
            rename_into(build, target, staging=stage)
        return image_id

    @staticmethod
    def _check_scale(scale: Any, ndim: int) -> tuple[float, ...]:
        if scale is None:
            return (1.0,) * ndim
        out = tuple(float(s) for s in scale)
        if len(out) != ndim or not all(np.isfinite(s) and s > 0 for s in out):
            raise ValueError(f"scale: expected {ndim} finite positive voxel sizes, got {scale!r}")
        return out

    @staticmethod
    def _check_chunks(
        chunks: Any, shape: tuple[int, ...], name: str, *, label: bool
    ) -> tuple[int, ...]:
        if chunks is None:
            return default_chunks(tuple(shape), label=label)
        out = tuple(int(c) for c in chunks)
        if len(out) != len(shape) or min(out) < 1:
            raise ValueError(f"{name}: expected {len(shape)} positive chunk sizes, got {chunks!r}")
        return tuple(min(c, s) for c, s in zip(out, shape))

    def image_ids(self) -> list[str]:
        """Identifiers of the images in the store, sorted."""
        return zarr_children(self.path / "images", "image_id")

    def image_info(self, image_id: str) -> dict[str, Any]:
        """The image's record: shape, dtype, scale, unit, chunks, label_chunks, metadata, created."""
        directory = self._image_dir(image_id)
        try:
            info = read_attrs(directory, "image")
        except FileNotFoundError:
            raise ValueError(f"image_id: no image {image_id!r} in {self.path}") from None
        try:
            info["shape"] = tuple(int(s) for s in info["shape"])
            info["scale"] = tuple(float(s) for s in info["scale"])
            info["label_chunks"] = tuple(int(c) for c in info["label_chunks"])
            assert len(info["shape"]) in (2, 3) and len(info["scale"]) == len(info["shape"])
        except (AssertionError, KeyError, TypeError, ValueError) as exc:
            raise StoreCorruptionError(
                directory / "zarr.json", f"malformed image record ({exc!r})"
            ) from None
        return info

    def read_image(self, image_id: str) -> tuple[np.ndarray, tuple[float, ...]]:
        """Return ``(data, scale)`` of an image; data has shape (Z, Y, X) or (Y, X)."""
        info = self.image_info(image_id)
        data = read_array(
            self._image_dir(image_id) / "0",
            shape=info["shape"],
            dtype=info["dtype"],
            expected_hash=info["content_hash"],
        )
        return data, info["scale"]

    # --- annotations -------------------------------------------------------------------------

    def _manifest_path(self, image_id: str, rater: str) -> Path:
        return self._ann_dir(image_id, rater) / "zarr.json"

    def _load_versions(self, image_id: str, rater: str) -> list[AnnotationVersion]:
        path = self._manifest_path(image_id, rater)
        try:
            attrs = read_attrs(path.parent, "annotation-history")
        except FileNotFoundError:
            return []
        try:
            versions = [AnnotationVersion.from_dict(v) for v in attrs["versions"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreCorruptionError(path, f"malformed version history ({exc!r})") from None
        if [v.version for v in versions] != list(range(1, len(versions) + 1)):
            raise StoreCorruptionError(path, "version numbers are not 1..n")
        return versions

    def _write_manifest(
        self, image_id: str, rater: str, versions: list[AnnotationVersion], stage: Path
    ) -> None:
        attrs = {
            "probseg": {
                "kind": "annotation-history",
                "image_id": image_id,
                "rater": rater,
                "versions": [v.to_dict() for v in versions],
            }
        }
        atomic_write_json(self._manifest_path(image_id, rater), group_json(attrs), staging=stage)

    def raters(self, image_id: str) -> list[str]:
        """Raters with at least one committed annotation of ``image_id``, sorted."""
        base = self._image_dir(image_id) / "annotations"
        if not base.is_dir():
            self.image_info(image_id)  # raises for an unknown image
            return []
        return [r for r in zarr_children(base, "rater") if self._load_versions(image_id, r)]

    def history(self, image_id: str, rater: str | None = None) -> list[AnnotationVersion]:
        """Every committed version of one rater (or of all raters), oldest first."""
        raters = (
            [validate_identifier(rater, "rater")] if rater is not None else self.raters(image_id)
        )
        out = [v for r in raters for v in self._load_versions(image_id, r)]
        return sorted(out, key=lambda v: (v.created, v.rater, v.version))

    def read_version(
        self, image_id: str, rater: str, version: int
    ) -> tuple[np.ndarray, AnnotationVersion]:
        """Return ``(mask, record)`` of one committed version; mask has the image's shape.

        Raises
        ------
        ValueError
            If the rater has no such version.
        StoreCorruptionError
            If the stored array is damaged (naming the file).
        """
        versions = self._load_versions(image_id, rater)
        if not isinstance(version, (int, np.integer)) or not 1 <= version <= len(versions):
            raise ValueError(
                f"version: rater {rater!r} has versions 1..{len(versions)} of {image_id!r}, got {version!r}"
            )
        record = versions[int(version) - 1]
        mask = read_array(
            self._ann_dir(image_id, rater) / version_name(record.version),
            shape=record.shape,
            dtype=record.dtype,
            expected_hash=record.content_hash,
        )
        return mask, record

    def latest(self, image_id: str, rater: str) -> tuple[np.ndarray, AnnotationVersion]:
        """Return ``(mask, record)`` of the rater's latest committed version."""
        versions = self._load_versions(image_id, rater)
        if not versions:
            self.image_info(image_id)
            raise ValueError(f"rater: {rater!r} has no annotation of image {image_id!r}")
        return self.read_version(image_id, rater, versions[-1].version)

    def _check_mask(self, mask: Any, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
        arr = to_numpy(mask)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name}: expected integer labels, got dtype {arr.dtype}")
        if arr.shape != tuple(shape):
            raise ValueError(f"{name}: expected the image's shape {tuple(shape)}, got {arr.shape}")
        if arr.size and arr.min() < 0:
            raise ValueError(f"{name}: labels must be >= 0 (0 = background)")
        top = int(arr.max()) if arr.size else 0
        if top > np.iinfo(np.uint32).max:
            raise ValueError(f"{name}: labels must fit in uint32")
        classes = self.class_names
        if classes and top >= len(classes):
            raise ValueError(
                f"{name}: label {top} is outside the store's classes {classes} "
                f"(labels 0..{len(classes) - 1})"
            )
        return arr

    def save_annotation(
        self,
        image_id: str,
        rater: str,
        mask: Any,
        *,
        role: str,
        tools: tuple[str, ...] | list[str] = (),
        time_spent_s: float = 0.0,
        source_run: str | None = None,
        source_sample: int | None = None,
        note: str = "",
        parent_version: int | None = None,
        started: str | None = None,
        keep_draft: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> AnnotationVersion:
        """Commit a new version of ``rater``'s annotation of ``image_id``.

        The new version is written completely (unchanged chunks hard-linked from the rater's
        previous version), then made current by atomically replacing the rater's version list;
        finally the derived OME label image ``labels/<rater>`` is updated. Commits on one image
        are serialised by a lock; nothing is ever overwritten.

        Parameters
        ----------
        image_id, rater : str
            Validated identifiers.
        mask : ndarray, shape = image shape
            Integer labels (0 = background) or bool.
        role : {"expert", "resident", "trainee", "other"}
            Expertise of the rater.
        tools : sequence of str
            Tools used (``"brush"``, ``"polygon"``, ``"fill"``, ``"accepted_hypothesis"``...).
        time_spent_s : float
            Editing time in seconds.
        source_run, source_sample : optional
            Prediction run id and sample index the edit started from.
        note : str
            Free text.
        parent_version : int, optional
            The version of this rater the edit started from (None: not started from one). If it
            is not the latest version when the commit happens (another save came first), the new
            version records ``conflict=True`` instead of silently replacing the newer work.
        started : str, optional
            UTC ISO timestamp at which editing started.
        keep_draft : bool
            Keep the rater's autosaved draft (default: discard it after the commit).
        extra : dict, optional
            JSON-able extra metadata.

        Returns
        -------
        AnnotationVersion
        """
        validate_identifier(rater, "rater")
        role = check_role(role)
        tools = check_tools(tools)
        time_spent_s = check_time_spent(time_spent_s)
        if source_run is not None:
            validate_identifier(source_run, "source_run")
        if source_sample is not None and (
            isinstance(source_sample, bool)
            or int(source_sample) != source_sample
            or source_sample < 0
        ):
            raise ValueError(f"source_sample: expected an integer >= 0, got {source_sample!r}")
        if parent_version is not None and (
            isinstance(parent_version, bool)
            or int(parent_version) != parent_version
            or parent_version < 1
        ):
            raise ValueError(f"parent_version: expected an integer >= 1, got {parent_version!r}")
        if not isinstance(note, str):
            raise ValueError(f"note: expected a string, got {type(note).__name__}")
        extra = to_jsonable(extra or {}, "extra")
        info = self.image_info(image_id)
        arr = self._check_mask(mask, info["shape"])
        with self._writing(image_id) as stage:
            versions = self._load_versions(image_id, rater)
            prev = versions[-1] if versions else None
            if parent_version is not None and parent_version > len(versions):
                raise ValueError(
                    f"parent_version: rater {rater!r} has no version {parent_version} of {image_id!r}"
                )
            arr = arr.astype(label_dtype(arr, prev.dtype if prev else None), copy=False)
            number = len(versions) + 1
            ann_dir = self._ann_dir(image_id, rater)
            if not ann_dir.is_dir():
                image_dir = self._image_dir(image_id)
                self._check_new_name(
                    [image_dir / "annotations", image_dir / "drafts"], rater, "rater"
                )
                make_dirs(ann_dir, staging=stage)
                self._write_manifest(image_id, rater, [], stage)
            target = ann_dir / version_name(number)
            if target.exists():  # written by a writer that died before committing
                remove_tree(target, staging=stage)
            parent_dir = ann_dir / version_name(prev.version) if prev else None
            record, stats = write_array(
                stage / "version",
                arr,
                chunks=info["label_chunks"],
                dimension_names=SPATIAL_AXES[-arr.ndim :],
                parent=parent_dir,
                attributes={"image_id": image_id, "rater": rater, "version": number},
            )
            based_on = None if parent_version is None else int(parent_version)
            version = AnnotationVersion(
                image_id=image_id,
                rater=rater,
                version=number,
                role=role,
                tools=tools,
                time_spent_s=time_spent_s,
                source_run=source_run,
                source_sample=None if source_sample is None else int(source_sample),
                note=note,
                created=utc_now(),
                started=started,
                based_on=based_on,
                previous=prev.version if prev else None,
                conflict=prev is not None and based_on != prev.version,
                shape=tuple(arr.shape),
                dtype=record["dtype"],
                labels=present_labels(arr),
                content_hash=record["content_hash"],
                chunks_written=stats.chunks_written,
                chunks_linked=stats.chunks_linked,
                bytes_written=stats.bytes_written,
                software=f"napari-probseg {__version__}",
                extra=extra,
            )
            rename_into(stage / "version", target, staging=stage)
            self._write_manifest(image_id, rater, [*versions, version], stage)  # the commit
            self._sync_label(image_id, rater, version, stage)
            if not keep_draft:
                remove_tree(self._image_dir(image_id) / "drafts" / rater, staging=stage)
        return version

    # --- summary -----------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """JSON-able summary: schema, class names, and per image its shape, raters, runs, drafts."""
        images = []
        for image_id in self.image_ids():
            entry: dict[str, Any] = {"image_id": image_id}
            try:
                rec = self.image_info(image_id)
                entry.update(shape=list(rec["shape"]), dtype=rec["dtype"], scale=list(rec["scale"]))
                entry["raters"] = {
                    r: {"versions": len(h), "latest": h[-1].created, "role": h[-1].role}
                    for r in self.raters(image_id)
                    for h in [self._load_versions(image_id, r)]
                }
                entry["predictions"] = [p["run_id"] for p in self.list_predictions(image_id)]
                entry["drafts"] = self.draft_raters(image_id)
            except StoreCorruptionError as exc:
                entry["error"] = str(exc)
            images.append(entry)
        return {
            "path": str(self.path),
            "schema_version": self.schema_version,
            "created": self._root.get("created"),
            "software": self._root.get("software"),
            "class_names": self.class_names,
            "n_images": len(images),
            "images": images,
        }
