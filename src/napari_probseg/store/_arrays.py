"""Chunked zarr v3 arrays with a per-chunk checksum index, chunk sharing and OME-Zarr metadata.

Every array the store writes records, in its own ``zarr.json`` attributes, the blake2b hash of each
stored chunk file (``chunk_index``) and of the whole decoded content (``content_hash``). Reads and
:func:`check_array` use them to detect truncated, garbled, missing or unexpected chunk files
(a missing chunk would otherwise silently read as the fill value).

A new version of an array may name a ``parent`` with the same shape, dtype and chunk grid: chunks
whose content did not change are hard links to the parent's chunk files (immutable), so only the
changed chunks are written.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from napari_probseg.store._errors import StoreCorruptionError
from napari_probseg.store._fs import fsync_dir, fsync_file, link_or_copy, read_json
from napari_probseg.store._meta import Problem

SPATIAL_AXES = ("z", "y", "x")
_KEY_ENCODING = {"name": "default", "separator": "/"}


@dataclass(frozen=True)
class WriteStats:
    """What writing one array cost: chunk files written, hard-linked, and bytes written."""

    chunks_written: int
    chunks_linked: int
    bytes_written: int


def content_hash(data: np.ndarray) -> str:
    """blake2b hash of an array's dtype, shape and C-order bytes."""
    data = np.ascontiguousarray(data)
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{data.dtype.str}|{data.shape}|".encode())
    h.update(memoryview(data).cast("B"))
    return h.hexdigest()


def file_hash(path: str | Path) -> str:
    """64-bit blake2b hash of a file's bytes (detects damage; short, as the index is per chunk)."""
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def default_chunks(shape: tuple[int, ...], *, label: bool) -> tuple[int, ...]:
    """Chunk shape: thin slabs for 3D labels so that a one-slice correction rewrites little.

    3D labels use (2, 256, 256): the same chunk volume as (8, 128, 128), but a correction of a
    whole slice of a 256x512x512 annotation writes 25x fewer bytes than a rewrite instead of
    7.6x (``python -m benchmarks store``); depth 1 at 128x128 does worse (15.6x): its longer
    per-chunk checksum index outweighs the thinner slab.
    """
    if len(shape) == 3:
        target = (2, 256, 256) if label else (16, 256, 256)
    else:
        target = (256, 256)
    return tuple(max(1, min(t, s)) for t, s in zip(target, shape))


