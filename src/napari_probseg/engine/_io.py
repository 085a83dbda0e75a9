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
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"out: {path} exists (pass overwrite=True / --overwrite to replace it)"
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
        group.attrs.update(json.loads(json.dumps(to_jsonable(attrs))))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


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
