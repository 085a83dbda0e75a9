"""npe2 reader for project stores: each image plus one Labels layer per rater (latest version).

``viewer.open("project.zarr", plugin="napari-probseg")`` shows every image of the store with its
voxel size as the layer scale, and over it one Labels layer per rater holding that rater's latest
committed version (read from the versioned history, not from the derived OME label copy). Only
the first image is visible; the others are added hidden. The store is opened read-only.

A damaged image or annotation is skipped with a warning notification naming the damaged file; a
store written by a newer napari-probseg, or whose root metadata is damaged, is an error
notification and no layer: never a traceback dialog.

The layer-data builders (:func:`image_layer_data`, :func:`rater_layer_data`) are shared with the
annotation panel, so layers opened either way carry the same metadata
(``metadata["probseg"]``: ``what``, ``store``, ``image_id``, ``rater``, ``version``...).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_probseg._napari._layers import SEP

LayerDataTuple = tuple[Any, dict[str, Any], str]

#: One colour per rater (in store order), so that overlaid raters can be told apart.
RATER_COLORS = ("#ffa726", "#66bb6a", "#ab47bc", "#42a5f5", "#ef5350", "#ffee58", "#8d6e63")


def is_project_store(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a probseg project store (any schema version)."""
    meta_path = Path(path) / "zarr.json"
    try:
        if not Path(path).is_dir() or not meta_path.is_file():
            return False
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        return meta["attributes"]["probseg"]["kind"] == "project"
    except (OSError, ValueError, KeyError, TypeError):
        return False


def get_store_reader(path: str | Path | list) -> Callable[..., list[LayerDataTuple]] | None:
    """npe2 ``get_reader`` hook: a reader if ``path`` is a project store directory, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, (str, Path)) or not is_project_store(path):
        return None
    return read_store


def rater_colormap(index: int, labels: tuple[int, ...] | list[int]) -> dict:
    """Direct label colormap: every foreground label of rater ``index`` in the rater's colour."""
    color = RATER_COLORS[index % len(RATER_COLORS)]
    cmap: dict = {None: "transparent", 0: "transparent"}
    for value in labels:
        if int(value) > 0:
            cmap[int(value)] = color
    if len(cmap) == 2:  # an empty mask: give label 1 the colour for later painting
        cmap[1] = color
    return cmap


def image_layer_data(store: Any, image_id: str) -> LayerDataTuple:
    """Image layer-data tuple of a store image (name = image id, scale = voxel size)."""
    data, scale = store.read_image(image_id)
    meta = {"probseg": {"what": "store-image", "store": str(store.path), "image_id": image_id}}
    return data, {"name": image_id, "scale": scale, "metadata": meta}, "image"


def rater_layer_data(
    store: Any,
    image_id: str,
    rater: str,
    version: int | None = None,
    *,
    color_index: int = 0,
) -> LayerDataTuple:
    """Labels layer-data tuple of one rater's version (default: the latest).

    The layer is named ``"<image> · <rater>"`` for the latest version and
    ``"<image> · <rater> v<N>"`` for an older one; ``metadata["probseg"]`` records the store,
    image, rater, version, role, tools and time of the version.
    """
    if version is None:
        mask, record = store.latest(image_id, rater)
    else:
        mask, record = store.read_version(image_id, rater, version)
    latest = len(store.history(image_id, rater)) == record.version
    name = f"{image_id}{SEP}{rater}" + ("" if latest else f" v{record.version}")
    scale = store.image_info(image_id)["scale"]
    meta = {
        "probseg": {
            "what": "store-annotation",
            "store": str(store.path),
            "image_id": image_id,
            "rater": rater,
            "version": record.version,
            "role": record.role,
            "tools": list(record.tools),
            "created": record.created,
            "source_run": record.source_run,
            "source_sample": record.source_sample,
        }
    }
    kwargs = {
        "name": name,
        "scale": scale,
        "opacity": 0.5,
        "colormap": rater_colormap(color_index, record.labels),
        "metadata": meta,
    }
    return np.asarray(mask), kwargs, "labels"


def agreement_layer_data(store: Any, image_id: str, result: Any) -> list[LayerDataTuple]:
    """Layer-data tuples of an ``Agreement``: majority vote (labels), soft consensus (image)."""
    scale = store.image_info(image_id)["scale"]
    meta = {
        "what": "store-agreement",
        "store": str(store.path),
        "image_id": image_id,
        "raters": list(result.raters),
    }
    majority = {
        "name": f"{image_id}{SEP}majority vote",
        "scale": scale,
        "opacity": 0.5,
        "metadata": {"probseg": {**meta, "kind": "majority"}},
    }
    soft = {
        "name": f"{image_id}{SEP}soft consensus",
        "scale": scale,
        "colormap": "magma",
        "contrast_limits": (0.0, 1.0),
        "blending": "additive",
        "opacity": 0.7,
        "metadata": {"probseg": {**meta, "kind": "soft"}},
    }
    return [(result.majority, majority, "labels"), (result.soft, soft, "image")]


def store_layer_data(
    store: Any, *, warn: Callable[[str], None] | None = None
) -> list[LayerDataTuple]:
    """Layer-data tuples of a whole store: each image, then its raters' latest versions.

    Parameters
    ----------
    store : ProjectStore
        An open store.
    warn : callable, keyword-only
        Called with a message for each damaged image or annotation that is skipped.
    """
    from napari_probseg.store import StoreCorruptionError

    out: list[LayerDataTuple] = []
    for n, image_id in enumerate(store.image_ids()):
        try:
            data, kwargs, kind = image_layer_data(store, image_id)
            raters = store.raters(image_id)
        except (StoreCorruptionError, ValueError) as exc:
            if warn:
                warn(f"probseg: skipped image {image_id!r}: {exc}")
            continue
        kwargs["visible"] = n == 0
        out.append((data, kwargs, kind))
        for i, rater in enumerate(raters):
            try:
                tup = rater_layer_data(store, image_id, rater, color_index=i)
            except (StoreCorruptionError, ValueError) as exc:
                if warn:
                    warn(f"probseg: skipped {rater!r}'s annotation of {image_id!r}: {exc}")
                continue
            tup[1]["visible"] = n == 0
            out.append(tup)
    return out


def read_store(path: str | Path | list) -> list[LayerDataTuple]:
    """Read a project store (read-only) into layer-data tuples; errors become notifications."""
    from napari.utils.notifications import show_error, show_warning

    from napari_probseg.store import ProjectStore, StoreCorruptionError, StoreVersionError

    if isinstance(path, (list, tuple)):
        path = path[0]
    try:
        store = ProjectStore.open(path, mode="r")
        layers = store_layer_data(store, warn=show_warning)
    except StoreVersionError as exc:
        show_error(f"probseg: cannot open the store: {exc}")
        return [(None,)]  # napari's "nothing to add" sentinel: no layer, no error dialog
    except StoreCorruptionError as exc:
        show_error(f"probseg: the store is damaged ({exc}); run `probseg store verify {path}`")
        return [(None,)]
    except Exception as exc:  # a reader must never raise into napari's traceback dialog
        show_error(f"probseg: cannot read the store {path}: {type(exc).__name__}: {exc}")
        return [(None,)]
    if not layers:
        show_warning(f"probseg: the store {path} holds no image yet")
        return [(None,)]
    return layers
