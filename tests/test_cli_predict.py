"""``probseg predict`` / ``probseg models`` on a tiny user model card, and bad-input exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from model_helpers import tiny_card
from napari_probseg.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A user card + safetensors of a tiny 2D BasicUNet with channel dropout, and test images."""
    d = tmp_path_factory.mktemp("models")
    tiny_card(d, name="tiny2d", dropout=0.2, spacing=[1.0, 1.0])
    rng = np.random.default_rng(0)
    img = rng.normal(size=(40, 48)).astype(np.float32)
    img[10:25, 12:30] += 2.0
    np.save(d / "img.npy", img)
    nan = img.copy()
    nan[3, 3] = np.nan
    np.save(d / "nan.npy", nan)
    np.save(d / "four_d.npy", rng.normal(size=(2, 3, 20, 24)).astype(np.float32))
    np.save(d / "vol.npy", rng.normal(size=(3, 20, 24)).astype(np.float32))
    (d / "broken.npy").write_bytes(b"not a numpy file at all")
    return d


def test_predict_npy_writes_zarr_and_json_summary(model_dir, tmp_path, capsys):
    out = tmp_path / "pred.zarr"
    argv = [
        "predict",
        str(model_dir / "img.npy"),
        "--model",
        "tiny2d",
        "--model-dir",
        str(model_dir),
        "--method",
        "mc_dropout",
        "-n",
        "4",
        "--seed",
        "1",
        "--out",
        str(out),
        "--json",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert captured.err == ""  # --json: no progress
    assert summary["method"] == "mc_dropout" and summary["n_samples"] == 4
    assert summary["source"] == ["parameter"] and summary["image"].endswith("img.npy")
    assert summary["meanings"]["mutual_information"] == "epistemic"
    assert {s["aggregation"] for s in summary["scores"]} == {
        "mean",
        "foreground_normalized",
        "patch_max",
    }
    assert {m["measure"] for m in summary["structure"]} >= {
        "pairwise_dice",
        "volume_cov",
        "sample_set_entropy",
    }
    assert "top" in summary["regions"] and set(summary["timings"]) >= {"sample", "total"}
    group = zarr.open_group(str(out), mode="r")
    assert group["samples"].shape == (4, 40, 48) and group["samples"].dtype == np.uint8
    assert group["mean_probs"].shape == (2, 40, 48)
    prov = group.attrs["provenance"]
    from napari_probseg.models import load_card

    assert prov["card_sha256"] == load_card(model_dir / "tiny2d.json").sha256
    assert prov["seed"] == 1 and prov["tiling"]["patch_size"] == [32, 32]
    assert group.attrs["regions"] == summary["regions"]


def test_predict_human_output_progress_and_env_models(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PROBSEG_MODEL_PATH", str(model_dir))
    out = tmp_path / "vol.zarr"
    argv = [
        "predict",
        str(model_dir / "vol.npy"),
        "--model",
        "tiny2d",
        "--slice-by-slice",
        "-n",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "probseg predict:" in captured.err and "100%" in captured.err
    assert "method: mc_dropout  N = 2" in captured.out
    assert zarr.open_group(str(out), mode="r")["samples"].shape == (2, 3, 20, 24)
    assert main(["models", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    tiny = next(m for m in listing["models"] if m["name"] == "tiny2d")
    assert tiny["origin"] == "user" and tiny["methods"] == ["softmax", "mc_dropout"]
    assert tiny["default_method"] == "mc_dropout"
    assert main(["models"]) == 0
    assert "tiny2d  [user, 2D" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["{d}/missing.npy"], "does not exist"),
        (["{d}/broken.npy"], "broken.npy"),
        (["{d}/nan.npy"], "NaN"),
        (["{d}/four_d.npy"], "--channel"),
        (["{d}/img.npy", "--model", "nosuchmodel"], "nosuchmodel"),
        (["{d}/img.npy", "--method", "ssn"], "'ssn' is not supported"),
        ([], "exactly one"),
    ],
)
def test_bad_input_one_line_nonzero_no_traceback(model_dir, tmp_path, args, expect):
    """In a real subprocess (these fail before torch is imported, so they are fast)."""
    args = [a.format(d=model_dir) for a in args]
    if "--model" not in args:
        args += ["--model", "tiny2d"]
    cmd = [
        sys.executable,
        "-m",
        "napari_probseg.cli",
        "predict",
        *args,
        "--model-dir",
        str(model_dir),
        "-n" if "-n" not in args else "--seed",
        "2",
        "--out",
        str(tmp_path / "o.zarr"),
        "--json",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("probseg predict: error:") and expect in lines[0], lines[0]
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["{d}/vol.npy"], "--slice-by-slice"),
        (["{d}/img.npy", "-n", "0"], "n_samples"),
        (["{d}/img.npy", "--device", "cuda"], "CUDA"),
    ],
)
def test_bad_input_after_model_load_in_process(model_dir, tmp_path, capsys, args, expect):
    args = [a.format(d=model_dir) for a in args]
    argv = [
        "predict",
        *args,
        "--model",
        str(model_dir / "tiny2d.json"),
        "--out",
        str(tmp_path / "o.zarr"),
    ]
    assert main(argv) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("probseg predict: error:"), lines
    assert expect in lines[0]
    assert not (tmp_path / "o.zarr").exists()


