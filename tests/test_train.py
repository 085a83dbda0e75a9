"""Fine-tuning from a project store (training.finetune) and ``probseg train``, on tiny real models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from napari_probseg.cli import main
from napari_probseg.data import StoreDataset
from napari_probseg.engine import Cancelled
from napari_probseg.models import ModelCard, build_network, card_sha256, load_method
from napari_probseg.models.cards import file_sha256
from napari_probseg.store import ProjectStore
from napari_probseg.training._common import save_model
from napari_probseg.training.finetune import finetune, run_finetune

TINY = [4, 4, 4, 4, 4, 4]


def _tiny_card(
    folder: Path, name: str, *, wrapper: str = "plain", spatial_dims: int = 2, **extra
) -> Path:
    """Write an untrained tiny 2D BasicUNet card + safetensors (seeded); return the card path."""
    methods = {
        "plain": {"softmax": {"temperature": 1.3}, "mc_dropout": {"p": 0.1}, "tta": {}},
        "ssn": {"ssn": {}},
        "prob_unet": {"prob_unet": {}},
    }[wrapper]
    card = ModelCard(
        name=name,
        architecture={
            "wrapper": wrapper,
            "network": "BasicUNet",
            "args": {"features": TINY, "dropout": 0.1, "norm": "batch"},
            "dropout_mode": "channel",
            **extra,
        },
        weights={"path": f"{name}.safetensors", "format": "safetensors"},
        classes=["background", "lesion"],
        in_channels=1,
        spatial_dims=spatial_dims,
        normalization={"kind": "zscore"},
        patch_size=[64] * spatial_dims,
        methods=methods,
        default_method=next(iter(methods)) if wrapper != "plain" else "mc_dropout",
    )
    torch.manual_seed(0)
    save_model(card, build_network(card), folder)
    return folder / f"{name}.json"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny networks train faster on one thread than on shared, busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Store: im0..im2 (32x32, raters ann + bob), empty (no annotation), vol (16^3, ann)."""
    root = tmp_path_factory.mktemp("train")
    store = ProjectStore.create(root / "project.zarr", class_names=["background", "lesion"])
    rng = np.random.default_rng(0)
    for i in range(3):
        mask = np.zeros((32, 32), np.uint8)
        mask[6 + i : 18 + i, 8:20] = 1
        image = rng.normal(0, 1, (32, 32)) + 3.0 * mask
        store.add_image(image.astype(np.float32), image_id=f"im{i}")
        store.save_annotation(f"im{i}", "ann", mask, role="expert")
        store.save_annotation(f"im{i}", "bob", np.roll(mask, 2, axis=1), role="resident")
    store.save_annotation("im1", "bob", mask, role="resident", parent_version=1)
    store.add_image(rng.normal(0, 1, (32, 32)), image_id="empty")
    store.add_image(rng.normal(0, 1, (16, 16, 16)), image_id="vol")
    store.save_annotation("vol", "ann", np.ones((16, 16, 16), np.uint8), role="expert")
    parent = _tiny_card(root / "parent", "tiny")
    return root, store.path, parent


