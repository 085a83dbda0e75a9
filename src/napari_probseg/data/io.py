"""Read 2D/3D images (TIFF, NumPy, NIfTI, PNG/JPEG) with their pixel spacing, and validate them.

Every reader returns an `ImageData` whose ``data`` has the spatial axes in (plane, row, column)
order, i.e. ``(Z, Y, X)`` or ``(Y, X)``, with an optional channel axis first (``axes`` says which),
and whose ``scale`` holds one physical pixel size per spatial axis in the same order.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SUPPORTED_SUFFIXES",
    "ImageData",
    "ImageReadError",
    "check_image",
    "is_supported",
    "read_image",
]

#: File name endings this module reads (lower case; matched case-insensitively).
SUPPORTED_SUFFIXES: tuple[str, ...] = (
    ".tif", ".tiff", ".npy", ".nii", ".nii.gz", ".png", ".jpg", ".jpeg",
)  # fmt: skip
_PICTURES = (".png", ".jpg", ".jpeg")


class ImageReadError(ValueError):
    """An image file is missing, broken, empty or of an unsupported type.

    The message names the file and the cause.
    """


@dataclass
class ImageData:
    """An image read from disk.

    Attributes
    ----------
    data : ndarray, shape (*spatial) or (C, *spatial)
        Pixel values, dtype as stored (NaN values are kept: see `check_image`).
    scale : tuple of float
        Physical pixel size per spatial axis, (plane, row, column) order; 1.0 where unknown.
    name : str
        File name without its suffix, e.g. ``"ct"`` for ``ct.nii.gz``.
    path : Path
        The file read.
    axes : str
        One letter per axis of ``data``: ``"C"`` (channel), ``"Z"``, ``"Y"``, ``"X"``; other letters
        (e.g. ``"T"``) come from the file when their role is unknown.
    metadata : dict
        Format-specific extras: ``"format"``, ``"unit"`` when known, the NIfTI ``"affine"``,
        the TIFF ``"source_axes"``.
    """

    data: np.ndarray
    scale: tuple[float, ...]
    name: str
    path: Path
    axes: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def channel_axis(self) -> int | None:
        """Index of the channel axis in ``data``, or None."""
        return self.axes.index("C") if "C" in self.axes else None


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return None


def is_supported(path: str | Path) -> bool:
    """Return True if ``path`` ends with one of `SUPPORTED_SUFFIXES` (the file is not opened)."""
    return _suffix(Path(path)) is not None


def _stem(path: Path, suffix: str) -> str:
    return path.name[: len(path.name) - len(suffix)] or path.name


def read_image(path: str | Path) -> ImageData:
    """Read a 2D or 3D image (optionally with channels) and its pixel spacing.

    Parameters
    ----------
    path : str or Path
        A ``.tif``/``.tiff`` (ImageJ, OME or plain TIFF), ``.npy`` or ``.nii``/``.nii.gz`` file.

    Returns
    -------
    ImageData
        Data with spatial axes in (plane, row, column) order and channels first:

        - TIFF: the first series, squeezed. Channel (``C``) and RGB sample (``S``) axes move to the
          front; a single remaining non-row/column axis (``Z``, or tifffile's ``Q``/``I``/``T``)
          becomes the plane axis. Scale: row/column from the X/Y resolution tags (1 / pixels per
          unit), plane from the ImageJ ``spacing`` or OME ``PhysicalSizeZ``; OME physical sizes
          win when present.
        - NumPy: the array as saved; 4D arrays are taken as ``(C, Z, Y, X)``; scale 1.
        - PNG / JPEG: 2D pictures; grayscale ``(Y, X)``, colour ``(C, Y, X)`` (RGB[A] samples as
          channels); scale 1 (pixels: the formats carry no physical size).
        - NIfTI: nibabel's voxel array ``(x, y, z[, t])`` transposed to ``(z, y, x)`` (and
          ``(t, z, y, x)``, with ``t`` read as the channel axis); the scale is the header zooms in
          the same, reversed, order. A single-slice volume becomes 2D ``(y, x)``. The voxel order is
          not reoriented (no RAS canonicalization); the affine is kept in ``metadata["affine"]``.

    Raises
    ------
    ImageReadError
        Naming the file, if it does not exist, has an unsupported suffix, cannot be parsed or holds
        no pixels.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix is None:
        raise ImageReadError(
            f"{path}: unsupported file type {''.join(path.suffixes) or '(no suffix)'!r}; "
            f"supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if not path.is_file():
        raise ImageReadError(f"{path}: file does not exist or is not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: the file is empty (0 bytes)")
    reader = {".npy": _read_npy, ".nii": _read_nifti, ".nii.gz": _read_nifti}.get(
        suffix, _read_picture if suffix in _PICTURES else _read_tiff
    )
    try:
        data, scale, axes, metadata = reader(path)
    except ImageReadError:
        raise
    except Exception as exc:  # the libraries raise many types for corrupt files
        kind = {".npy": "NumPy", ".nii": "NIfTI", ".nii.gz": "NIfTI"}.get(suffix, "TIFF")
        kind = suffix.lstrip(".").upper() if suffix in _PICTURES else kind
        raise ImageReadError(
            f"{path}: cannot read as a {kind} file ({type(exc).__name__}: {exc})"
        ) from exc
    if data.size == 0:
        raise ImageReadError(f"{path}: the image is empty (shape {data.shape})")
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool) or np.iscomplexobj(data):
        raise ImageReadError(f"{path}: unsupported pixel type {data.dtype} (need real numbers)")
    metadata.setdefault("format", suffix.lstrip("."))
    return ImageData(
        data=data,
        scale=tuple(float(s) for s in scale),
        name=_stem(path, suffix).removesuffix(".ome"),
        path=path,
        axes=axes,
        metadata=metadata,
    )


