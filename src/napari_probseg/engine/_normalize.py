"""Input normalization as named by a model card.

Implemented in :mod:`napari_probseg.data._normalize` so that the data layer (``StoreDataset``) can
normalize training items exactly as the engine normalizes images at prediction time (data sits
below the engine); see there for the specification.
"""

from napari_probseg.data._normalize import MODES, normalize, parse_normalization

__all__ = ["MODES", "normalize", "parse_normalization"]
