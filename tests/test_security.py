"""Security suite: cards and bundles that try to run code, symlinked store folders, ``--overwrite``
on a foreign folder. Each test asserts that a sentinel file was never created and that the folder
outside the store is unchanged (issue 13, items 1-3)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_probseg.models import ModelCard, ModelCardError, UntrustedModelError, load_network
from napari_probseg.models._trust import check_bundle_config, resolve_constructor
from napari_probseg.store import ProjectStore, StoreLinkError
from test_models import make_card

REPO = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 (or 'dir' / 'link -> target') of everything under ``folder``."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                out[rel] = f"link -> {os.readlink(p)}"
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def outside(tmp_path):
    """A folder outside every store with precious content, and its snapshot."""
    folder = tmp_path / "outside"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "precious.txt").write_text("do not touch")
    (folder / "sub" / "deeper" / "data.bin").write_bytes(os.urandom(64))
    (folder / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
    return folder


# --- item 1: cards that try to run code ----------------------------------------------------------


def _factory_card(tmp_path: Path, factory: str, args: dict) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    base = make_card(tmp_path)
    data = base.to_dict()
    data["architecture"] = {"wrapper": "plain", "factory": factory, "args": args}
    data["methods"] = {"softmax": {}}
    data["default_method"] = "softmax"
    card = ModelCard.from_dict(data, path=base.path)
    card.save(base.path)
    return base.path


def _shell_payloads(sentinel: Path) -> list[tuple[str, dict]]:
    cmd = f"touch {sentinel}"
    return [
        ("monai:os.system", {"command": cmd}),
        ("monai.utils.misc:run_cmd", {"cmd_list": ["touch", str(sentinel)]}),
        ("napari_probseg.store._fs:os.system", {"command": cmd}),
        ("napari_probseg.models.networks:torch.os.system", {"command": cmd}),
        ("monai.networks.nets:os.system", {"command": cmd}),
        ("monai.networks.nets.basic_unet:torch.os.system", {"command": cmd}),
        ("os:system", {"command": cmd}),
        ("subprocess:run", {"args": ["touch", str(sentinel)]}),
        ("builtins:exec", {"source": f"open({str(sentinel)!r}, 'w')"}),
    ]


@pytest.mark.parametrize("index", range(9))
def test_factory_cards_cannot_run_code_without_trust(tmp_path, index):
    sentinel = tmp_path / "pwned"
    factory, args = _shell_payloads(sentinel)[index]
    path = _factory_card(tmp_path / "card", factory, args)
    with pytest.raises(UntrustedModelError, match=r"architecture\.factory: .*--trust"):
        load_network(path)
    assert not sentinel.exists()


def test_factory_card_through_the_cli_needs_trust(tmp_path):
    sentinel = tmp_path / "pwned"
    path = _factory_card(tmp_path / "card", "monai:os.system", {"command": f"touch {sentinel}"})
    proc = cli(
        "predict",
        "--sample",
        "2d",
        "--model",
        str(path),
        "-n",
        "2",
        "--out",
        str(tmp_path / "p.zarr"),
    )
    assert proc.returncode != 0 and not sentinel.exists()
    assert "architecture.factory" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p.zarr").exists()


def test_allowed_factories_resolve_by_exact_name():
    import monai.networks.nets as nets

    assert resolve_constructor({"network": "BasicUNet"}) is nets.BasicUNet
    assert resolve_constructor({"factory": "monai.networks.nets:BasicUNet"}) is nets.BasicUNet
    spec = "monai.networks.nets.basic_unet:BasicUNet"
    assert resolve_constructor({"factory": spec}) is nets.BasicUNet
    # names that are not network classes of monai.networks.nets
    for bad in ("basic_unet", "__builtins__", "get_efficientnet_image_size", "os", "Transchex"):
        with pytest.raises(ModelCardError):
            resolve_constructor({"network": bad})
    # a class outside monai.networks.nets needs trust, even a harmless one
    with pytest.raises(UntrustedModelError, match=r"torch\.nn"):
        resolve_constructor({"factory": "torch.nn:Conv2d"})
    from torch import nn

    assert resolve_constructor({"factory": "torch.nn:Conv2d"}, trust=True) is nn.Conv2d


@pytest.mark.parametrize(
    ("network", "args", "field"),
    [
        ("DenseNet121", {"pretrained": True}, "architecture.args.pretrained"),
        ("EfficientNetBN", {"model_name": "efficientnet-b0"}, "architecture.args.pretrained"),
        ("HoVerNet", {"pretrained_url": "http://127.0.0.1:9/x.pth"}, "pretrained_url"),
        ("TorchVisionFCModel", {"weights": "DEFAULT"}, "architecture.args.weights"),
    ],
)
def test_pretrained_downloads_are_refused(tmp_path, network, args, field):
    base = make_card(tmp_path)
    data = base.to_dict()
    data["architecture"] = {"wrapper": "plain", "network": network, "args": args}
    data["methods"] = {"softmax": {}}
    data["default_method"] = "softmax"
    card = ModelCard.from_dict(data, path=base.path)
    for trust in (False, True):
        with pytest.raises(ModelCardError, match=field):
            load_network(card, trust=trust)


def test_bundle_configs_that_run_code_are_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    hostile = [
        {"network_def": {"_target_": "os.system", "command": f"touch {sentinel}"}},
        {"network_def": f"$__import__('os').system('touch {sentinel}')"},
        {"network_def": {"_target_": "BasicUNet"}, "x": [1, {"y": "$open('a','w')"}]},
        {"network_def": {"_target_": "monai.utils.misc.run_cmd", "cmd_list": ["touch"]}},
        {"network_def": {"_target_": "monai.networks.nets.os.system"}},
        {"_requires_": "$import os"},
    ]
    for config in hostile:
        with pytest.raises(UntrustedModelError):
            check_bundle_config(config)
    check_bundle_config({"network_def": {"_target_": "monai.networks.nets.BasicUNet"}})
    check_bundle_config({"network_def": {"_target_": "BasicUNet", "features": [4, 4]}})
    check_bundle_config(hostile[1], trust=True)  # trusted: the caller's decision
    assert not sentinel.exists()


# --- item 2: symbolic links inside a store ------------------------------------------------------


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "napari_probseg.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        timeout=300,
        cwd=cwd,
    )


def _store(tmp_path: Path) -> ProjectStore:
    store = ProjectStore.create(tmp_path / "p.zarr", class_names=["bg", "fg", "x"])
    store.add_image(np.zeros((8, 8), np.float32), image_id="img", label_chunks=(4, 4))
    mask = np.zeros((8, 8), np.uint8)
    mask[:4] = 1
    store.save_annotation("img", "alice", mask, role="expert")
    store.save_draft("img", "alice", mask)
    return store


def _replace_by_link(path: Path, target: Path) -> None:
    import shutil

    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    path.symlink_to(target, target_is_directory=True)


LINKED = [
    "images/img/labels",
    "images/img/labels/alice",
    "images/img/annotations/alice",
    "images/img/annotations",
    "images/img/drafts/alice",
    "images/img/predictions",
    ".probseg/tmp",
    "images/img",
]


@pytest.mark.parametrize("where", LINKED)
def test_linked_store_folder_is_refused_and_outside_untouched(tmp_path, outside, where):
    store = _store(tmp_path)
    before = snapshot(outside)
    _replace_by_link(store.path / where, outside)
    mask = np.ones((8, 8), np.uint8)
    # a store opened before the link appeared: every write refuses, under its lock
    for write in (
        lambda: store.save_annotation("img", "alice", mask, role="expert"),
        lambda: store.save_annotation("img", "bob", mask, role="expert"),
        lambda: store.save_draft("img", "alice", mask),
        lambda: store.discard_draft("img", "alice"),
        lambda: store.save_prediction("img", {"samples": mask[None]}, {}),
        lambda: store.verify(repair=True),
    ):
        with pytest.raises(StoreLinkError, match="symbolic link"):
            write()
    # the next open refuses, read-write or read-only
    for mode in ("r+", "r"):
        with pytest.raises(StoreLinkError, match=r"symbolic link .*cannot be opened"):
            ProjectStore.open(store.path, mode=mode)
    # verify (read-only) reports the link; the CLI exits 1 with the link named
    problems = ProjectStore.open(store.path, mode="r", allow_links=True).verify()
    assert [p.path for p in problems] == [str(store.path / where)]
    assert snapshot(outside) == before


def test_linked_store_through_the_cli(tmp_path, outside):
    store = _store(tmp_path)
    before = snapshot(outside)
    _replace_by_link(store.path / "images/img/labels", outside)
    proc = cli("store", "verify", str(store.path))
    assert proc.returncode == 1 and "images/img/labels" in proc.stderr
    assert "symbolic link" in proc.stderr and "Traceback" not in proc.stderr
    for args in (("store", "verify", "--repair"), ("store", "info")):
        proc = cli(*args, str(store.path))
        assert proc.returncode == 1 and "symbolic link" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert snapshot(outside) == before


def test_check_within_rejects_links_and_escapes(tmp_path, outside):
    from napari_probseg.store._fs import check_within

    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    assert check_within(root / "a" / "new", root) == root / "a" / "new"
    (root / "link").symlink_to(outside, target_is_directory=True)
    for bad in (root / "link", root / "link" / "precious.txt", root / ".." / "outside", outside):
        with pytest.raises(StoreLinkError):
            check_within(bad, root)
    # the root itself may be reached through a link (the user named it)
    (tmp_path / "alias").symlink_to(root, target_is_directory=True)
    assert check_within(tmp_path / "alias" / "a", tmp_path / "alias")


# --- item 3: --overwrite deletes only our own prediction outputs -------------------------------


def _predict(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli(
        "predict", "--sample", "2d", "--model", "lesions2d-unet", "--method", "softmax", "-n", "2",
        "--quiet", "--out", str(out), *extra,
    )  # fmt: skip


def test_overwrite_refuses_a_foreign_folder(tmp_path, outside):
    home = outside
    ProjectStore.create(home / "project.zarr")  # a home folder with a project store in it
    before = snapshot(home)
    link = tmp_path / "link.zarr"
    link.symlink_to(home, target_is_directory=True)
    for out in (home, home / "project.zarr", home / "precious.txt", link):
        proc = _predict(out, "--overwrite")
        assert proc.returncode == 1, proc.stderr
        assert "not a probseg prediction output" in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    assert snapshot(home) == before


def test_overwrite_replaces_our_own_output(tmp_path):
    out = tmp_path / "pred.zarr"
    out.mkdir()  # what an earlier run left: a zarr group saying it is a prediction
    attrs = {"napari_probseg": {"kind": "prediction", "format_version": 1}}
    (out / "zarr.json").write_text(json.dumps({"zarr_format": 3, "attributes": attrs}))
    (out / "stale").mkdir()
    from model_helpers import tiny_card

    card = tiny_card(tmp_path / "models")
    proc = cli(
        "predict", "--sample", "2d", "--model", str(card), "--method", "softmax", "--quiet",
        "--out", str(out), "--overwrite",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "zarr.json").read_text())
    assert meta["attributes"]["method"] == "softmax" and not (out / "stale").exists()


def test_names_read_from_the_store_never_become_paths(tmp_path, outside):
    """Draft, run-array and label-array names stored in zarr.json files are checked, not joined."""
    from napari_probseg.store import StoreCorruptionError

    store = _store(tmp_path)
    store.save_prediction("img", {"samples": np.ones((1, 8, 8), np.uint8)}, {}, run_id="run1")
    before = snapshot(outside)
    hostile = os.path.relpath(outside, store.path / "images/img/drafts/alice")
    for meta_path, edit in (
        ("images/img/drafts/alice/zarr.json", lambda a: a.update(current=hostile)),
        ("images/img/predictions/run1/zarr.json", lambda a: a.update(arrays={hostile: {}})),
        ("images/img/labels/alice/zarr.json", lambda a: a.update(array=hostile)),
    ):
        meta = json.loads((store.path / meta_path).read_text())
        edit(meta["attributes"]["probseg"])
        (store.path / meta_path).write_text(json.dumps(meta))
    with pytest.raises(StoreCorruptionError, match="invalid draft name"):
        store.load_draft("img", "alice")
    with pytest.raises(StoreCorruptionError, match="invalid array name"):
        store.read_prediction("img", "run1")
    problems = {p.path: p.message for p in store.verify()}
    assert any("invalid draft name" in m for m in problems.values())
    assert any("array" in m and "not a valid identifier" in m for m in problems.values())
    store.save_draft("img", "alice", np.ones((8, 8), np.uint8))  # replaces the bad pointer
    store.verify(repair=True)  # republishes the label image from the committed version
    remaining = store.verify()  # the run's metadata stays damaged (committed data is not edited)
    assert [p.path for p in remaining] == [
        str(store.path / "images/img/predictions/run1/zarr.json")
    ]
    assert snapshot(outside) == before


def test_save_result_api_never_deletes_a_foreign_folder(outside):
    """``engine.save_result(overwrite=True)`` from Python is guarded like ``--overwrite``."""
    from model_helpers import tiny_card
    from napari_probseg import engine
    from napari_probseg.data.synthetic import sample_case
    from napari_probseg.models import load_method

    before = snapshot(outside)
    method = load_method(tiny_card(outside.parent / "models"), "softmax")
    image, _, _ = sample_case(2)
    result = engine.run_prediction(image, method, n_samples=1)
    with pytest.raises(FileExistsError, match="not a probseg prediction output"):
        engine.save_result(result, outside, overwrite=True)
    assert snapshot(outside) == before
