"""MONAI bundle directories as sampling methods: the bundle's own output, methods, safety."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from napari_probseg import engine  # noqa: E402
from napari_probseg.models import UntrustedModelError, load_method  # noqa: E402
from napari_probseg.models.adapters import detect_model_folder, inspect_model_folder  # noqa: E402
from napari_probseg.models.protocol import WholeImageMethod  # noqa: E402

CLASSES = ["background", "spleen", "liver"]


def _config(dropout: float = 0.2, preprocessing_extra: list | None = None) -> dict:
    return {
        "imports": ["$import os"],
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "network_def": {
            "_target_": "UNet",
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 3,
            "channels": [4, 8],
            "strides": [2],
            "num_res_units": 0,
            "dropout": dropout,
        },
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "ScaleIntensityd", "keys": "image"},
                {"_target_": "SpatialPadd", "keys": "image", "spatial_size": [24, 24]},
                *(preprocessing_extra or []),
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": [16, 16],
            "sw_batch_size": 2,
            "overlap": 0.25,
            "mode": "gaussian",
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            ],
        },
    }


def make_bundle(root: Path, *, seed: int = 0, config: dict | None = None) -> Path:
    """A tiny bundle: MONAI UNet with dropout, sliding-window inferer, state-dict weights."""
    from monai.networks.nets import UNet

    root.mkdir(parents=True, exist_ok=True)
    (root / "configs").mkdir(exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    config = config or _config()
    meta = {
        "name": f"tiny_bundle_{seed}",
        "version": "0.1.0",
        "network_data_format": {
            "inputs": {"image": {"num_channels": 1, "spatial_shape": [16, 16]}},
            "outputs": {"pred": {"channel_def": {str(i): c for i, c in enumerate(CLASSES)}}},
        },
    }
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    torch.manual_seed(seed)
    args = {k: v for k, v in config["network_def"].items() if k != "_target_"}
    torch.save(UNet(**args).state_dict(), root / "models" / "model.pt")
    return root


def bundle_reference(bundle: Path, image: np.ndarray, tmp: Path) -> np.ndarray:
    """The bundle's own inference output before discretisation: its parsed preprocessing (with
    its loader, from a file), network, inferer and postprocessing minus ``AsDiscreted``, run the
    way MONAI's evaluator runs them (ignite is not needed for that)."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    npy = tmp / "ref_input.npy"
    np.save(npy, image.T)  # MONAI's (x, y) order
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    network.eval()
    data = parser.get_parsed_content("preprocessing")({"image": str(npy)})
    with torch.no_grad():
        logits = parser.get_parsed_content("inferer")(data["image"][None], network)
    post = parser.get_parsed_content("postprocessing")
    post = Compose([t for t in post.transforms if type(t).__name__ != "AsDiscreted"])
    out = post({"image": data["image"], "pred": logits[0]})["pred"]
    return np.asarray(out).transpose(0, 2, 1)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b0")


IMAGE = np.random.default_rng(1).normal(0.0, 1.0, (20, 18)).astype(np.float32)


def test_softmax_equals_the_bundles_own_output(bundle, tmp_path):
    assert detect_model_folder(bundle) == "monai_bundle"
    info = inspect_model_folder(bundle)
    assert info.class_names == CLASSES and info.spatial_dims == 2
    method = load_method(bundle, "softmax")
    assert isinstance(method, WholeImageMethod)
    result = engine.run_prediction(IMAGE, method, n_samples=4, device="cpu")
    assert result.n_samples == 1
    ref = bundle_reference(bundle, IMAGE, tmp_path)
    assert ref.shape == (3, 20, 18)
    np.testing.assert_allclose(result.maps.mean_probs, ref, atol=1e-5)
    assert result.provenance["card_name"] == "tiny_bundle_0"
    assert result.class_names == CLASSES


def test_tta_dropout_and_ensemble(bundle, tmp_path):
    tta = load_method(bundle, "tta")
    assert tta.n_hypotheses == 4 and tta.source == ("input",)
    r = engine.run_prediction(IMAGE, tta, n_samples=8)
    assert r.n_samples == 4 and float(r.maps.mutual_information.max()) > 0

    mc = load_method(bundle, "mc_dropout")
    assert mc.source == ("parameter",)
    a = engine.run_prediction(IMAGE, mc, n_samples=3)
    b = engine.run_prediction(IMAGE, mc, n_samples=3)
    np.testing.assert_array_equal(a.maps.mean_probs, b.maps.mean_probs)  # same i, same mask
    assert float(a.maps.mutual_information.max()) > 0

    # a network without dropout gets it through network_def's argument, as MONAI Label does
    plain = make_bundle(tmp_path / "nodrop", seed=1, config=_config(dropout=0.0))
    mc_plain = load_method(plain, "mc_dropout")
    assert mc_plain.describe()["dropout_p"] == [0.2]

    other = make_bundle(tmp_path / "b1", seed=2)
    ens = load_method([bundle, other], "ensemble")
    assert ens.n_hypotheses == 2
    res = engine.run_prediction(IMAGE, ens, n_samples=2)
    one = engine.run_prediction(IMAGE, load_method(other, "softmax"), n_samples=1)
    zero = engine.run_prediction(IMAGE, load_method(bundle, "softmax"), n_samples=1)
    np.testing.assert_allclose(
        res.maps.mean_probs, (zero.maps.mean_probs + one.maps.mean_probs) / 2, atol=1e-5
    )


def test_bundle_code_never_runs_without_trust(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sentinel = tmp_path / "sentinel.txt"
    code = f"$lambda x: (open({str(sentinel)!r}, 'w').write('pwned'), x)[1]"
    config = _config(preprocessing_extra=[{"_target_": "Lambdad", "keys": "image", "func": code}])
    config["unused"] = f"$open({str(sentinel)!r}, 'w').write('pwned')"
    evil = make_bundle(tmp_path / "evil", config=config)
    with pytest.raises(UntrustedModelError, match="expression"):
        load_method(evil, "softmax")
    assert not sentinel.exists()

    config = _config()
    config["preprocessing"]["transforms"].insert(1, {"_target_": "builtins.print", "args": ["hi"]})
    with pytest.raises(UntrustedModelError, match=r"builtins\.print"):
        load_method(make_bundle(tmp_path / "evil2", config=config), "softmax")

    # entries the adapter does not use never reach the parser (unused, imports, device)
    config = _config()
    config["unused"] = f"$open({str(sentinel)!r}, 'w').write('pwned')"
    engine.run_prediction(IMAGE, load_method(make_bundle(tmp_path / "ok", config=config)))
    assert not sentinel.exists()

    trusted = load_method(evil, "softmax", trust=True)
    engine.run_prediction(IMAGE, trusted)
    assert sentinel.read_text() == "pwned"


def test_torchscript_needs_trust(tmp_path):
    b = make_bundle(tmp_path / "ts")
    net = torch.jit.script(torch.nn.Conv2d(1, 3, 1))
    (b / "models" / "model.pt").unlink()
    net.save(str(b / "models" / "model.ts"))
    with pytest.raises(UntrustedModelError, match="TorchScript"):
        load_method(b, "softmax")
