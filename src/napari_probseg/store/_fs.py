"""File-system primitives of the store: atomic JSON replacement, locks, staging, fsync.

Every commit follows the same pattern: write the new data completely in a staging directory
(``<store>/.probseg/tmp``, same file system as the target), fsync it, move it into place with one
``os.rename``/``os.replace``, fsync the parent directory.

Path safety: the store never follows a symbolic link. Every helper here that writes, renames or
deletes first checks its target with :func:`check_within` (no link on the way from the store root,
resolved path inside the root); the store root is the folder holding the ``.probseg`` staging
directory the helper is given.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from napari_probseg.store._errors import StoreCorruptionError, StoreError, StoreLinkError

try:  # POSIX advisory locks; released by the kernel when a process dies.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Seconds a writer waits for another writer's lock before giving up.
LOCK_TIMEOUT_S = 120.0


INTERNAL = ".probseg"


def store_root_of(staging: str | Path) -> Path:
    """The store root above a staging directory (``<root>/.probseg/tmp[/...]``)."""
    staging = Path(os.path.abspath(staging))
    for parent in (staging, *staging.parents):
        if parent.name == INTERNAL:
            return parent.parent
    raise StoreError(f"staging: {staging} is not inside a store's {INTERNAL} folder")


def check_within(path: str | Path, root: str | Path) -> Path:
    """Return ``path`` if writing or deleting it cannot reach outside ``root``.

    Every existing component from ``root`` down to ``path`` must be a real directory or file (no
    symbolic link), and the resolved path must lie inside the resolved root. ``root`` itself may
    be reached through links (the user named it).

    Raises
    ------
    StoreLinkError
        Naming the link (or the path that resolves outside the store).
    """
    root_abs = Path(os.path.abspath(root))
    target = Path(os.path.abspath(path))
    try:
        parts = target.relative_to(root_abs).parts
    except ValueError:
        raise StoreLinkError(target, f"outside the store {root_abs}") from None
    current = root_abs
    for part in parts:
        current = current / part
        if os.path.islink(current):
            raise StoreLinkError(
                current,
                f"is a symbolic link (to {os.readlink(current)!r}); the store never follows "
                "links -- remove it",
            )
    real_root = os.path.realpath(root_abs)
    real = os.path.realpath(target)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise StoreLinkError(target, f"resolves to {real}, outside the store {real_root}")
    return target


def find_links(top: str | Path) -> list[Path]:
    """Every symbolic link below ``top`` (files and folders), without following any."""
    found = []
    for root, dirs, files in os.walk(top, followlinks=False):
        for name in dirs + files:
            p = os.path.join(root, name)
            if os.path.islink(p):
                found.append(Path(p))
    return sorted(found)


def _guard(path: str | Path, staging: str | Path) -> Path:
    return check_within(path, store_root_of(staging))


def make_dirs(path: str | Path, *, staging: str | Path) -> Path:
    """``mkdir -p`` inside the store (checked with :func:`check_within`)."""
    path = _guard(path, staging)
    path.mkdir(parents=True, exist_ok=True)
    return path


def rename_into(src: str | Path, dst: str | Path, *, staging: str | Path) -> None:
    """Move a staged file or folder to ``dst`` (one ``os.rename``), then fsync ``dst``'s parent."""
    _guard(src, staging)
    dst = _guard(dst, staging)
    os.rename(src, dst)
    fsync_dir(dst.parent)


def remove_file(path: str | Path, *, staging: str | Path) -> None:
    """Delete one file inside the store (missing is fine)."""
    _guard(path, staging).unlink(missing_ok=True)


def fsync_dir(path: str | Path) -> None:
    """Flush a directory entry (after a rename) to disk; a no-op where unsupported."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    """Flush one file's data to disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_tree(path: str | Path) -> None:
    """Flush every file and directory below ``path`` (a freshly staged tree)."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            fsync_file(os.path.join(root, name))
        fsync_dir(root)


def read_json(path: str | Path) -> Any:
    """Read a JSON file; raise :class:`StoreCorruptionError` naming it if it is unreadable."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StoreCorruptionError(path, f"cannot read ({exc})") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreCorruptionError(path, f"invalid JSON ({exc})") from None


def read_attrs(node_dir: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Return ``attributes.probseg`` of a zarr v3 node, checking its ``kind`` if given."""
    path = Path(node_dir) / "zarr.json"
    meta = read_json(path)
    if not isinstance(meta, dict) or meta.get("zarr_format") != 3:
        raise StoreCorruptionError(path, "not zarr v3 metadata")
    attrs = meta.get("attributes", {})
    probseg = attrs.get("probseg") if isinstance(attrs, dict) else None
    if not isinstance(probseg, dict):
        raise StoreCorruptionError(path, "missing 'probseg' attributes")
    if kind is not None and probseg.get("kind") != kind:
        raise StoreCorruptionError(path, f"expected a {kind!r} node, got {probseg.get('kind')!r}")
    return probseg


def group_json(attributes: dict[str, Any]) -> dict[str, Any]:
    """Metadata document of a zarr v3 group with ``attributes``."""
    return {"zarr_format": 3, "node_type": "group", "attributes": attributes}


def atomic_write_json(path: str | Path, obj: Any, *, staging: str | Path) -> None:
    """Replace ``path`` by the JSON of ``obj`` in one atomic step (fsync + ``os.replace``).

    The temporary file is written in ``staging`` (same file system) so that no stray file is left
    in zarr groups after a crash.
    """
    path = _guard(path, staging)
    staging = _guard(staging, staging)
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / f"{uuid.uuid4().hex}.json"
    data = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def remove_tree(path: str | Path, *, staging: str | Path) -> None:
    """Remove a directory so that it disappears atomically (rename away, then delete)."""
    path = _guard(path, staging)
    if not path.exists():
        return
    _guard(staging, staging).mkdir(parents=True, exist_ok=True)
    trash = Path(staging) / f"trash-{uuid.uuid4().hex}"
    os.rename(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def link_or_copy(src: str | Path, dst: str | Path) -> bool:
    """Hard-link ``src`` to ``dst`` (immutable chunk files share storage); copy where links fail.

    Returns True if a link was made (no data bytes written).
    """
    try:
        os.link(src, dst)
        return True
    except OSError:
        shutil.copyfile(src, dst)
        return False


def copy_file_atomic(src: str | Path, dst: str | Path, *, staging: str | Path) -> int:
    """Copy ``src`` over ``dst`` with an atomic replace; return the bytes written."""
    tmp = _guard(staging, staging) / f"{uuid.uuid4().hex}.chunk"
    dst = _guard(dst, staging)
    shutil.copyfile(src, tmp)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dst)
    return os.path.getsize(dst)


@contextlib.contextmanager
def file_lock(
    path: str | Path, *, timeout: float = LOCK_TIMEOUT_S, shared: bool = False
) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if needed) for the ``with`` block.

    ``shared=True`` takes a shared (reader) lock instead: writers wait for it, readers do not.
    ``timeout=0`` tries once (:class:`StoreError` if the lock is held).

    Uses ``fcntl.flock`` (the kernel releases it if the process dies, so a killed writer never
    leaves a stale lock); falls back to the ``filelock`` package where ``fcntl`` is missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - Windows
        import filelock

        try:
            with filelock.FileLock(str(path), timeout=timeout):
                yield
        except filelock.Timeout:
            raise StoreError(
                f"{path}: locked by another writer for more than {timeout:g} s"
            ) from None
        return
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"{path}: locked by another writer for more than {timeout:g} s"
                    ) from None
                time.sleep(0.005)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
