"""napari_probseg.models."""
