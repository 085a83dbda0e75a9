"""The napari layer: npe2 manifest (``napari.yaml``), reader, sample data and widgets.

This is the only part of the package that imports napari, qtpy or magicgui, and it does so in its
submodules only: importing ``napari_probseg._napari`` itself stays light (npe2 reads the manifest
without importing napari).
"""
