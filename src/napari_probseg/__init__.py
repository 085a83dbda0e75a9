"""napari-probseg."""

from napari_probseg._version import __version__

__all__ = ["__version__"]
