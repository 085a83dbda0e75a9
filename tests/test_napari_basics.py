"""The npe2 manifest, reader and sample data, through a real napari viewer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_probseg.data.synthetic import RATER_STYLES, sample_case

PLUGIN = "napari-probseg"


def test_manifest_is_valid_and_points_into_the_napari_layer():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution(PLUGIN)
    assert manifest.display_name == "Probabilistic Segmentation"
    for command in manifest.contributions.commands:
        if command.python_name:
            assert command.python_name.startswith("napari_probseg._napari."), command.python_name
    reader = manifest.contributions.readers[0]
    assert set(reader.filename_patterns) >= {"*.tif", "*.tiff", "*.npy", "*.nii", "*.nii.gz"}
    assert reader.accepts_directories is False
    keys = {s.key: s.display_name for s in manifest.contributions.sample_data}
    assert keys["lesions_2d"] == "2D lesions (4 raters)"
    assert keys["lesions_3d"] == "3D lesions (4 raters)"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "npe2"), "validate", PLUGIN, "--imports"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_napari_subpackage_import_is_light():
    code = (
        "import sys, napari_probseg._napari\n"
        "print(','.join(m for m in ('napari', 'qtpy', 'magicgui', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_get_reader_declines_what_it_cannot_read(tmp_path):
    from napari.utils.notifications import notification_manager

    from napari_probseg._napari._reader import get_reader

    assert get_reader(str(tmp_path / "a.gif")) is None
    assert get_reader(str(tmp_path)) is None
    assert get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.gif")]) is None
    assert callable(get_reader(str(tmp_path / "a.nii.gz")))
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti")
    assert get_reader(str(broken))(str(broken)) == [(None,)]  # no layer, no traceback dialog
    last = str(notification_manager.records[-1].message)
    assert "broken.nii.gz" in last


def test_reader_routes_png_and_jpeg_to_data_io(tmp_path, monkeypatch):
    from napari_probseg._napari import _reader
    from napari_probseg.data.io import ImageData

    seen = []

    def fake_read(path):
        seen.append(str(path))
        return ImageData(
            data=np.zeros((4, 5), np.uint8), scale=(1.0, 1.0), path=tmp_path / "x", name="x",
            axes="YX", metadata={},
        )  # fmt: skip

    monkeypatch.setattr(_reader, "read_image", fake_read)
    for name in ("a.png", "b.jpg", "c.JPEG", "d.tif"):
        reader = _reader.get_reader(str(tmp_path / name))
        assert callable(reader), name
        assert reader(str(tmp_path / name))[0][2] == "image"
    assert seen == [str(tmp_path / n) for n in ("a.png", "b.jpg", "c.JPEG", "d.tif")]


@pytest.mark.parametrize(("key", "ndim"), [("lesions_2d", 2), ("lesions_3d", 3)])
def test_open_sample_data(make_napari_viewer, key, ndim):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, key)
    image, raters, scale = sample_case(ndim)
    names = [layer.name for layer in viewer.layers]
    assert names == [f"synthetic lesions {ndim}D"] + [f"rater {s}" for s in RATER_STYLES]
    img_layer = viewer.layers[0]
    assert img_layer._type_string == "image"
    np.testing.assert_array_equal(np.asarray(img_layer.data), image)
    np.testing.assert_allclose(img_layer.scale, scale)
    for style in RATER_STYLES:
        layer = viewer.layers[f"rater {style}"]
        assert layer._type_string == "labels"
        np.testing.assert_array_equal(np.asarray(layer.data), raters[style])
        np.testing.assert_allclose(layer.scale, scale)
    # each rater has its own colour for label 1
    colors = {tuple(np.round(viewer.layers[f"rater {s}"].get_color(1), 3)) for s in RATER_STYLES}
    assert len(colors) == len(RATER_STYLES)


def test_open_nifti_through_plugin(make_napari_viewer, tmp_path):
    zyx = np.random.default_rng(0).normal(size=(6, 10, 14)).astype(np.float32)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(zyx.transpose(2, 1, 0), np.diag([0.7, 0.8, 3.0, 1.0])), path)
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin=PLUGIN)
    assert len(layers) == 1 and layers[0].name == "scan"
    np.testing.assert_array_equal(np.asarray(layers[0].data), zyx)
    np.testing.assert_allclose(layers[0].scale, (3.0, 0.8, 0.7))
    assert layers[0].metadata["source_path"] == str(path)


def test_open_tiff_through_plugin(make_napari_viewer, tmp_path):
    zyx = np.random.default_rng(1).integers(0, 4000, size=(4, 9, 11), dtype=np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path,
        zyx,
        imagej=True,
        resolution=(1 / 0.2, 1 / 0.3),
        metadata={"spacing": 1.5, "axes": "ZYX"},
    )
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert len(layers) == 1 and layers[0].name == "stack"
    np.testing.assert_array_equal(np.asarray(layers[0].data), zyx)
    np.testing.assert_allclose(layers[0].scale, (1.5, 0.3, 0.2))


def test_open_multichannel_splits_channels(make_napari_viewer, tmp_path):
    cyx = np.random.default_rng(2).normal(size=(2, 5, 8, 9)).astype(np.float32)
    path = tmp_path / "multi.npy"
    np.save(path, cyx)
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert len(layers) == 2
    np.testing.assert_array_equal(np.asarray(layers[1].data), cyx[1])
    assert tuple(layers[0].scale) == (1.0, 1.0, 1.0)
