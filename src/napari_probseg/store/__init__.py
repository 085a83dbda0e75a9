"""napari_probseg.store."""