def _read_picture(path: Path) -> tuple[np.ndarray, list[float], str, dict[str, Any]]:
    import imageio.v3 as iio

    data = np.asarray(iio.imread(path))
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        return np.ascontiguousarray(np.moveaxis(data, -1, 0)), [1.0, 1.0], "CYX", {"unit": "pixel"}
    if data.ndim == 3 and data.shape[-1] in (1, 2):  # gray (+ alpha): keep the gray values
        data = data[..., 0]
    if data.ndim != 2:
        raise ImageReadError(f"{path}: expected a 2D picture, got shape {data.shape}")
    return data, [1.0, 1.0], "YX", {"unit": "pixel"}


def _read_npy(path: Path) -> tuple[np.ndarray, list[float], str, dict[str, Any]]:
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        # np.load would fall back to unpickling and report a confusing pickle error
        raise ImageReadError(f"{path}: not a NumPy .npy file (no NPY header)")
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):
            raise ImageReadError(
                f"{path}: holds Python objects (pickled data), which are never loaded"
            ) from exc
        raise
    # 4D is read as (C, Z, Y, X); other ranks keep unknown ("Q") axes that check_image reports.
    axes = {0: "", 1: "X", 2: "YX", 3: "ZYX", 4: "CZYX"}.get(
        data.ndim, "Q" * (data.ndim - 3) + "ZYX"
    )
    n_spatial = len(axes) - axes.count("C")
    return data, [1.0] * n_spatial, axes, {}


def _read_nifti(path: Path) -> tuple[np.ndarray, list[float], str, dict[str, Any]]:
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)  # applies scl_slope/inter when the header sets them
    zooms = [float(z) for z in img.header.get_zooms()]
    meta: dict[str, Any] = {"affine": np.asarray(img.affine)}
    try:
        meta["unit"] = img.header.get_xyzt_units()[0]
    except Exception:  # not every header type has units
        pass
    if data.ndim > 4:
        raise ImageReadError(f"{path}: NIfTI with {data.ndim} dimensions is not supported (max 4)")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[..., 0]
    # nibabel is (x, y, z, t): reverse the spatial axes to (plane, row, column), channels first.
    if data.ndim == 4:
        data = np.ascontiguousarray(data.transpose(3, 2, 1, 0))
        return data, zooms[:3][::-1], "CZYX", meta
    data = np.ascontiguousarray(data.transpose(tuple(range(data.ndim))[::-1]))
    return data, zooms[: data.ndim][::-1], "ZYX"[-data.ndim :], meta


