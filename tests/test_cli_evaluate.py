"""``probseg evaluate`` / ``probseg calibrate`` on real stores (in-process and as subprocesses)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from model_helpers import tiny_card
from napari_probseg.cli import main
from napari_probseg.store import ProjectStore

SHAPE = (32, 32)


@pytest.fixture
def store_path(tmp_path):
    """Two images, three raters, one hand-made run each (samples = the raters)."""
    path = tmp_path / "p.zarr"
    s = ProjectStore.create(path, class_names=["background", "lesion"])
    rng = np.random.default_rng(0)
    masks = []
    for lo, hi in [(8, 20), (8, 22), (10, 20)]:
        m = np.zeros(SHAPE, np.uint8)
        m[lo:hi, lo:hi] = 1
        masks.append(m)
    m = np.stack(masks)
    f = m.mean(0)
    for iid in ("a", "b"):
        s.add_image(rng.normal(size=SHAPE).astype(np.float32), image_id=iid)
        for j in range(3):
            s.save_annotation(iid, f"r{j}", m[j], role="expert")
        s.save_prediction(
            iid,
            {"samples": m, "probs": np.stack([1 - f, f])},
            {"method": "hand", "source": ["latent"]},
            run_id="hand",
        )
    return path


def test_table_by_default(store_path, capsys):
    assert main(["evaluate", str(store_path)]) == 0
    out = capsys.readouterr().out
    assert "reference: majority" in out and "GED16" in out and "HM-IoU16" in out
    assert out.count("\nhand ") == 0 and "a        hand" in out
    assert "AURC over 2 images" in out


def test_json_schema(store_path, capsys):
    assert (
        main(["evaluate", str(store_path), "--json", "--reference", "soft", "--run", "hand"]) == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["reference"]["mode"] == "soft"
    assert [i["image_id"] for i in data["images"]] == ["a", "b"]
    img = data["images"][0]
    assert img["metrics"]["ged"] == pytest.approx(0.0, abs=1e-12)
    assert img["metrics"]["hm_iou"] == pytest.approx(1.0)
    assert img["metrics"]["ece"] == pytest.approx(0.0, abs=1e-6)
    assert img["method"] == "hand" and img["source"] == ["latent"] and img["n_samples"] == 3
    assert data["dataset"]["calibration"]["n_pixels"] == 2 * 32 * 32
    assert data["dataset"]["means"]["ncc"]["n_nan"] == 0
    assert data["settings"]["n_samples"] == 16 and data["plots"] == []


def test_json_scoring_rules_pavpu_curve_and_ged_options(store_path, capsys):
    argv = ["evaluate", str(store_path), "--json", "--reference", "soft", "--ged-kernel", "dice"]
    assert main([*argv, "--ged-absent", "one"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["settings"]["ged"]["kernel"] == "1 - Dice"
    assert data["settings"]["ged"]["absent"] == "one"
    img = data["images"][0]
    # probabilities equal to the raters' mean: soft Brier 0, soft NLL = the mean entropy of f
    assert img["metrics"]["brier"] == pytest.approx(0.0, abs=1e-9)
    f = np.zeros(SHAPE)
    for lo, hi in [(8, 20), (8, 22), (10, 20)]:
        f[lo:hi, lo:hi] += 1 / 3
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nan_to_num(f * np.log(f)) - np.nan_to_num((1 - f) * np.log(1 - f))
    assert img["metrics"]["nll"] == pytest.approx(h.mean(), rel=1e-6)
    assert img["metrics"]["ged"] == pytest.approx(0.0, abs=1e-12)  # samples are the raters
    curve = img["pavpu"]["curve"]
    assert len(curve["thresholds"]) == len(curve["pavpu"]) == 21
    assert 0.0 <= img["metrics"]["pavpu_area"] <= 1.0
    assert curve["area"] == pytest.approx(img["metrics"]["pavpu_area"])
    assert img["warnings"] == []  # the run's summary warnings (none for this hand-made run)


@pytest.mark.parametrize("reference", ["majority", "soft", "rater:r2", "all"])
def test_reference_modes(store_path, capsys, reference):
    assert main(["evaluate", str(store_path), "--json", "--reference", reference]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["reference"]["mode"] == reference
    assert data["dataset"]["n_images"] == 2


def test_plots(store_path, tmp_path, capsys):
    plots = tmp_path / "plots"
    assert main(["evaluate", str(store_path), "--plots", str(plots), "--images", "a"]) == 0
    assert "plots: 6 files" in capsys.readouterr().out
    for stem in ("reliability", "ged_vs_n", "rater_ablation"):
        for ext in ("png", "svg"):
            assert (plots / f"{stem}.{ext}").stat().st_size > 1000


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "napari_probseg.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reference", "median"], "reference: expected one of"),
        (["--images", "zz"], "image_ids: no image 'zz'"),
        (["--run", "nope"], "store: nothing to evaluate"),
        (["--n-bins", "0"], "n_bins"),
        (["--predict", "nocolon"], "predict: expected MODEL:METHOD"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(store_path, args, message):
    proc = _run("evaluate", str(store_path), *args)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("probseg evaluate: error:") and message in lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_store_exits_nonzero(tmp_path):
    proc = _run("evaluate", str(tmp_path / "nothing.zarr"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"probseg evaluate: error: store: {tmp_path / 'nothing.zarr'} is not a project store"
    ]


def test_predict_then_evaluate_and_calibrate(store_path, tmp_path, capsys):
    from napari_probseg.models import resolve_card

    d = tmp_path / "models"
    tiny_card(d, name="tiny2d", dropout=0.2)
    args = ["evaluate", str(store_path), "--predict", f"{d / 'tiny2d.json'}:mc_dropout"]
    assert main([*args, "-n", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {i["method"] for i in data["images"]} == {"mc_dropout"}
    assert data["images"][0]["n_samples"] == 3
    assert data["images"][0]["meanings"]["mutual_information"] == "epistemic"
    # the runs stay in the store: the latest run of each image is now the prediction
    assert main(["evaluate", str(store_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"]["methods"] == ["mc_dropout"]

    out = tmp_path / "cal" / "tiny-cal.json"
    cal = ["calibrate", str(store_path), "--model", str(d / "tiny2d.json"), "--out", str(out)]
    assert main(cal) == 0
    text = capsys.readouterr().out
    assert "temperature: 1 ->" in text and "ECE:" in text
    assert resolve_card(out).methods["softmax"]["temperature"] > 0
    # a second run without --overwrite refuses
    assert main(cal) == 1
    assert "exists" in capsys.readouterr().err


def test_run_warnings_reach_the_evaluation(store_path, capsys):
    from napari_probseg.store import ProjectStore

    s = ProjectStore.open(store_path, mode="r+")
    samples = np.zeros((2, *SHAPE), np.uint8)
    samples[:, 8:20, 8:20] = 1
    f = samples.mean(0).astype(np.float32)
    prov = {"warnings": ["input intensities far outside the training data"]}
    s.save_prediction(
        "a",
        {"samples": samples, "probs": np.stack([1 - f, f])},
        {"method": "hand", "source": ["parameter"], "provenance": prov},
        run_id="warned",
    )
    assert main(["evaluate", str(store_path), "--run", "warned", "--images", "a"]) == 0
    assert "WARNING (a): input intensities far outside the training data" in capsys.readouterr().out
