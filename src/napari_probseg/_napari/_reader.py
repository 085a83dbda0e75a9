"""npe2 reader: TIFF, NumPy and NIfTI images with their pixel spacing as the layer scale."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_probseg.data.io import is_supported, read_image

LayerDataTuple = tuple[Any, dict[str, Any], str]
PathLike = str | Path


def get_reader(path: PathLike | list[PathLike]) -> Callable[..., list[LayerDataTuple]] | None:
    """Return a reader for ``path`` if napari-probseg can open it, else None.

    Parameters
    ----------
    path : str, Path or list of them
        File(s) napari asks about. A list is accepted when every entry is a supported file;
        directories are not.

    Returns
    -------
    callable or None
        ``reader(path) -> [(data, kwargs, "image"), ...]``, one tuple per file. Broken files raise
        `~napari_probseg.data.io.ImageReadError` naming the file and the cause.
    """
    paths = path if isinstance(path, list | tuple) else [path]
    if not paths or not all(isinstance(p, str | Path) and is_supported(p) for p in paths):
        return None
    if any(Path(p).is_dir() for p in paths):
        return None
    return read_layers


def read_layers(path: PathLike | list[PathLike]) -> list[LayerDataTuple]:
    """Read ``path`` (one file or a list) into napari image layer data tuples with scale."""
    paths = path if isinstance(path, list | tuple) else [path]
    layers: list[LayerDataTuple] = []
    for p in paths:
        image = read_image(p)
        kwargs: dict[str, Any] = {
            "name": image.name,
            "scale": image.scale,
            "metadata": {
                "source_path": str(image.path),
                "axes": image.axes,
                **{k: v for k, v in image.metadata.items() if k != "affine"},
            },
        }
        if image.channel_axis is not None:
            # napari splits the channels into one layer each; scale covers the other axes.
            kwargs["channel_axis"] = image.channel_axis
        layers.append((image.data, kwargs, "image"))
    return layers
