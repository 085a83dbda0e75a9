"""Prediction runs stored beside each image: arrays (samples, probabilities, maps) + JSON metadata."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from napari_probseg.core._validation import to_numpy
from napari_probseg.store._arrays import read_array, write_array
from napari_probseg.store._errors import StoreCorruptionError
from napari_probseg.store._fs import (
    atomic_write_json,
    fsync_dir,
    fsync_tree,
    group_json,
    make_dirs,
    read_attrs,
    rename_into,
)
from napari_probseg.store._meta import to_jsonable, utc_now, validate_identifier, zarr_children


def _compact(arr: np.ndarray, float_dtype: str | None) -> np.ndarray:
    """Integer arrays (sample masks) to the smallest unsigned dtype; floats to ``float_dtype``."""
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and arr.min() >= 0:
            top = int(arr.max())
            for dt in (np.uint8, np.uint16, np.uint32):
                if top <= np.iinfo(dt).max:
                    return arr.astype(dt, copy=False)
        return arr
    if np.issubdtype(arr.dtype, np.floating) and float_dtype is not None:
        return arr.astype(float_dtype, copy=False)
    return arr


class PredictionsMixin:
    """Prediction-run methods of :class:`ProjectStore`.

    Layout: ``images/<id>/predictions/<run_id>/`` is a zarr group whose attributes hold the run's
    JSON metadata (provenance, regions, aggregate scores...) and whose child arrays are the named
    maps, each with the image's spatial shape as trailing axes. A run is written in staging and
    moved into place with one rename, so it is either complete or absent.
    """

    def save_prediction(
        self,
        image_id: str,
        arrays: Mapping[str, Any] | Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        float_dtype: str | None = "float32",
    ) -> str:
        """Store a prediction run of ``image_id``; return its run id.

        Parameters
        ----------
        image_id : str
            The image predicted.
        arrays : mapping of str to ndarray, or an object with ``to_store() -> (arrays, metadata)``
            Named arrays whose trailing axes equal the image shape, e.g. ``samples`` ``(N, *S)``
            integer masks (stored as the smallest unsigned dtype), ``probs`` ``(K, *S)``,
            ``predictive_entropy`` ``(*S)``. Names are validated identifiers.
        metadata : mapping, optional
            JSON-able run description: provenance (model card hash, method, number of samples,
            seed...), regions, scores. Merged over the metadata of ``to_store()``.
        run_id : str, optional
            Identifier; default ``run-<UTC time>-<random>``.
        float_dtype : str or None
            Floating arrays are stored with this dtype (None keeps theirs).
        """
        info = self.image_info(image_id)
        if not isinstance(arrays, Mapping) and hasattr(arrays, "to_store"):
            arrays, base = arrays.to_store()
            metadata = {**dict(base or {}), **dict(metadata or {})}
        if not isinstance(arrays, Mapping) or not arrays:
            raise ValueError("arrays: expected a non-empty mapping of name -> array")
        metadata = to_jsonable(dict(metadata or {}), "metadata")
        if run_id is None:
            stamp = utc_now().replace(":", "").replace("-", "").split(".")[0]
            run_id = f"run-{stamp}-{uuid.uuid4().hex[:6]}"
        validate_identifier(run_id, "run_id")
        shape = info["shape"]
        prepared = {}
        for name, value in arrays.items():
            validate_identifier(name, "arrays")
            arr = to_numpy(value)
            if arr.ndim < len(shape) or tuple(arr.shape[arr.ndim - len(shape) :]) != shape:
                raise ValueError(
                    f"arrays: {name!r} must end with the image shape {shape}, got {arr.shape}"
                )
            if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
                raise ValueError(f"arrays: {name!r} has non-numeric dtype {arr.dtype}")
            prepared[name] = _compact(arr, float_dtype)
        with self._writing(image_id) as stage:
            target = self._image_dir(image_id) / "predictions" / run_id
            if target.exists():
                raise ValueError(f"run_id: {run_id!r} already exists for image {image_id!r}")
            self._check_new_name([target.parent], run_id, "run_id")
            build = stage / "run"
            build.mkdir()
            records = {}
            for name, arr in prepared.items():
                lead = arr.ndim - len(shape)
                chunks = (1,) * lead + tuple(info["label_chunks"])
                dims = tuple(f"dim_{i}" for i in range(lead)) + ("z", "y", "x")[-len(shape) :]
                records[name], _ = write_array(
                    build / name, arr, chunks=chunks, dimension_names=dims
                )
            attrs = {
                "kind": "prediction",
                "image_id": image_id,
                "run_id": run_id,
                "created": utc_now(),
                "arrays": records,
                "metadata": metadata,
            }
            atomic_write_json(build / "zarr.json", group_json({"probseg": attrs}), staging=stage)
            fsync_tree(build)
            make_dirs(target.parent, staging=stage)
            rename_into(build, target, staging=stage)
            fsync_dir(target.parent)
        return run_id

    def list_predictions(self, image_id: str) -> list[dict[str, Any]]:
        """Summaries of the runs of ``image_id`` (run_id, created, arrays, metadata), oldest first."""
        base = self._image_dir(image_id) / "predictions"
        out = [read_attrs(base / run, "prediction") for run in zarr_children(base, "run_id")]
        return sorted(out, key=lambda r: (r.get("created", ""), r.get("run_id", "")))

    def read_prediction(
        self, image_id: str, run_id: str, *, names: list[str] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Return ``(arrays, metadata)`` of a run; ``names`` selects arrays (default: all)."""
        validate_identifier(run_id, "run_id")
        directory = self._image_dir(image_id) / "predictions" / run_id
        try:
            attrs = read_attrs(directory, "prediction")
        except FileNotFoundError:
            self.image_info(image_id)
            raise ValueError(f"run_id: no run {run_id!r} for image {image_id!r}") from None
        records = attrs["arrays"]
        for name in records:  # names come from the store: never a path
            try:
                validate_identifier(name, "array")
            except ValueError:
                raise StoreCorruptionError(
                    directory / "zarr.json", f"invalid array name {name!r}"
                ) from None
        wanted = list(records) if names is None else list(names)
        for name in wanted:
            if name not in records:
                raise ValueError(
                    f"names: run {run_id!r} has no array {name!r} (has {sorted(records)})"
                )
        arrays = {
            name: read_array(
                directory / name,
                shape=tuple(records[name]["shape"]),
                dtype=records[name]["dtype"],
                expected_hash=records[name]["content_hash"],
            )
            for name in wanted
        }
        return arrays, attrs.get("metadata", {})