def test_finetune_changes_weights_and_records_lineage(setup, tmp_path):
    _, store_path, parent = setup
    events = []
    result = run_finetune(
        store_path,
        parent,
        out=tmp_path / "ft.json",
        epochs=2,
        batch_size=2,
        lr=1e-3,
        n_val=1,
        samples_per_image=2,
        seed=0,
        progress=events.append,
    )
    old = load_file(str(parent.with_suffix(".safetensors")))
    new = load_file(str(tmp_path / "ft.safetensors"))
    assert old.keys() == new.keys()
    changed = [k for k in old if old[k].is_floating_point() and not torch.equal(old[k], new[k])]
    assert len(changed) > 10 and "final_conv.weight" in changed
    card = ModelCard.from_dict(json.loads((tmp_path / "ft.json").read_text()))
    t = card.training
    assert card.name == "ft" and card.weights["sha256"] == file_sha256(tmp_path / "ft.safetensors")
    assert t["parent"]["name"] == "tiny" and t["parent"]["sha256"] == card_sha256(parent)
    assert t["parent"]["weights_sha256"] == file_sha256(parent.with_suffix(".safetensors"))
    assert t["store"] == str(Path(store_path).resolve())
    train, val = t["annotations"]["train"], t["annotations"]["val"]
    assert sorted([*train, *val]) == ["im0", "im1", "im2"] and len(val) == 1
    versions = {
        "im0": {"ann": 1, "bob": 1},
        "im1": {"ann": 1, "bob": 2},
        "im2": {"ann": 1, "bob": 1},
    }
    assert {**train, **val} == versions
    assert t["skipped"] == {"no_annotations": ["empty"], "other_dims": ["vol"]}
    assert t["epochs"] == 2 and t["rater_mode"] == "random" and t["steps"] == 4
    assert [h["epoch"] for h in t["history"]] == [1, 2]
    assert t["final_train_loss"] == pytest.approx(result.train_loss, abs=1e-6)
    assert t["final_val_loss"] == pytest.approx(result.val_loss, abs=1e-6)
    assert result.train_loss > 0 and result.val_loss > 0 and t["initial_val_loss"] > 0
    assert card.methods["softmax"]["temperature"] == 1.3  # inherited
    # the stored versions rebuild the same training data
    again = StoreDataset(store_path, versions=train)
    assert again.annotations == train
    # stages in order; fraction reaches 1
    stages = [e.stage for e in events]
    assert stages[0] == "prepare" and stages[-1] == "save" and stages.count("validate") == 2
    assert stages.count("train") == 4 and events[-1].fraction == 1.0
    method = load_method(tmp_path / "ft.json")
    probs = method.sample(torch.zeros(1, 1, 32, 32), 3, generator=torch.Generator().manual_seed(0))
    assert probs.shape == (3, 2, 32, 32)
    torch.testing.assert_close(probs.sum(1), torch.ones(3, 32, 32))


def test_finetune_is_seeded(setup, tmp_path):
    _, store_path, parent = setup
    kw = {"epochs": 1, "samples_per_image": 1, "val_fraction": 0.0, "rater_mode": "majority"}
    a = run_finetune(store_path, parent, out=tmp_path / "a.json", **kw)
    b = run_finetune(store_path, parent, out=tmp_path / "b.json", **kw)
    assert a.train_loss == b.train_loss and a.val_loss is None
    wa, wb = load_file(str(a.weights_path)), load_file(str(b.weights_path))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_finetune_ssn_and_soft_targets(setup, tmp_path):
    root, store_path, parent = setup
    ssn = _tiny_card(root / "parent", "tiny-ssn", wrapper="ssn", rank=2)
    r = run_finetune(store_path, ssn, out=tmp_path / "ssn-ft.json", samples_per_image=1, n_val=1)
    assert r.card.wrapper == "ssn" and np.isfinite(r.train_loss)
    assert load_method(r.card_path).sample(
        torch.zeros(1, 1, 32, 32), 2, generator=torch.Generator().manual_seed(0)
    ).shape == (2, 2, 32, 32)
    with pytest.raises(ValueError, match=r"^rater_mode: 'soft' needs a plain"):
        finetune(store_path, ssn, out=tmp_path / "x.json", rater_mode="soft")
    soft = run_finetune(
        store_path, parent, out=tmp_path / "soft.json", rater_mode="soft", samples_per_image=1
    )
    assert soft.card.training["rater_mode"] == "soft" and np.isfinite(soft.train_loss)


def test_finetune_3d_model_uses_only_the_volume(setup, tmp_path):
    root, store_path, _ = setup
    card3d = _tiny_card(root / "parent", "tiny3d", spatial_dims=3)
    r = run_finetune(store_path, card3d, out=tmp_path / "ft3d.json", samples_per_image=1)
    t = r.card.training
    assert t["annotations"] == {"train": {"vol": {"ann": 1}}, "val": {}}
    assert t["patch_size"] == [16, 16, 16] and r.val_loss is None
    assert sorted(t["skipped"]["other_dims"]) == ["empty", "im0", "im1", "im2"]
    assert r.card.spatial_dims == 3 and np.isfinite(r.train_loss)


