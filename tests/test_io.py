"""Image reading (TIFF, NumPy, NIfTI) with spacing, and image validation."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile

from napari_probseg.data.io import (
    SUPPORTED_SUFFIXES,
    ImageData,
    ImageReadError,
    check_image,
    is_supported,
    read_image,
)

RNG = np.random.default_rng(0)
VOLUME = RNG.normal(size=(5, 12, 16)).astype(np.float32)  # (Z, Y, X), all sizes distinct


def test_npy_round_trip(tmp_path):
    path = tmp_path / "vol.npy"
    np.save(path, VOLUME)
    image = read_image(path)
    assert isinstance(image, ImageData)
    np.testing.assert_array_equal(image.data, VOLUME)
    assert image.scale == (1.0, 1.0, 1.0)
    assert image.axes == "ZYX" and image.name == "vol" and image.path == path
    assert image.metadata["format"] == "npy"


def test_imagej_tiff_round_trip_with_spacing(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path,
        VOLUME,
        imagej=True,
        resolution=(1 / 0.5, 1 / 0.25),  # pixels per unit along X, Y
        metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"},
    )
    image = read_image(path)
    np.testing.assert_array_equal(image.data, VOLUME)
    assert image.axes == "ZYX"
    assert image.scale == pytest.approx((2.0, 0.25, 0.5))
    assert image.metadata["unit"] in ("um", "µm", "\\u00B5m")
    assert image.name == "stack"


def test_ome_tiff_physical_sizes(tmp_path):
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(
        path,
        VOLUME,
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.4, "PhysicalSizeZ": 1.5},
    )
    image = read_image(path)
    np.testing.assert_array_equal(image.data, VOLUME)
    assert image.scale == pytest.approx((1.5, 0.4, 0.3))
    assert image.name == "cells"


def test_plain_tiff_2d_and_unknown_plane_axis(tmp_path):
    tifffile.imwrite(tmp_path / "a.tiff", VOLUME[0])
    image = read_image(tmp_path / "a.tiff")
    assert image.data.shape == (12, 16) and image.axes == "YX" and image.scale == (1.0, 1.0)
    tifffile.imwrite(tmp_path / "b.TIF", VOLUME)  # tifffile calls the plane axis "Q"
    image = read_image(tmp_path / "b.TIF")
    assert image.axes == "ZYX" and image.data.shape == VOLUME.shape and image.name == "b"


def test_tiff_channels_move_first(tmp_path):
    data = RNG.integers(0, 255, size=(5, 2, 12, 16), dtype=np.uint8)  # Z, C, Y, X
    path = tmp_path / "two_channels.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZCYX", "spacing": 3.0})
    image = read_image(path)
    assert image.axes == "CZYX" and image.channel_axis == 0
    np.testing.assert_array_equal(image.data, np.moveaxis(data, 1, 0))
    assert image.scale[0] == pytest.approx(3.0) and len(image.scale) == 3
    with pytest.raises(ValueError, match=r"channel"):
        check_image(image)
    np.testing.assert_array_equal(check_image(image, channel=1), data[:, 1])


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trip_transposes_and_reads_zooms(tmp_path, suffix):
    xyz = np.ascontiguousarray(VOLUME.transpose(2, 1, 0))  # nibabel order (x, y, z)
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    path = tmp_path / f"ct{suffix}"
    nib.save(nib.Nifti1Image(xyz, affine), path)
    image = read_image(path)
    np.testing.assert_array_equal(image.data, VOLUME)  # back to (z, y, x)
    assert image.axes == "ZYX"
    assert image.scale == pytest.approx((2.5, 0.8, 0.7))
    assert image.name == "ct"
    np.testing.assert_allclose(image.metadata["affine"], affine)
    if suffix == ".nii.gz":
        with open(path, "rb") as f:
            assert f.read(2) == b"\x1f\x8b"  # really gzip-compressed


def test_nifti_4d_and_single_slice(tmp_path):
    xyzt = RNG.normal(size=(16, 12, 5, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(xyzt, np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "t.nii.gz")
    image = read_image(tmp_path / "t.nii.gz")
    assert image.axes == "CZYX" and image.data.shape == (3, 5, 12, 16)
    assert image.scale == pytest.approx((2.0, 1.0, 1.0))
    np.testing.assert_array_equal(image.data[2], xyzt[..., 2].transpose(2, 1, 0))
    with pytest.raises(ValueError, match=r"^image: .*channel=0\.\.2"):
        check_image(image)
    assert check_image(image, channel=2).shape == (5, 12, 16)

    xy1 = RNG.normal(size=(16, 12, 1)).astype(np.float32)
    nib.save(nib.Nifti1Image(xy1, np.diag([0.5, 0.6, 3.0, 1.0])), tmp_path / "s.nii")
    image = read_image(tmp_path / "s.nii")
    assert image.axes == "YX" and image.data.shape == (12, 16)
    assert image.scale == pytest.approx((0.6, 0.5))


@pytest.mark.parametrize("suffix", [".tif", ".npy", ".nii", ".nii.gz"])
def test_broken_file_raises_read_error_naming_the_file(tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"this is not an image at all" * 3)
    with pytest.raises(ImageReadError, match=r"broken") as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_empty_and_truncated_files(tmp_path):
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty.tif"):
        read_image(empty)
    # a gzip stream cut in the middle
    full = tmp_path / "full.nii.gz"
    nib.save(nib.Nifti1Image(VOLUME, np.eye(4)), full)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(full.read_bytes()[:200])
    with pytest.raises(ImageReadError, match=r"cut.nii.gz"):
        read_image(cut)
    # an array with no pixels
    np.save(tmp_path / "none.npy", np.zeros((0, 4), np.float32))
    with pytest.raises(ImageReadError, match=r"none.npy: the image is empty"):
        read_image(tmp_path / "none.npy")
    # an object array is refused (no pickle)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageReadError, match=r"obj.npy"):
        read_image(tmp_path / "obj.npy")


def test_unsupported_and_missing(tmp_path):
    bmp = tmp_path / "photo.bmp"
    bmp.write_bytes(b"BM")
    with pytest.raises(ImageReadError, match=r"photo.bmp: unsupported file type '.bmp'"):
        read_image(bmp)
    png = tmp_path / "photo.png"  # PNG is read (data/io.py), a broken one is named as such
    png.write_bytes(b"\x89PNG")
    with pytest.raises(ImageReadError, match=r"photo.png: cannot read as a PNG file"):
        read_image(png)
    with pytest.raises(ImageReadError, match=r"does not exist"):
        read_image(tmp_path / "missing.nii.gz")
    assert is_supported("a/b/C.NII.GZ") and is_supported("x.tiff") and not is_supported("x.gz")
    assert SUPPORTED_SUFFIXES == (
        ".tif", ".tiff", ".npy", ".nii", ".nii.gz", ".png", ".jpg", ".jpeg",
    )  # fmt: skip


def test_nan_images_are_read_but_rejected_by_check(tmp_path):
    data = VOLUME.copy()
    data[0, 0, :3] = np.nan
    np.save(tmp_path / "nan.npy", data)
    image = read_image(tmp_path / "nan.npy")
    assert np.isnan(image.data).sum() == 3
    with pytest.raises(ValueError, match=r"^image: contains 3 NaN or Inf"):
        check_image(image)


def test_check_image_on_arrays():
    assert check_image(VOLUME) is VOLUME
    assert check_image(VOLUME[0]).shape == (12, 16)
    four_d = np.stack([VOLUME, VOLUME + 1])
    with pytest.raises(ValueError, match=r"^image: .*channel axis.*channel=0\.\.1"):
        check_image(four_d)
    np.testing.assert_array_equal(check_image(four_d, channel=1), VOLUME + 1)
    with pytest.raises(ValueError, match=r"^channel"):
        check_image(four_d, channel=2)
    with pytest.raises(ValueError, match=r"^channel"):
        check_image(VOLUME, channel=1)
    with pytest.raises(ValueError, match=r"^img: expected a 2D \(Y, X\) or 3D"):
        check_image(np.zeros(5), name="img")
    with pytest.raises(ValueError, match=r"^image: expected a 2D"):
        check_image(np.zeros((2, 2, 3, 4, 5)))
    with pytest.raises(ValueError, match=r"^image: expected real numbers"):
        check_image(np.zeros((4, 4), dtype=complex))
    with pytest.raises(ValueError, match=r"^image: the image is empty"):
        check_image(np.zeros((0, 4)))
