"""Data: image readers and seeded synthetic multi-rater datasets.

`read_image` / `check_image` read and validate TIFF, NumPy and NIfTI images with their spacing;
`make_lesions` draws lesion images labelled by simulated raters with distinct styles;
`make_shifted_circle` is the translational toy (a circle at n equally likely positions).
Nothing here imports torch: `StoreDataset` (the torch dataset over a project store, in
`napari_probseg.data.dataset`), `split_images` and `collate_items` load lazily on first access.
`normalize` applies a model card's input normalization (the engine uses the same function).
"""

from typing import Any

from napari_probseg.data._normalize import normalize, parse_normalization
from napari_probseg.data.io import (
    SUPPORTED_SUFFIXES,
    ImageData,
    ImageReadError,
    check_image,
    is_supported,
    read_image,
)
from napari_probseg.data.synthetic import (
    RATER_STYLES,
    LesionSet,
    make_circle_samples,
    make_lesions,
    make_shifted_circle,
    sample_case,
)

__all__ = [
    "RATER_STYLES",
    "SUPPORTED_SUFFIXES",
    "ImageData",
    "ImageReadError",
    "LesionSet",
    "StoreDataset",
    "check_image",
    "collate_items",
    "is_supported",
    "make_circle_samples",
    "make_lesions",
    "make_shifted_circle",
    "normalize",
    "parse_normalization",
    "read_image",
    "sample_case",
    "split_images",
]

_LAZY = {"StoreDataset", "collate_items", "split_images"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from napari_probseg.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'napari_probseg.data' has no attribute {name!r}")