def test_cancel_raises_and_writes_nothing(setup, tmp_path):
    _, store_path, parent = setup
    stop = threading.Event()
    gen = finetune(store_path, parent, out=tmp_path / "c.json", samples_per_image=4, cancel=stop)
    for event in gen:
        if event.stage == "train":
            stop.set()
            break
    with pytest.raises(Cancelled):
        next(gen)
    assert not (tmp_path / "c.json").exists() and not (tmp_path / "c.safetensors").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, r"^epochs: "),
        ({"lr": -1.0}, r"^lr: "),
        ({"rater_mode": "all"}, r"^rater_mode: "),
        ({"out": "model.yaml"}, r"^out: expected a model card file name ending in .json"),
        ({"patch_size": (8, 8, 8)}, r"^patch_size: expected 2 sizes"),
        ({"device": "gpu9"}, r"^device: "),
        ({"cancel": 3}, r"^cancel: "),
    ],
)
def test_bad_arguments(setup, tmp_path, kwargs, match):
    _, store_path, parent = setup
    kwargs = {"out": tmp_path / "m.json", **kwargs}
    with pytest.raises(ValueError, match=match):
        finetune(store_path, parent, **kwargs)


def test_refuses_to_overwrite(setup, tmp_path):
    _, store_path, parent = setup
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(ValueError, match=r"^out: .* already exist"):
        finetune(store_path, parent, out=tmp_path / "m.json")
    with pytest.raises(ValueError, match=r"^out: .* is the parent model's card"):
        finetune(store_path, parent, out=parent, overwrite=True)


def test_cli_train_through_main(setup, tmp_path, capsys):
    _, store_path, parent = setup
    out = tmp_path / "cli.json"
    argv = [
        "train",
        str(store_path),
        "--model",
        str(parent),
        "--epochs",
        "1",
        "--out",
        str(out),
        "--samples-per-image",
        "1",
        "--rater-mode",
        "majority",
        "--update-norm",
        "--device",
        "cpu",
        "--json",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["card"] == str(out) and summary["parent"]["name"] == "tiny"
    assert summary["images"] == {"train": 2, "val": 1} and summary["rater_mode"] == "majority"
    assert json.loads(out.read_text())["training"]["freeze_norm"] is False
    assert load_method(out).name == "mc_dropout"
    assert main(argv) == 1  # exists now
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("probseg train: error: out: ")


def test_cli_bad_inputs_one_line(setup, tmp_path, capsys):
    _, store_path, parent = setup
    base = ["--out", str(tmp_path / "m.json")]
    cases = [
        (["train", str(tmp_path / "missing.zarr"), "--model", str(parent), *base], "store: "),
        (["train", str(tmp_path), "--model", str(parent), *base], "store: "),
        (["train", str(store_path), "--model", "no-such-model", *base], "model: "),
        (["train", str(store_path), "--model", str(parent), "--images", "vol", *base], "store: "),
    ]
    for argv, start in cases:
        assert main(argv) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"probseg train: error: {start}"), err


def test_cli_subprocess(setup, tmp_path):
    _, store_path, parent = setup
    out = tmp_path / "sub.json"
    cmd = [
        sys.executable,
        "-m",
        "napari_probseg.cli",
        "train",
        str(store_path),
        "--model",
        str(parent),
        "--epochs",
        "1",
        "--out",
        str(out),
        "--samples-per-image",
        "1",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny model: threads only contend
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "probseg train:" in ok.stderr and "epoch 1/1" in ok.stderr
    assert ok.stdout.startswith(f"wrote {out}") and out.is_file()
    bad = subprocess.run(
        [*cmd[:4], str(tmp_path / "nope.zarr"), *cmd[5:]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "store: " in bad.stderr
