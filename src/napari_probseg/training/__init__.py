"""napari_probseg.training."""
