"""``probseg store`` and ``probseg export`` on real stores and files, via main() and a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_probseg.cli import main
from napari_probseg.store import ProjectStore, majority_vote

VENV_PROBSEG = Path(sys.executable).parent / "probseg"


@pytest.fixture
def filled(tmp_path):
    """A store with a 3D and a 2D image, three raters on the first, one on the second."""
    rng = np.random.default_rng(0)
    store = ProjectStore.create(tmp_path / "p.zarr", class_names=["background", "lesion"])
    vol = rng.normal(size=(6, 20, 24)).astype(np.float32)
    store.add_image(vol, image_id="vol", scale=(3.0, 0.5, 0.7))
    store.add_image(rng.normal(size=(20, 24)).astype(np.float32), image_id="flat")
    masks = {}
    for i, rater in enumerate(["alice", "bob", "carol"]):
        m = np.zeros(vol.shape, np.uint8)
        m[2:4, 5 : 10 + i * 3, 5:12] = 1
        store.save_annotation("vol", rater, m, role="expert", tools=["brush"])
        masks[rater] = m
    flat = np.zeros((20, 24), np.uint8)
    flat[3:8, 4:9] = 1
    store.save_annotation("flat", "alice", flat, role="trainee")
    return store, vol, masks, flat


def test_init_add_info_history(tmp_path, capsys):
    path = tmp_path / "s.zarr"
    assert main(["store", "init", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["schema_version"] == 1
    img = np.arange(4 * 8 * 9, dtype=np.uint16).reshape(4, 8, 9)
    np.save(tmp_path / "scan_01.npy", img)
    assert main(["store", "add", str(path), str(tmp_path / "scan_01.npy")]) == 0
    assert main(["store", "add", str(path), str(tmp_path / "scan_01.npy"), "--id", "other"]) == 0
    capsys.readouterr()
    # hostile id: one-line error, non-zero exit
    assert main(["store", "add", str(path), str(tmp_path / "scan_01.npy"), "--id", "../evil"]) == 1
    assert "--id: '../evil' is not a valid identifier" in capsys.readouterr().err
    assert not (tmp_path / "evil").exists()
    store = ProjectStore.open(path)
    np.testing.assert_array_equal(store.read_image("scan_01")[0], img)
    store.save_annotation("other", "bob", img > 100, role="resident", note="hello")
    assert main(["store", "info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [i["image_id"] for i in info["images"]] == ["other", "scan_01"]
    assert info["images"][0]["raters"]["bob"]["versions"] == 1
    assert main(["store", "info", str(path)]) == 0
    assert "bob (v1, resident)" in capsys.readouterr().out
    assert main(["store", "history", str(path), "--json"]) == 0
    hist = json.loads(capsys.readouterr().out)
    assert [(h["rater"], h["version"], h["note"]) for h in hist] == [("bob", 1, "hello")]
    assert main(["store", "verify", str(path)]) == 0
    assert "OK" in capsys.readouterr().out


def test_verify_cli_names_damage(filled, capsys):
    store = filled[0]
    chunk_dir = store.path / "images/vol/annotations/bob/v000001/c"
    chunk = sorted(p for p in chunk_dir.rglob("*") if p.is_file())[0]
    chunk.write_bytes(b"\x28\xb5\x2f\xfd garbage")
    attrs = store.path / "images/flat/zarr.json"
    attrs.write_text("{ broken")
    assert main(["store", "verify", str(store.path)]) == 1
    err = capsys.readouterr().err
    assert str(chunk) in err and str(attrs) in err and "2 error(s)" in err
    assert main(["store", "verify", str(store.path), "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert not payload["ok"] and {p["path"] for p in payload["problems"]} == {
        str(chunk),
        str(attrs),
    }


def test_verify_cli_repairs_derived_state(filled, capsys):
    store = filled[0]
    (store.path / "images/vol/labels/alice/zarr.json").unlink()
    # derived state only (what an ordinary crash leaves): distinct exit code and wording
    assert main(["store", "verify", str(store.path)]) == 3
    assert "repairable" in capsys.readouterr().err
    assert main(["store", "verify", str(store.path), "--repair"]) == 0
    assert main(["store", "verify", str(store.path)]) == 0


def test_cli_store_errors_are_one_line(tmp_path, capsys):
    assert main(["store", "info", str(tmp_path / "nothing.zarr")]) == 1
    assert "is not a probseg project store" in capsys.readouterr().err
    (tmp_path / "new.zarr").mkdir()
    (tmp_path / "new.zarr/zarr.json").write_text(
        json.dumps(
            {
                "zarr_format": 3,
                "node_type": "group",
                "attributes": {"probseg": {"kind": "project", "schema_version": 7}},
            }
        )
    )
    assert main(["store", "info", str(tmp_path / "new.zarr")]) == 1
    assert "newer" in capsys.readouterr().err


def _nifti(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def test_export_nnunet_per_rater(filled, tmp_path, capsys):
    store, vol, masks, flat = filled
    out = tmp_path / "Dataset001_probseg"
    assert main(["export", str(store.path), "--format", "nnunet", str(out)]) == 0
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["numTraining"] == 4 and dataset["file_ending"] == ".nii.gz"
    assert dataset["labels"] == {"background": 0, "lesion": 1}
    assert dataset["channel_names"] == {"0": "image"}
    cases = sorted(p.name for p in (out / "labelsTr").iterdir())
    assert cases == ["flat+alice.nii.gz", "vol+alice.nii.gz", "vol+bob.nii.gz", "vol+carol.nii.gz"]
    assert sorted(p.name for p in (out / "imagesTr").iterdir())[0] == "flat+alice_0000.nii.gz"
    img = nib.load(str(out / "imagesTr/vol+bob_0000.nii.gz"))
    np.testing.assert_allclose(img.header.get_zooms(), (0.7, 0.5, 3.0))
    np.testing.assert_allclose(np.asarray(img.dataobj), vol.transpose(2, 1, 0))
    np.testing.assert_array_equal(
        _nifti(out / "labelsTr/vol+bob.nii.gz"), masks["bob"].transpose(2, 1, 0)
    )
    np.testing.assert_array_equal(_nifti(out / "labelsTr/flat+alice.nii.gz")[..., 0], flat.T)
    # a second export into the same folder is refused
    assert main(["export", str(store.path), "--format", "nnunet", str(out)]) == 1


def test_export_monai_consensus(filled, tmp_path):
    store, _vol, masks, _ = filled
    out = tmp_path / "monai"
    assert (
        main(["export", str(store.path), "--format", "monai", str(out), "--per", "consensus"]) == 0
    )
    datalist = json.loads((out / "datalist.json").read_text())
    entries = {e["case"]: e for e in datalist["training"]}
    assert sorted(entries) == ["flat", "vol"]
    label = _nifti(out / entries["vol"]["label"]).transpose(2, 1, 0)
    np.testing.assert_array_equal(label, majority_vote(list(masks.values())))
    # known answer: the middle rater's extent wins (2 of 3 raters)
    np.testing.assert_array_equal(label, masks["bob"])
    assert (out / entries["vol"]["image"]).is_file()
    from monai.data import load_decathlon_datalist

    loaded = load_decathlon_datalist(
        str(out / "datalist.json"), data_list_key="training", base_dir=str(out)
    )
    assert all(Path(e["label"]).is_file() for e in loaded)


def test_majority_vote_known_answers():
    a = np.array([0, 1, 1, 2, 2, 0])
    b = np.array([0, 1, 0, 2, 1, 1])
    c = np.array([1, 1, 0, 0, 1, 2])
    np.testing.assert_array_equal(majority_vote([a, b, c]), [0, 1, 0, 2, 1, 0])
    # two raters disagreeing: a tie goes to background
    np.testing.assert_array_equal(majority_vote([np.array([1, 1]), np.array([0, 1])]), [0, 1])


def test_real_probseg_subprocess(filled):
    store = filled[0]
    exe = str(VENV_PROBSEG) if VENV_PROBSEG.exists() else None
    cmd = [exe] if exe else [sys.executable, "-m", "napari_probseg.cli"]
    result = subprocess.run(
        [*cmd, "store", "history", str(store.path), "--image", "vol", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(h["rater"] for h in json.loads(result.stdout)) == ["alice", "bob", "carol"]
