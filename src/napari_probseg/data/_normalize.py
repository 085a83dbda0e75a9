"""Input normalization as named by a model card (re-exported for ``data.StoreDataset``).

Implemented once in :mod:`napari_probseg.core._normalize` (the model card validates its
``normalization`` with the same parser); see there for the specification.
"""

from napari_probseg.core._normalize import MODES, normalize, parse_normalization

__all__ = ["MODES", "normalize", "parse_normalization"]
