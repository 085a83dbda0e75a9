"""Input normalization as named by a model card.

Implemented once in :mod:`napari_probseg.core._normalize` so that the data layer (``StoreDataset``)
normalizes training items exactly as the engine normalizes images at prediction time, and the model
card validates its ``normalization`` with the same parser; see there for the specification.
"""

from napari_probseg.core._normalize import MODES, normalize, parse_normalization

__all__ = ["MODES", "normalize", "parse_normalization"]
