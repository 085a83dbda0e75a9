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
from napari_probseg.store import ProjectStore, StoreError
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
    proc = subprocess.run(
        [sys.executable, "-m", "napari_probseg.cli", "predict", "--sample", "2d"]
        + ["--model", str(path), "-n", "2", "--out", str(tmp_path / "p.zarr")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        timeout=300,
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
