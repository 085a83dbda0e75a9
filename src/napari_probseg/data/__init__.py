"""napari_probseg.data."""
