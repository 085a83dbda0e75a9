"""Data: image readers and seeded synthetic multi-rater datasets.

`read_image` / `check_image` read and validate TIFF, NumPy and NIfTI images with their spacing;
`make_lesions` draws lesion images labelled by simulated raters with distinct styles;
`make_shifted_circle` is the translational toy (a circle at n equally likely positions).
Nothing here imports torch (the torch dataset lives in `napari_probseg.data.dataset`).
"""

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
    "check_image",
    "is_supported",
    "make_circle_samples",
    "make_lesions",
    "make_shifted_circle",
    "read_image",
    "sample_case",
]
