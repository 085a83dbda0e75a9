"""napari_probseg.engine."""
