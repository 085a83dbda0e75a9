"""File-system primitives of the store: atomic JSON replacement, locks, staging, fsync.

Every commit follows the same pattern: write the new data completely in a staging directory
(``<store>/.probseg/tmp``, same file system as the target), fsync it, move it into place with one
``os.rename``/``os.replace``, fsync the parent directory.
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

from napari_probseg.store._errors import StoreCorruptionError, StoreError

try:  # POSIX advisory locks; released by the kernel when a process dies.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Seconds a writer waits for another writer's lock before giving up.
LOCK_TIMEOUT_S = 120.0


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
    path = Path(path)
    staging = Path(staging)
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
    path = Path(path)
    if not path.exists():
        return
    Path(staging).mkdir(parents=True, exist_ok=True)
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
    tmp = Path(staging) / f"{uuid.uuid4().hex}.chunk"
    shutil.copyfile(src, tmp)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dst)
    return os.path.getsize(dst)


@contextlib.contextmanager
def file_lock(path: str | Path, *, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if needed) for the ``with`` block.

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
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
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
