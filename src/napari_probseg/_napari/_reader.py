"""npe2 reader: TIFF, NumPy, NIfTI, PNG and JPEG images with their pixel spacing as the layer scale.

The file formats themselves are :mod:`napari_probseg.data.io`'s business; this module only
accepts the file names napari offers and turns ``data.io.read_image`` into layer-data tuples.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari_probseg.data.io import is_supported, read_image

LayerDataTuple = tuple[Any, dict[str, Any], str]
PathLike = str | Path
#: Suffixes the reader accepts besides ``data.io.SUPPORTED_SUFFIXES`` (``data.io`` reads them;
#: the manifest's ``filename_patterns`` lists the same).
EXTRA_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif")


def accepts(path: PathLike) -> bool:
    """Whether the reader takes ``path`` (by its name; the file is not opened)."""
    return is_supported(path) or Path(path).suffix.lower() in EXTRA_SUFFIXES


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
    if not paths or not all(isinstance(p, str | Path) and accepts(p) for p in paths):
        return None
    if any(Path(p).is_dir() for p in paths):
        return None
    return read_layers


def read_layers(path: PathLike | list[PathLike]) -> list[LayerDataTuple]:
    """Read ``path`` (one file or a list) into napari image layer data tuples with scale."""
    paths = path if isinstance(path, list | tuple) else [path]
    layers: list[LayerDataTuple] = []
    from napari.utils.notifications import show_error

    from napari_probseg.data.io import ImageReadError

    for p in paths:
        try:
            image = read_image(p)
        except (ImageReadError, ValueError, OSError) as exc:
            # One line naming the file and the cause, never a traceback dialog.
            show_error(f"probseg: cannot open {Path(p).name}: {exc}")
            continue
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
    return layers or [(None,)]  # napari's "nothing to add" sentinel
