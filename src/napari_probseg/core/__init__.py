"""Array math: uncertainty maps, structure measures, aggregation, regions and metrics.

Pure numpy (and torch when given torch tensors); never imports napari or Qt, and does not import
torch at import time.
"""
