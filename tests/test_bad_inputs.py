"""Bad-input suite (issue 13): hostile or broken inputs through the CLI and the API.

Every case must fail with one line naming the problem (no traceback), a non-zero exit code, and
no file changed outside the output it was asked to write.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from napari_probseg.cli import main
from napari_probseg.models import ModelCard, ModelCardError, load_card
from napari_probseg.store import ProjectStore, StoreError
from test_models import make_card


def snapshot(folder: Path, skip: Path | None = None) -> dict[str, str]:
    out = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            p = Path(root) / name
            if skip is not None and (p == skip or skip in p.parents):
                continue
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Broken input files, a tiny model card, a small store."""
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    good = rng.random((32, 32)).astype(np.float32)
    np.save(d / "good.npy", good)
    for name, arr in {
        "nan.npy": np.where(good > 0.5, np.nan, good),
        "inf.npy": np.where(good > 0.5, np.inf, good),
        "huge.npy": good * 3e38,
        "one_d.npy": np.zeros(10, np.float32),
        "five_d.npy": np.zeros((1, 1, 2, 4, 4), np.float32),
        "empty.npy": np.zeros((0, 0), np.float32),
        "text.npy": np.array([["a", "b"], ["c", "d"]]),
    }.items():
        np.save(d / name, arr)
    np.save(d / "pickle.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (d / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    (d / "x.xyz").write_text("hi")
    (d / "trunc.nii.gz").write_bytes(gzip.compress(b"\x5c\x01" + b"\0" * 30))
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape((30000, 30000, 30000))  # 100 TB declared, 64 bytes present
    with gzip.open(d / "declared_huge.nii.gz", "wb") as f:
        f.write(header.binaryblock + b"\0" * 68)
    card = make_card(d / "model" if (d / "model").mkdir() is None else d)
    cards = {}
    for name, change in {
        "members": {"architecture": {**card.architecture, "wrapper": "ensemble", "members": "abc"}},
        "in_channels": {"in_channels": "one"},
        "spatial_dims": {"spatial_dims": 4},
        "classes": {"classes": "background"},
        "patch_size": {"patch_size": ["a", 2]},
        "weights_format": {"weights": {"path": "w.pt", "format": "onnx"}},
        "unknown_field": {"surprise": 1},
        "pickle_weights": {"weights": {"path": "w.pt", "format": "pickle"}},
        "factory": {"architecture": {"factory": "os:system", "args": {"command": "true"}}},
        "pretrained": {
            "architecture": {"network": "DenseNet121", "args": {"pretrained": True}},
        },
    }.items():
        data = card.to_dict()
        data.update(change)
        if name in ("members",):
            data["methods"], data["default_method"] = {"ensemble": {}}, "ensemble"
        if name in ("factory", "pretrained"):
            data["methods"], data["default_method"] = {"softmax": {}}, "softmax"
        path = d / "model" / f"{name}.json"
        path.write_text(json.dumps(data))
        cards[name] = path
    (d / "model" / "unparsable.json").write_text("{not json")
    cards["unparsable"] = d / "model" / "unparsable.json"
    import pickle

    (d / "model" / "pickled.json").write_bytes(pickle.dumps({"name": "x"}))
    cards["pickled"] = d / "model" / "pickled.json"
    store = ProjectStore.create(d / "p.zarr", class_names=["bg", "fg"])
    store.add_image(good, image_id="img")
    store.save_annotation("img", "alice", (good > 0.5).astype(np.uint8), role="expert")
    (d / "notastore").mkdir()
    (d / "notastore" / "file.txt").write_text("x")
    return {"dir": d, "card": card.path, "cards": cards, "store": d / "p.zarr"}


def _cli_cases() -> list[tuple[str, list[str], str]]:
    """(case id, argv with {d} / {card} / {store} / {cards[...]} placeholders, expected text)."""
    pred = ["predict", "--model", "{card}", "--out", "{d}/out.zarr"]
    return [
        ("nan", [*pred, "{d}/nan.npy"], "NaN or Inf"),
        ("inf", [*pred, "{d}/inf.npy"], "NaN or Inf"),
        ("huge-values", [*pred, "{d}/huge.npy"], "values up to"),
        ("1d", [*pred, "{d}/one_d.npy"], "image"),
        ("5d", [*pred, "{d}/five_d.npy"], "image"),
        ("empty", [*pred, "{d}/empty.npy"], "empty"),
        ("text-dtype", [*pred, "{d}/text.npy"], "text.npy"),
        ("pickle", [*pred, "{d}/pickle.npy"], "pickled"),
        ("corrupt-npy", [*pred, "{d}/corrupt.npy"], "corrupt.npy"),
        ("unknown-suffix", [*pred, "{d}/x.xyz"], "unsupported file type"),
        ("truncated-nifti", [*pred, "{d}/trunc.nii.gz"], "trunc.nii.gz"),
        ("declared-huge-nifti", [*pred, "{d}/declared_huge.nii.gz"], "declared_huge.nii.gz"),
        ("missing-file", [*pred, "{d}/nothing.npy"], "nothing.npy"),
        ("image-and-sample", [*pred, "{d}/good.npy", "--sample", "2d"], "exactly one"),
        ("no-image", pred, "exactly one"),
        ("n-zero", [*pred, "{d}/good.npy", "-n", "0"], "n_samples"),
        ("n-huge", [*pred, "{d}/good.npy", "-n", "100000"], "n_samples: expected 1..1024"),
        ("batch-zero", [*pred, "{d}/good.npy", "--batch-size", "0"], "batch_size"),
        ("overlap", [*pred, "{d}/good.npy", "--overlap", "1.5"], "overlap"),
        ("overlap-nan", [*pred, "{d}/good.npy", "--overlap", "nan"], "overlap"),
        ("seed", [*pred, "{d}/good.npy", "--seed", "-1"], "seed"),
        ("channel", [*pred, "{d}/good.npy", "--channel", "3"], "channel"),
        ("method", [*pred, "{d}/good.npy", "--method", "magic"], "method: 'magic'"),
        ("out-proc", ["predict", "--model", "{card}", "{d}/good.npy", "--out", "/proc/x/y"], "out"),
        ("out-exists", ["predict", "--model", "{card}", "{d}/good.npy", "--out", "{d}"], "exists"),
        ("overwrite-foreign", [*pred[:-1], "{d}/notastore", "{d}/good.npy", "--overwrite"],
         "not a probseg prediction output"),
        ("model-missing", ["predict", "--model", "nope", "{d}/good.npy", "--out", "{d}/o"], "nope"),
        *[
            (f"card-{name}", ["predict", "--model", f"{{cards[{name}]}}", "{d}/good.npy",
                              "--out", "{d}/out.zarr"], text)
            for name, text in {
                "members": "architecture.members",
                "in_channels": "in_channels",
                "spatial_dims": "spatial_dims",
                "classes": "classes",
                "patch_size": "patch_size",
                "weights_format": "weights.format",
                "unknown_field": "unknown field",
                "pickle_weights": "executes code",
                "factory": "architecture.factory",
                "pretrained": "architecture.args.pretrained",
                "unparsable": "cannot parse",
                "pickled": "cannot parse",
            }.items()
        ],
        ("store-init-nonempty", ["store", "init", "{d}/notastore"], "not an empty directory"),
        ("store-add-nan", ["store", "add", "{store}", "{d}/nan.npy"], "NaN"),
        ("store-add-1d", ["store", "add", "{store}", "{d}/one_d.npy", "--id", "a"], "data"),
        ("store-add-empty-id", ["store", "add", "{store}", "{d}/good.npy", "--id", ""], "--id"),
        ("store-add-com0", ["store", "add", "{store}", "{d}/good.npy", "--id", "COM0"], "reserved"),
        ("store-add-dots", ["store", "add", "{store}", "{d}/good.npy", "--id", "../x"], "--id"),
        ("store-add-trailing-dot", ["store", "add", "{store}", "{d}/good.npy", "--id", "a."],
         "--id"),
        ("store-add-case", ["store", "add", "{store}", "{d}/good.npy", "--id", "IMG"],
         "only in letter case"),
        ("store-add-duplicate", ["store", "add", "{store}", "{d}/good.npy", "--id", "img"],
         "already exists"),
        ("store-add-pickle", ["store", "add", "{store}", "{d}/pickle.npy"], "pickled"),
        ("store-add-no-store", ["store", "add", "{d}/notastore", "{d}/good.npy"],
         "not a probseg project store"),
        ("store-info-missing", ["store", "info", "{d}/missing.zarr"], "missing.zarr"),
        ("store-verify-missing", ["store", "verify", "{d}/missing.zarr"], "missing.zarr"),
        ("store-history-unknown", ["store", "history", "{store}", "--image", "nope"], "nope"),
        ("store-history-hostile", ["store", "history", "{store}", "--image", "../../etc"],
         "not a valid identifier"),
        ("export-foreign", ["export", "{d}/notastore", "--format", "nnunet", "{d}/exp"],
         "not a probseg project store"),
        ("rank-foreign", ["rank", "{d}/notastore", "--model", "{card}"],
         "notastore is not a project store"),
        ("rank-show-missing", ["rank", "--show", "{d}/missing.zarr"], "is not a project store"),
    ]  # fmt: skip


CLI_CASES = _cli_cases()


@pytest.mark.parametrize(("case", "argv", "expected"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(inputs, capsys, case, argv, expected):
    d = inputs["dir"]
    argv = [
        a.format(d=d, card=inputs["card"], store=inputs["store"], cards=inputs["cards"])
        for a in argv
    ]
    before = snapshot(d, skip=d / "out.zarr")
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "warning" not in line]
    assert code != 0, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0], lines[0]
    assert snapshot(d, skip=d / "out.zarr") == before
    assert not (d / "out.zarr").exists()


def _api_cases():
    m = np.zeros((32, 32), np.uint8)

    def save(**kw):
        args = {"mask": m, "role": "expert"}
        args.update(kw)
        return lambda s: s.save_annotation(
            args.pop("image_id", "img"), args.pop("rater", "bob"), **args
        )

    return [
        ("mask-shape", save(mask=np.zeros((4, 4), np.uint8)), ValueError, "mask: expected the image's shape"),
        ("mask-float", save(mask=m.astype(float)), ValueError, "mask: expected integer labels"),
        ("mask-negative", save(mask=m.astype(np.int8) - 1), ValueError, "mask: labels must be >= 0"),
        ("mask-classes", save(mask=m + 5), ValueError, "outside the store's classes"),
        ("role", save(role="boss"), ValueError, "role"),
        ("tools", save(tools=["x" * 200]), ValueError, "tools"),
        ("time-nan", save(time_spent_s=float("nan")), ValueError, "time_spent_s"),
        ("parent-zero", save(parent_version=0), ValueError, "parent_version"),
        ("parent-future", save(parent_version=9), ValueError, "parent_version"),
        ("sample-negative", save(source_sample=-1), ValueError, "source_sample"),
        ("note-int", save(note=5), ValueError, "note"),
        ("extra-object", save(extra={"a": object()}), ValueError, "extra"),
        ("extra-nan", save(extra={"a": float("nan")}), ValueError, "extra"),
        ("image-hostile", save(image_id="../../etc"), ValueError, "image_id"),
        ("rater-slash", save(rater="a/b"), ValueError, "rater"),
        ("rater-nul", save(rater="NUL"), ValueError, "reserved"),
        ("image-unknown", save(image_id="nope"), ValueError, "nope"),
        ("add-nan", lambda s: s.add_image(np.full((4, 4), np.nan), image_id="x"), ValueError, "data"),
        ("add-1d", lambda s: s.add_image(np.zeros(4), image_id="x"), ValueError, "data"),
        ("add-4d", lambda s: s.add_image(np.zeros((2, 2, 2, 2)), image_id="x"), ValueError, "data"),
        ("add-str", lambda s: s.add_image(np.array([["a"]]), image_id="x"), ValueError, "data"),
        ("add-empty", lambda s: s.add_image(np.zeros((0, 3)), image_id="x"), ValueError, "data"),
        ("add-scale", lambda s: s.add_image(np.zeros((4, 4)), image_id="x", scale=(1, -1)), ValueError, "scale"),
        ("add-chunks", lambda s: s.add_image(np.zeros((4, 4)), image_id="x", chunks=(0, 2)), ValueError, "chunks"),
        ("add-meta", lambda s: s.add_image(np.zeros((4, 4)), image_id="x", metadata={"a": {1, object()}}), ValueError, "metadata"),
        ("draft-shape", lambda s: s.save_draft("img", "bob", np.zeros((3, 3), np.uint8)), ValueError, "mask"),
        ("version-range", lambda s: s.read_version("img", "alice", 7), ValueError, "version"),
        ("version-type", lambda s: s.read_version("img", "alice", "1"), ValueError, "version"),
        ("latest-unknown", lambda s: s.latest("img", "zoe"), ValueError, "rater"),
        ("open-mode", lambda s: ProjectStore.open(s.path, mode="w"), ValueError, "mode"),
        ("readonly-write", lambda s: ProjectStore.open(s.path, mode="r").save_draft("img", "bob", m), StoreError, "read-only"),
        ("prediction-shape", lambda s: s.save_prediction("img", {"samples": np.zeros((2, 3, 3))}, {}), ValueError, "arrays"),
        ("prediction-run-id", lambda s: s.save_prediction("img", {"samples": m[None]}, {}, run_id="a/b"), ValueError, "run_id"),
    ]  # fmt: skip


API_CASES = _api_cases()


@pytest.mark.parametrize(
    ("case", "call", "error", "expected"), API_CASES, ids=[c[0] for c in API_CASES]
)
def test_api_bad_input(inputs, case, call, error, expected):
    d = inputs["dir"]
    before = snapshot(d)
    store = ProjectStore.open(inputs["store"])
    with pytest.raises(error) as info:
        call(store)
    message = str(info.value)
    assert expected in message and "\n" not in message, message
    assert snapshot(d) == before


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"in_channels": "one"}, "in_channels"),
        ({"in_channels": True}, "in_channels"),
        ({"classes": "ab"}, "classes"),
        ({"patch_size": [16.5, 16]}, "patch_size"),
        ({"spacing": [1.0, float("nan")]}, "spacing"),
        ({"methods": ["softmax"]}, "methods"),
        (
            {"architecture": {"network": "BasicUNet", "wrapper": "ssn", "rank": "x"}},
            "architecture.rank",
        ),
    ],
)
def test_card_fields_are_named(tmp_path, change, field):
    data = make_card(tmp_path).to_dict()
    data.update(change)
    with pytest.raises(ModelCardError, match=field):
        ModelCard.from_dict(data)


def test_damaged_store_metadata_is_named(tmp_path):
    store = ProjectStore.create(tmp_path / "p.zarr")
    (store.path / "zarr.json").write_bytes(b"\x80\x04pickle?")
    with pytest.raises(StoreError, match=r"zarr\.json: invalid JSON"):
        ProjectStore.open(store.path)
    with pytest.raises(ModelCardError, match="cannot parse"):
        load_card(store.path / "zarr.json")