def test_existing_out_is_refused(model_dir, tmp_path, capsys):
    out = tmp_path / "o.zarr"
    out.mkdir()
    argv = [
        "predict",
        "--sample",
        "2d",
        "--model",
        str(model_dir / "tiny2d.json"),
        "--out",
        str(out),
    ]
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err


def _bundled_2d_dropout():
    from napari_probseg.models import bundled_models

    for card in bundled_models().values():
        if card.spatial_dims == 2 and "mc_dropout" in card.methods:
            return card
    return None


@pytest.mark.slow
def test_end_to_end_bundled_2d_model(tmp_path, capsys):
    card = _bundled_2d_dropout()
    assert card is not None, "a bundled 2D MC-dropout model ships in resources/models"
    out = tmp_path / "e2e.zarr"
    argv = [
        "predict",
        "--sample",
        "2d",
        "--model",
        card.name,
        "--method",
        "mc_dropout",
        "-n",
        "4",
        "--out",
        str(out),
        "--json",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_samples"] == 4 and summary["model"] == card.name
    assert summary["image"] == "sample:2d"
    group = zarr.open_group(str(out), mode="r")
    assert group["samples"].shape == (4, 128, 128)
    # a trained model finds the lesions: the consensus is not empty and not everything
    fg = float(np.asarray(group["mean_probs"][1]).mean())
    assert 0.0 < fg < 0.5


# -- --out streams into the output store (issue 13, "Memory and scale of big volumes") --------


def _predict_argv(model_dir, out, *extra):
    return [
        "predict",
        str(model_dir / "img.npy"),
        "--model",
        str(model_dir / "tiny2d.json"),
        "--method",
        "mc_dropout",
        "-n",
        "3",
        "--seed",
        "4",
        "--out",
        str(out),
        "--json",
        *extra,
    ]


def _in_memory_reference(model_dir):
    from napari_probseg import engine
    from napari_probseg.models import load_card, load_method

    method = load_method(load_card(model_dir / "tiny2d.json"), "mc_dropout", device="cpu")
    img = np.load(model_dir / "img.npy")
    return engine.run_prediction(
        img, method, n_samples=3, seed=4, device="cpu", scale=(1.0, 1.0), streaming=False
    )


def test_cli_out_subprocess_equals_the_in_memory_api(model_dir, tmp_path):
    out = tmp_path / "pred.zarr"
    proc = subprocess.run(
        [sys.executable, "-m", "napari_probseg.cli", *_predict_argv(model_dir, out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, proc.stderr
    ref = _in_memory_reference(model_dir)
    group = zarr.open_group(str(out), mode="r")
    assert ref.provenance["memory"]["mode"] == "whole"
    assert group.attrs["provenance"]["memory"]["mode"] == "slab"  # streamed, not saved after
    assert group.attrs["provenance"]["output"] == str(out)
    np.testing.assert_array_equal(group["samples"][...], ref.samples)
    for name in ("mean_probs", "variance", "predictive_entropy", "expected_entropy"):
        assert group[name].dtype == np.float32
        np.testing.assert_allclose(group[name][...], getattr(ref.maps, name), atol=1e-5)
    np.testing.assert_allclose(group["volumes"][...], ref.maps.volumes, rtol=1e-5)
    assert group.attrs["napari_probseg"] == {"kind": "prediction", "format_version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["pred.zarr"]  # no temporary left


def test_cli_out_streams_through_the_engine_output_store(model_dir, tmp_path, capsys, monkeypatch):
    """The arrays are written by the engine's streaming path while predicting (engine._io's
    open_stream_store), never by save_result afterwards; --overwrite of our own output streams
    into a fresh sibling and swaps it in; float16 maps keep the layout."""
    from napari_probseg import engine
    from napari_probseg.engine import _io

    opened: list = []
    real_open = _io.open_stream_store

    def recording_open(path, **kw):
        tmp, arrays = real_open(path, **kw)
        opened.append((Path(path), tmp, kw))
        return tmp, arrays

    def no_save(*a, **k):
        raise AssertionError("save_result must not write a streamed --out")

    monkeypatch.setattr(_io, "open_stream_store", recording_open)
    monkeypatch.setattr(engine, "save_result", no_save)
    out = tmp_path / "pred.zarr"
    assert main(_predict_argv(model_dir, out)) == 0
    assert len(opened) == 1 and opened[0][0] == out
    first = json.loads(capsys.readouterr().out)
    # --overwrite: stream into a hidden sibling, then replace our own previous output
    assert main(_predict_argv(model_dir, out, "--overwrite", "--map-dtype", "float16")) == 0
    assert len(opened) == 2 and opened[1][0] != out and opened[1][0].parent == out.parent
    assert opened[1][2]["map_dtype"] == "float16"
    second = json.loads(capsys.readouterr().out)
    assert second["out"] == first["out"] == str(out)
    group = zarr.open_group(str(out), mode="r")
    assert group["mean_probs"].dtype == np.float16 and group["samples"].dtype == np.uint8
    assert group.attrs["provenance"]["output"] == str(out)
    ref = _in_memory_reference(model_dir)
    np.testing.assert_array_equal(group["samples"][...], ref.samples)
    np.testing.assert_allclose(group["mean_probs"][...], ref.maps.mean_probs, atol=1e-3)
    assert [p.name for p in tmp_path.iterdir()] == ["pred.zarr"]


@pytest.mark.parametrize("where", ["/proc/x/y", "/proc/probseg-out.zarr"])
def test_unwritable_out_fails_before_the_prediction_runs(model_dir, where, capsys, monkeypatch):
    from napari_probseg import engine

    ran: list = []
    monkeypatch.setattr(engine, "run_prediction", lambda *a, **k: ran.append(1))
    assert main(_predict_argv(model_dir, Path(where))) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("probseg predict: error: out: cannot create")
    assert ran == []  # refused before loading the model or computing anything


def test_overwrite_of_a_foreign_folder_is_refused_before_predicting(model_dir, tmp_path, capsys):
    out = tmp_path / "home"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(_predict_argv(model_dir, out, "--overwrite")) == 1
    assert "not a probseg prediction output" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_sample_cap_cli_and_engine_agree_and_refuse_before_computing(model_dir, tmp_path, capsys):
    from napari_probseg.cli import _predict as cli_predict
    from napari_probseg.engine import _predict as engine_predict

    assert cli_predict.MAX_SAMPLES == engine_predict.MAX_SAMPLES == 1024
    argv = _predict_argv(model_dir, tmp_path / "o.zarr")
    argv[argv.index("-n") + 1] = "100000"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "n_samples: expected 1..1024" in err and not (tmp_path / "o.zarr").exists()