def _read_tiff(path: Path) -> tuple[np.ndarray, list[float], str, dict[str, Any]]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ImageReadError(f"{path}: the TIFF file holds no image")
        series = tif.series[0]
        data = series.asarray()
        src_axes = series.axes
        page = tif.pages.first
        sizes: dict[str, float] = {}
        meta: dict[str, Any] = {"source_axes": src_axes}
        res = getattr(page, "resolution", None)
        if res and all(r > 0 for r in res):
            sizes["X"], sizes["Y"] = 1.0 / float(res[0]), 1.0 / float(res[1])
        if tif.is_imagej and tif.imagej_metadata:
            ij = tif.imagej_metadata
            if "spacing" in ij:
                sizes["Z"] = float(ij["spacing"])
            if "unit" in ij:
                meta["unit"] = ij["unit"]
        if tif.is_ome and tif.ome_metadata:
            sizes.update(_ome_sizes(tif.ome_metadata, meta))

    axes = src_axes.replace("S", "C") if "C" not in src_axes else src_axes
    # channels first
    if "C" in axes:
        c = axes.index("C")
        data = np.moveaxis(data, c, 0)
        axes = "C" + axes[:c] + axes[c + 1 :]
    others = [a for a in axes if a not in "CYX"]
    if len(others) == 1 and "Z" not in axes:
        axes = axes.replace(others[0], "Z")
    scale = [sizes.get(a, 1.0) for a in axes if a != "C"]
    return data, scale, axes, meta


def _ome_sizes(xml: str, meta: dict[str, Any]) -> dict[str, float]:
    """Physical sizes (X, Y, Z) from the first OME ``Pixels`` element."""
    sizes: dict[str, float] = {}
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return sizes
    pixels = next((el for el in root.iter() if el.tag.endswith("Pixels")), None)
    if pixels is None:
        return sizes
    for axis in "XYZ":
        value = pixels.get(f"PhysicalSize{axis}")
        if value is not None:
            sizes[axis] = float(value)
    if pixels.get("PhysicalSizeXUnit"):
        meta["unit"] = pixels.get("PhysicalSizeXUnit")
    return sizes


def check_image(
    image: ImageData | np.ndarray, *, channel: int | None = None, name: str = "image"
) -> np.ndarray:
    """Validate an image for segmentation and return its 2D or 3D pixel array.

    Parameters
    ----------
    image : ImageData or ndarray
        An image from `read_image` or an array ``(Y, X)``, ``(Z, Y, X)`` or ``(C, Z, Y, X)``. An
        `ImageData` with a ``"C"`` axis (e.g. ``(C, Y, X)``) has a channel axis; a plain 4D array
        is taken as ``(C, Z, Y, X)``.
    channel : int, optional
        Which channel to use; required exactly when there is a channel axis.
    name : str
        Argument name used in error messages.

    Returns
    -------
    ndarray, shape (Y, X) or (Z, Y, X)
        The selected pixels (a view; dtype unchanged).

    Raises
    ------
    ValueError
        Naming ``name`` (or ``channel``) if the data has a channel axis and no channel was chosen,
        the channel is out of range, the result is not 2D or 3D, is empty, is not real-valued, or
        holds NaN or Inf values.
    """
    if isinstance(image, ImageData):
        data, channel_axis = image.data, image.channel_axis
    else:
        data = np.asarray(image)
        channel_axis = 0 if data.ndim == 4 else None
    if channel_axis is not None:
        n_channels = data.shape[channel_axis]
        if channel is None:
            raise ValueError(
                f"{name}: data of shape {data.shape} has a channel axis ({n_channels} channels); "
                f"choose one explicitly with channel=0..{n_channels - 1}"
            )
        if isinstance(channel, bool) or int(channel) != channel or not 0 <= channel < n_channels:
            raise ValueError(
                f"channel: expected an integer in 0..{n_channels - 1}, got {channel!r}"
            )
        data = np.take(data, int(channel), axis=channel_axis)
    elif channel is not None and channel != 0:
        raise ValueError(f"channel: the image has no channel axis, got channel={channel!r}")
    if data.ndim not in (2, 3):
        raise ValueError(
            f"{name}: expected a 2D (Y, X) or 3D (Z, Y, X) image, got shape {data.shape}"
            + ("; 4D data needs an explicit channel choice (channel=)" if data.ndim == 4 else "")
        )
    if data.size == 0:
        raise ValueError(f"{name}: the image is empty (shape {data.shape})")
    if np.iscomplexobj(data) or not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise ValueError(f"{name}: expected real numbers, got dtype {data.dtype}")
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise ValueError(
                f"{name}: contains {bad} NaN or Inf value(s) out of {data.size}; "
                "fill or mask them before segmentation"
            )
    return data
