"""Standalone prediction output (``probseg predict --out``): one zarr v3 group per result.

Layout of ``<path>`` (a zarr v3 directory store)::

    <path>/
      zarr.json                 group; attributes below
      samples                   uint8 (N, *spatial), chunks (1, <=64 or 256 per axis): argmax labels
      mean_probs                float32|float16 (K, *spatial)
      variance                  float32|float16 (K, *spatial)
      predictive_entropy        float32|float16 (*spatial), nats
      expected_entropy          float32|float16 (*spatial), nats
      mutual_information        float32|float16 (*spatial), nats
      volumes                   float64 (N,): expected foreground volume per sample, in voxels

Group attributes (JSON): ``napari_probseg`` = ``{"kind": "prediction", "format_version": 1}``,
``method``, ``source``, ``n_samples``, ``meanings``, ``class_names``, ``scale``,
``input_signature``, ``units``, ``foreground_classes``, ``regions`` (a list of region dicts or
None) and ``provenance`` (card sha256, method parameters, N, seed, device, versions, timings,
warnings). Array ``dimension_names`` are set (``sample``/``class``, then ``z``, ``y``, ``x``).
``samples`` is absent when the result kept no samples.

The multi-rater project store (``napari_probseg.store``) is separate; this is a single result.
The group is written to a temporary sibling directory and renamed into place, so a crash never
leaves a half-written result under ``path``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from napari_probseg.core._serialize import to_jsonable
from napari_probseg.engine._types import PredictionResult

FORMAT_VERSION = 1
_MAPS = ("mean_probs", "variance", "predictive_entropy", "expected_entropy", "mutual_information")


def _dims(n_spatial: int) -> tuple[str, ...]:
    return (
        ("z", "y", "x")[-n_spatial:] if n_spatial <= 3 else tuple(f"d{i}" for i in range(n_spatial))
    )


def _chunks(shape: tuple[int, ...], lead: int) -> tuple[int, ...]:
    spatial = shape[lead:]
    edge = 256 if len(spatial) <= 2 else 64
    return (1,) * lead + tuple(min(s, edge) for s in spatial)


def is_prediction_output(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``probseg predict`` (its root zarr attributes say
    ``napari_probseg.kind == "prediction"``); only such a folder may be replaced."""
    meta = path / "zarr.json"
    if path.is_symlink() or not path.is_dir() or meta.is_symlink() or not meta.is_file():
        return False
    try:
        attrs = json.loads(meta.read_text(encoding="utf-8")).get("attributes", {})
        return attrs.get("napari_probseg", {}).get("kind") == "prediction"
    except (OSError, ValueError, AttributeError):
        return False


