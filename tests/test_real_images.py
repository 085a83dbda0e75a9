"""Real images no one here made, through the CLI and the napari reader: nibabel's test MRI and
scikit-image's bundled 2D pictures (PNG, JPEG). No crash, spacing kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pytest.importorskip("skimage")

from nibabel.testing import data_path  # noqa: E402

from napari_probseg.data.io import read_image  # noqa: E402

ANATOMICAL = Path(data_path) / "anatomical.nii"
EXAMPLE4D = Path(data_path) / "example4d.nii.gz"
ROOT = Path(__file__).resolve().parents[1]


def _probseg(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "napari_probseg.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    from skimage import data, io

    folder = tmp_path_factory.mktemp("pictures")
    camera = data.camera()[::4, ::4]  # 128 x 128: fast on the CPU
    io.imsave(folder / "camera.png", camera, check_contrast=False)
    io.imsave(folder / "camera.jpg", camera, check_contrast=False, quality=90)
    io.imsave(folder / "astronaut.png", data.astronaut()[::8, ::8], check_contrast=False)
    return folder


def test_reader_keeps_nifti_spacing_and_reads_pictures(pictures):
    mri = read_image(ANATOMICAL)
    assert mri.data.shape == (25, 41, 33) and mri.axes == "ZYX"
    assert mri.scale == (2.0, 2.0, 2.0)
    four = read_image(EXAMPLE4D)
    assert four.axes == "CZYX" and four.data.shape == (2, 24, 96, 128)
    np.testing.assert_allclose(four.scale, (2.2, 2.0, 2.0), rtol=1e-5)
    for name in ("camera.png", "camera.jpg"):
        img = read_image(pictures / name)
        assert img.data.shape == (128, 128) and img.axes == "YX" and img.scale == (1.0, 1.0)
    rgb = read_image(pictures / "astronaut.png")
    assert rgb.axes == "CYX" and rgb.data.shape == (3, 64, 64)
    np.testing.assert_array_equal(read_image(pictures / "camera.png").data, rgb_free(pictures))


def rgb_free(pictures: Path) -> np.ndarray:
    from skimage import io

    return io.imread(pictures / "camera.png")


def test_cli_on_nibabel_mri_keeps_spacing(tmp_path):
    out = tmp_path / "mri.zarr"
    run = _probseg(
        "predict", str(ANATOMICAL), "--model", "lesions3d-unet", "--method", "softmax",
        "--out", str(out), "--json", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout)
    from napari_probseg.engine import load_result

    result, _ = load_result(out)
    assert result.scale == (2.0, 2.0, 2.0)
    assert result.maps.mean_probs.shape[1:] == (25, 41, 33)
    assert summary["n_samples"] == 1
    # TODO(ood): assert the out-of-domain warning once engine/_domain.py lands (a real MRI is far
    # from the synthetic lesions the bundled model was trained on):
    # assert summary["domain"]["in_domain"] is False


def test_cli_on_4d_nifti_needs_a_channel(tmp_path, capsys):
    from napari_probseg.cli import main

    code = main(
        ["predict", str(EXAMPLE4D), "--model", "lesions3d-unet", "--out", str(tmp_path / "a.zarr")]
    )
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and "--channel" in err
    run = _probseg(
        "predict", str(EXAMPLE4D), "--model", "lesions3d-unet", "--method", "softmax",
        "--channel", "1", "--out", str(tmp_path / "b.zarr"), "--json", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    from napari_probseg.engine import load_result

    result, _ = load_result(tmp_path / "b.zarr")
    np.testing.assert_allclose(result.scale, (2.2, 2.0, 2.0), rtol=1e-5)


@pytest.mark.parametrize("name", ["camera.png"])  # JPEG: same reader path, tested above
def test_cli_on_skimage_pictures(pictures, tmp_path, name):
    run = _probseg(
        "predict", str(pictures / name), "--model", "lesions2d-unet", "--method", "mc_dropout",
        "-n", "4", "--out", str(tmp_path / "p.zarr"), "--json", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout)
    assert summary["n_samples"] == 4
    # TODO(ood): a photograph is out of domain for the synthetic-lesion model:
    # assert summary["domain"]["in_domain"] is False


def test_napari_reader_opens_real_images(pictures):
    pytest.importorskip("napari")
    from napari_probseg._napari._reader import get_reader

    for path in (ANATOMICAL, pictures / "camera.png"):
        reader = get_reader(str(path))
        assert reader is not None
        layers = reader(str(path))
        data, kwargs, kind = layers[0]
        assert kind == "image" and np.asarray(data).size > 0
        expected = (2.0, 2.0, 2.0) if path == ANATOMICAL else (1.0, 1.0)
        assert tuple(kwargs["scale"]) == expected
