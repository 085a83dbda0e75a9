"""Provenance helpers: the input signature and package versions."""

from __future__ import annotations

import hashlib
from importlib import metadata
from typing import Any

import numpy as np

# The package's one timestamp (re-exported for the engine).
from napari_probseg.core._serialize import utc_now

__all__ = ["VERSION_PACKAGES", "image_signature", "package_versions", "utc_now"]

#: Packages whose versions every result records.
VERSION_PACKAGES = ("napari-probseg", "torch", "numpy", "monai")


def image_signature(image: Any) -> str:
    """Return a signature of an image: shape, dtype and a SHA-256 of its content.

    Two arrays have the same signature exactly when shape, dtype and bytes are equal, so a result
    computed on one image can be recognised as stale on another.

    Parameters
    ----------
    image : array_like or Tensor
        Any array (dask/zarr arrays are read into memory).

    Returns
    -------
    str
        ``"<shape>|<dtype>|sha256:<hex>"``, e.g. ``"64x64|float32|sha256:1f0c..."``.
    """
    if type(image).__module__.split(".")[0] == "torch":
        image = image.detach().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(image))
    digest = hashlib.sha256()
    digest.update(str(arr.shape).encode())
    digest.update(arr.dtype.str.encode())
    digest.update(memoryview(arr.reshape(-1).view(np.uint8)))
    shape = "x".join(str(s) for s in arr.shape)
    return f"{shape}|{arr.dtype.name}|sha256:{digest.hexdigest()}"


def package_versions() -> dict[str, str | None]:
    """Return the installed versions of :data:`VERSION_PACKAGES` (None when missing)."""
    versions: dict[str, str | None] = {}
    for name in VERSION_PACKAGES:
        try:
            versions[name.replace("-", "_")] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name.replace("-", "_")] = None
    return versions