def _grid(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(-(-s // c) for s, c in zip(shape, chunks))


def _slices(idx: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, chunks))


def chunk_path(array_dir: str | Path, key: str) -> Path:
    """File of chunk ``key`` (``"i/j/k"``) of a zarr v3 array with default key encoding."""
    return Path(array_dir, "c", *key.split("/"))


def list_chunk_keys(array_dir: str | Path) -> set[str]:
    """Keys of the chunk files present under ``array_dir/c``."""
    base = Path(array_dir, "c")
    keys = set()
    for root, _dirs, files in os.walk(base):
        rel = os.path.relpath(root, base)
        for name in files:
            keys.add(name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}")
    return keys


def read_array_meta(array_dir: str | Path) -> dict[str, Any]:
    """Return shape, dtype, chunks, chunk index and content hash recorded for an array.

    Raises
    ------
    StoreCorruptionError
        Naming ``zarr.json`` if it is missing, unreadable or inconsistent.
    """
    path = Path(array_dir, "zarr.json")
    try:
        meta = read_json(path)
    except FileNotFoundError:
        raise StoreCorruptionError(path, "missing array metadata") from None
    try:
        assert meta["zarr_format"] == 3 and meta["node_type"] == "array"
        shape = tuple(int(s) for s in meta["shape"])
        chunks = tuple(int(c) for c in meta["chunk_grid"]["configuration"]["chunk_shape"])
        dtype = np.dtype(meta["data_type"]).str
        probseg = meta["attributes"]["probseg"]
        index = dict(probseg["chunk_index"])
        chash = str(probseg["content_hash"])
        assert len(chunks) == len(shape) and all(c > 0 for c in chunks)
        encoding = meta["chunk_key_encoding"]
        assert encoding["name"] == "default"
        assert encoding.get("configuration", {}).get("separator", "/") == "/"
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        raise StoreCorruptionError(path, f"malformed array metadata ({exc!r})") from None
    return {"shape": shape, "dtype": dtype, "chunks": chunks, "index": index, "content_hash": chash}


def write_array(
    dest: str | Path,
    data: np.ndarray,
    *,
    chunks: tuple[int, ...],
    dimension_names: tuple[str, ...] | None = None,
    parent: str | Path | None = None,
    attributes: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], WriteStats]:
    """Write ``data`` as a new zarr v3 array at ``dest`` (which must not exist), with its index.

    Parameters
    ----------
    dest : path
        Directory of the new array (normally in the staging area).
    data : ndarray, shape (*S)
        Array content.
    chunks : tuple of int
        Chunk shape, one entry per axis.
    dimension_names : tuple of str, optional
        Axis names recorded in the zarr metadata (OME-Zarr 0.5 requires them).
    parent : path, optional
        An existing array with the same shape, dtype and chunks: unchanged chunks are hard-linked
        from it instead of written (falls back to writing everything if it cannot be read).
    attributes : dict, optional
        Extra entries for ``attributes.probseg``.

    Returns
    -------
    record : dict
        ``shape``, ``dtype``, ``chunks``, ``content_hash``.
    stats : WriteStats
        Chunk files written and linked, bytes written.
    """
    dest = Path(dest)
    data = np.ascontiguousarray(data)
    arr = zarr.create_array(
        store=str(dest),
        shape=data.shape,
        chunks=tuple(chunks),
        dtype=data.dtype,
        fill_value=0,
        dimension_names=dimension_names,
        chunk_key_encoding=_KEY_ENCODING,
        zarr_format=3,
    )
    parent_data, parent_index = None, {}
    if parent is not None:
        try:
            pmeta = read_array_meta(parent)
            if (pmeta["shape"], pmeta["dtype"], pmeta["chunks"]) == (
                data.shape,
                data.dtype.str,
                tuple(chunks),
            ):
                parent_data = zarr.open_array(str(parent), mode="r")[...]
                parent_index = pmeta["index"]
        except Exception:  # a damaged parent must never block a save: write everything
            parent_data, parent_index = None, {}
    linked: set[str] = set()
    if parent_data is None:
        arr[...] = data  # zarr skips chunks that hold only the fill value
    else:
        for idx in np.ndindex(*_grid(data.shape, chunks)):
            sl = _slices(idx, chunks)
            key = "/".join(map(str, idx))
            if np.array_equal(data[sl], parent_data[sl]):
                if key not in parent_index:
                    continue  # both hold only the fill value: no chunk file
                src = chunk_path(parent, key)
                # A damaged parent must never block a save nor spread: link only a chunk file
                # that is present and matches the parent's index, else write the data afresh.
                try:
                    if file_hash(src) == parent_index[key]:
                        dst = chunk_path(dest, key)
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        if link_or_copy(src, dst):
                            linked.add(key)
                        continue
                except OSError:
                    pass
            arr[sl] = data[sl]
    index, written, nbytes = {}, 0, 0
    for key in sorted(list_chunk_keys(dest)):
        if key in linked:
            index[key] = parent_index[key]
            continue
        path = chunk_path(dest, key)
        index[key] = file_hash(path)
        fsync_file(path)
        written += 1
        nbytes += path.stat().st_size
    chash = content_hash(data)
    # Compact JSON (the chunk index can be long): written directly, the array is still in staging.
    meta = read_json(dest / "zarr.json")
    meta["attributes"] = {
        "probseg": {
            "kind": "array",
            "content_hash": chash,
            "chunk_index": index,
            **(attributes or {}),
        }
    }
    (dest / "zarr.json").write_bytes(json.dumps(meta, separators=(",", ":")).encode("utf-8"))
    for root, _dirs, _files in os.walk(dest):
        fsync_dir(root)
    fsync_file(dest / "zarr.json")
    nbytes += (dest / "zarr.json").stat().st_size
    record = {
        "shape": list(data.shape),
        "dtype": data.dtype.str,
        "chunks": list(chunks),
        "content_hash": chash,
    }
    return record, WriteStats(written, len(linked), nbytes)


def _find_bad_chunk(array_dir: Path, meta: dict[str, Any]) -> tuple[Path | None, str]:
    """Locate the first chunk whose file is missing, garbled or fails to decode."""
    for key, expected in sorted(meta["index"].items()):
        path = chunk_path(array_dir, key)
        if not path.is_file():
            return path, "missing chunk file"
        if file_hash(path) != expected:
            return path, "chunk file checksum mismatch (truncated or overwritten)"
    extra = list_chunk_keys(array_dir) - set(meta["index"])
    if extra:
        return chunk_path(array_dir, sorted(extra)[0]), "unexpected chunk file"
    try:
        arr = zarr.open_array(str(array_dir), mode="r")
        for idx in np.ndindex(*_grid(meta["shape"], meta["chunks"])):
            try:
                arr[_slices(idx, meta["chunks"])]
            except Exception as exc:
                return chunk_path(array_dir, "/".join(map(str, idx))), f"cannot decode ({exc})"
    except Exception as exc:
        return array_dir / "zarr.json", f"cannot open array ({exc})"
    return None, ""


def read_array(
    array_dir: str | Path,
    *,
    shape: tuple[int, ...] | None = None,
    dtype: str | None = None,
    expected_hash: str | None = None,
    check: bool = True,
) -> np.ndarray:
    """Read a whole array written by :func:`write_array`, validating it.

    Raises
    ------
    StoreCorruptionError
        Naming the damaged chunk file or metadata file (shape/dtype disagreeing with the expected
        ones, missing or unexpected chunks, undecodable chunk, content hash mismatch).
    """
    array_dir = Path(array_dir)
    meta = read_array_meta(array_dir)
    zpath = array_dir / "zarr.json"
    if shape is not None and tuple(shape) != meta["shape"]:
        raise StoreCorruptionError(zpath, f"shape {meta['shape']} != recorded {tuple(shape)}")
    if dtype is not None and np.dtype(dtype).str != meta["dtype"]:
        raise StoreCorruptionError(zpath, f"dtype {meta['dtype']} != recorded {dtype}")
    if expected_hash is not None and expected_hash != meta["content_hash"]:
        raise StoreCorruptionError(zpath, "content hash disagrees with the version record")
    if check:
        present = list_chunk_keys(array_dir)
        missing = set(meta["index"]) - present
        if missing:
            raise StoreCorruptionError(
                chunk_path(array_dir, sorted(missing)[0]), "missing chunk file"
            )
        extra = present - set(meta["index"])
        if extra:
            raise StoreCorruptionError(
                chunk_path(array_dir, sorted(extra)[0]), "unexpected chunk file"
            )
    try:
        data = zarr.open_array(str(array_dir), mode="r")[...]
    except Exception as exc:
        bad, why = _find_bad_chunk(array_dir, meta)
        raise StoreCorruptionError(bad or zpath, why or f"cannot read ({exc})") from None
    if check and content_hash(data) != meta["content_hash"]:
        bad, why = _find_bad_chunk(array_dir, meta)
        raise StoreCorruptionError(bad or array_dir, why or "content hash mismatch")
    return data


def check_array(
    array_dir: str | Path,
    *,
    shape: tuple[int, ...] | None = None,
    dtype: str | None = None,
    expected_hash: str | None = None,
    severity: str = "error",
    repairable: bool = False,
    cache: dict[tuple[int, ...], str] | None = None,
) -> list[Problem]:
    """Check every chunk file and the decoded content of an array; return the problems found.

    ``cache`` maps ``(st_dev, st_ino, size, mtime_ns)`` to a file hash so that chunk files shared
    by several versions (hard links) are hashed once.
    """
    array_dir = Path(array_dir)
    cache = {} if cache is None else cache

    def problem(path: Path, msg: str) -> Problem:
        return Problem(severity, str(path), msg, repairable=repairable)

    try:
        meta = read_array_meta(array_dir)
    except StoreCorruptionError as exc:
        return [problem(Path(exc.path), exc.reason)]
    zpath = array_dir / "zarr.json"
    out = []
    if shape is not None and tuple(shape) != meta["shape"]:
        out.append(problem(zpath, f"shape {meta['shape']} != recorded {tuple(shape)}"))
    if dtype is not None and np.dtype(dtype).str != meta["dtype"]:
        out.append(problem(zpath, f"dtype {meta['dtype']} != recorded {dtype}"))
    if expected_hash is not None and expected_hash != meta["content_hash"]:
        out.append(problem(zpath, "content hash disagrees with the version record"))
    for key, expected in sorted(meta["index"].items()):
        path = chunk_path(array_dir, key)
        try:
            st = path.stat()
        except FileNotFoundError:
            out.append(problem(path, "missing chunk file"))
            continue
        sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if sig not in cache:
            cache[sig] = file_hash(path)
        if cache[sig] != expected:
            out.append(problem(path, "chunk file checksum mismatch (truncated or overwritten)"))
    for key in sorted(list_chunk_keys(array_dir) - set(meta["index"])):
        out.append(problem(chunk_path(array_dir, key), "unexpected chunk file"))
    if not out:
        try:
            data = zarr.open_array(str(array_dir), mode="r")[...]
            if content_hash(data) != meta["content_hash"]:
                out.append(problem(array_dir, "decoded content does not match its content hash"))
        except Exception as exc:
            bad, why = _find_bad_chunk(array_dir, meta)
            out.append(problem(bad or zpath, why or f"cannot decode ({exc})"))
    return out


# --- OME-Zarr 0.5 metadata -------------------------------------------------------------------


def multiscales(
    name: str, scale: tuple[float, ...], unit: str | None = None, *, path: str = "0"
) -> list[dict]:
    """One-level OME-Zarr 0.5 ``multiscales`` for spatial axes (z, y, x) or (y, x)."""
    axes = []
    for n in SPATIAL_AXES[-len(scale) :]:
        axis = {"name": n, "type": "space"}
        if unit:
            axis["unit"] = unit
        axes.append(axis)
    return [
        {
            "name": name,
            "axes": axes,
            "datasets": [
                {
                    "path": path,
                    "coordinateTransformations": [{"type": "scale", "scale": list(scale)}],
                }
            ],
        }
    ]


def image_attrs(name: str, scale: tuple[float, ...], unit: str | None, probseg: dict) -> dict:
    """Attributes of an OME-Zarr image group."""
    return {
        "ome": {"version": "0.5", "multiscales": multiscales(name, scale, unit)},
        "probseg": probseg,
    }


def label_attrs(
    name: str, scale: tuple[float, ...], unit: str | None, probseg: dict, *, path: str = "0"
) -> dict:
    """Attributes of an OME-Zarr label image (``image-label`` pointing back at the image);
    ``path`` names its array."""
    return {
        "ome": {
            "version": "0.5",
            "multiscales": multiscales(name, scale, unit, path=path),
            "image-label": {"version": "0.5", "source": {"image": "../../"}},
        },
        "probseg": probseg,
    }


def labels_list_attrs(raters: list[str]) -> dict:
    """Attributes of an image's ``labels`` group: the list of label images (one per rater)."""
    return {"ome": {"version": "0.5", "labels": list(raters)}, "probseg": {"kind": "labels"}}