def save_result(
    result: PredictionResult,
    path: str | os.PathLike,
    *,
    regions: Any = None,
    map_dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Write a prediction result as a zarr v3 group (layout in the module docstring).

    Parameters
    ----------
    result : PredictionResult
        From :func:`napari_probseg.engine.predict`.
    path : str or path-like
        Directory to create (conventionally ending in ``.zarr``).
    regions : list of dict or object with ``to_dict()``, optional
        Top-uncertainty regions to store in the attributes (JSON-able).
    map_dtype : {"float32", "float16"}
        Storage dtype of the probability and uncertainty maps.
    overwrite : bool
        Replace an existing ``path``; otherwise an existing path is an error.

    Returns
    -------
    Path
        The written group.

    Raises
    ------
    ValueError
        ``map_dtype: ...`` not float32/float16.
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    import zarr

    if map_dtype not in ("float32", "float16"):
        raise ValueError(f"map_dtype: expected 'float32' or 'float16', got {map_dtype!r}")
    path = Path(path)
    streamed = result.provenance.get("output")
    if streamed is not None and path.exists() and Path(streamed).resolve() == path.resolve():
        # predict(..., output=path) already streamed the arrays here: only the attributes change
        write_result_attrs(result, path, regions=regions)
        return path
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(
                f"out: {path} exists (pass overwrite=True / --overwrite to replace it)"
            )
        if not is_prediction_output(path):
            # never delete a folder that is not recognisably ours (a home folder, a store, a link)
            raise FileExistsError(
                f"out: {path} is not a probseg prediction output; refusing to replace it"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        maps = result.maps.to_numpy() if hasattr(result.maps, "to_numpy") else result.maps
        n_spatial = len(result.spatial_shape)
        if result.samples is not None:
            samples = np.asarray(result.samples)
            group.create_array(
                "samples",
                data=samples,
                chunks=_chunks(samples.shape, 1),
                dimension_names=("sample", *_dims(n_spatial)),
            )
        for name in _MAPS:
            data = np.asarray(getattr(maps, name)).astype(map_dtype, copy=False)
            lead = data.ndim - n_spatial
            group.create_array(
                name,
                data=data,
                chunks=_chunks(data.shape, lead),
                dimension_names=(("class",) if lead else ()) + _dims(n_spatial),
            )
        group.create_array(
            "volumes", data=np.asarray(maps.volumes, np.float64), dimension_names=("sample",)
        )
        group.attrs.update(_result_attrs(result, regions))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _result_attrs(result: PredictionResult, regions: Any) -> dict:
    maps = result.maps
    attrs = {
        "napari_probseg": {"kind": "prediction", "format_version": FORMAT_VERSION},
        "method": result.method,
        "source": list(result.source),
        "n_samples": result.n_samples,
        "meanings": result.meanings,
        "class_names": list(result.class_names),
        "scale": list(result.scale),
        "input_signature": result.input_signature,
        "units": getattr(maps, "units", "nats"),
        "foreground_classes": list(getattr(maps, "foreground_classes", ())),
        "regions": to_jsonable(regions) if regions is not None else None,
        "provenance": result.provenance,
    }
    return json.loads(json.dumps(to_jsonable(attrs)))


def write_result_attrs(result: PredictionResult, path: str | os.PathLike, *, regions=None) -> None:
    """Write the group attributes of a result whose arrays were streamed to ``path``."""
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    group.attrs.update(_result_attrs(result, regions))


def open_stream_store(
    path: str | os.PathLike,
    *,
    n_samples: int,
    n_classes: int,
    spatial: tuple[int, ...],
    keep_samples: bool,
    label_dtype: Any = np.uint8,
    map_dtype: str = "float32",
) -> tuple[Path, dict]:
    """Create the arrays of a prediction group in a temporary sibling of ``path``.

    Returns the temporary folder and the zarr arrays to fill (``samples`` None unless kept; maps
    stored as ``map_dtype``); the group becomes ``path`` in :func:`finish_stream_store`, so a
    crash leaves nothing at ``path``.
    """
    import zarr

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    group.attrs.update({"napari_probseg": {"kind": "prediction-partial"}})
    n_spatial = len(spatial)
    out: dict[str, Any] = {"samples": None}
    if keep_samples:
        shape = (int(n_samples), *spatial)
        out["samples"] = group.create_array(
            "samples",
            shape=shape,
            dtype=label_dtype,
            chunks=_chunks(shape, 1),
            dimension_names=("sample", *_dims(n_spatial)),
            fill_value=0,
        )
    for name in _MAPS:
        shape = (int(n_classes), *spatial) if name in ("mean_probs", "variance") else spatial
        lead = len(shape) - n_spatial
        out[name] = group.create_array(
            name,
            shape=shape,
            dtype=map_dtype,
            chunks=_chunks(shape, lead),
            dimension_names=(("class",) if lead else ()) + _dims(n_spatial),
            fill_value=0.0,
        )
    return tmp, out


def finish_stream_store(tmp: Path, path: str | os.PathLike, *, volumes: Any) -> tuple[dict, Path]:
    """Write ``volumes``, move ``tmp`` to ``path`` and return its arrays (opened read-only)."""
    import zarr

    path = Path(path)
    group = zarr.open_group(str(tmp), mode="r+")
    group.create_array("volumes", data=np.asarray(volumes, np.float64), dimension_names=("sample",))
    if path.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        raise FileExistsError(f"output: {path} appeared while predicting; nothing was replaced")
    os.replace(tmp, path)
    group = zarr.open_group(str(path), mode="r")
    names = set(group.array_keys())
    out = {name: group[name] for name in _MAPS}
    out["samples"] = group["samples"] if "samples" in names else None
    return out, path


def load_result(path: str | os.PathLike) -> tuple[PredictionResult, Any]:
    """Read a group written by :func:`save_result`.

    Returns
    -------
    result : PredictionResult
        With numpy maps (read into memory).
    regions : list or None
        The stored regions attribute.

    Raises
    ------
    ValueError
        ``path: ...`` when the group is not a napari-probseg prediction.
    """
    import zarr

    from napari_probseg.core.uncertainty import UncertaintyMaps

    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    if attrs.get("napari_probseg", {}).get("kind") != "prediction":
        raise ValueError(f"path: {path} is not a napari-probseg prediction group")
    names = set(group.array_keys())
    maps = UncertaintyMaps(
        **{name: np.asarray(group[name][...], np.float32) for name in _MAPS},
        volumes=np.asarray(group["volumes"][...]),
        n_samples=int(attrs["n_samples"]),
        units=attrs.get("units", "nats"),
        foreground_classes=tuple(attrs.get("foreground_classes", ())),
    )
    result = PredictionResult(
        samples=np.asarray(group["samples"][...]) if "samples" in names else None,
        maps=maps,
        method=attrs["method"],
        source=tuple(attrs["source"]),
        n_samples=int(attrs["n_samples"]),
        meanings=attrs["meanings"],
        class_names=list(attrs["class_names"]),
        scale=tuple(attrs["scale"]),
        input_signature=attrs["input_signature"],
        provenance=attrs["provenance"],
    )
    return result, attrs.get("regions")
