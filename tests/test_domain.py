"""The engine's input check against the card's training distribution (``provenance["domain"]``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data

from model_helpers import tiny_card
from napari_probseg.data.synthetic import make_lesions
from napari_probseg.engine import normalize, run_prediction
from napari_probseg.engine._domain import PSI_THRESHOLD, check_domain, intensity_psi
from napari_probseg.models import load_card, load_method

LEVELS = (0.01, 0.05, 0.5, 0.95, 0.99)


@pytest.fixture(scope="module")
def training_quantiles() -> dict[str, float]:
    imgs = make_lesions(16, seed=1000, shape=(64, 64)).images
    x = np.stack([normalize(i[None], "zscore") for i in imgs])
    return {f"{q:g}": float(v) for q, v in zip(LEVELS, np.quantile(x, LEVELS))}


class _Card:
    name = "toy"
    spacing = (1.0, 1.0)

    def __init__(self, quantiles, synthetic=True):
        self.training_distribution = {
            "data": "synthetic lesions (test)",
            "synthetic": synthetic,
            "n_images": 16,
            "spacing": [1.0, 1.0],
            "intensity_quantiles": quantiles,
        }


def test_psi_is_zero_on_the_training_bins_and_grows_with_shift():
    q = {"0.01": -2.3, "0.05": -1.6, "0.5": 0.0, "0.95": 1.6, "0.99": 2.3}
    x = np.random.default_rng(0).standard_normal(200_000)
    psi, observed = intensity_psi(x, q)
    assert psi < 0.005 and len(observed) == 6 and abs(sum(observed) - 1) < 1e-9
    assert intensity_psi(x + 1.0, q)[0] > intensity_psi(x + 0.3, q)[0] > psi


def test_held_out_synthetic_images_are_in_domain_real_photos_are_not(training_quantiles):
    card = _Card(training_quantiles)
    for img in make_lesions(6, seed=4000, shape=(64, 64)).images:
        d = check_domain(normalize(img[None], "zscore"), card)
        assert d["checked"] and d["in_domain"], d["details"]["psi"]
        assert d["synthetic"] and d["trained_on"] == "synthetic lesions (test)"
        assert [w for w in d["warnings"] if w.startswith("domain:")] == []
        assert any("synthetic lesions" in w for w in d["warnings"])
    for img in (skimage.data.camera(), skimage.data.cell()):
        d = check_domain(normalize(img[None].astype(np.float32), "zscore"), card)
        assert d["in_domain"] is False and d["details"]["psi"] > PSI_THRESHOLD
        assert any(w.startswith("domain: the image is far") for w in d["warnings"])


def test_spacing_mismatch_and_unchecked_cards(training_quantiles):
    img = normalize(make_lesions(1, seed=4000, shape=(64, 64)).images[0][None], "zscore")
    card = _Card(training_quantiles, synthetic=False)
    d = check_domain(img, card, scale=(2.0, 2.0))
    assert d["in_domain"] is False and d["details"]["spacing_matches"] is False
    assert d["warnings"] == []  # the engine warns about the spacing itself; not synthetic
    assert check_domain(img, card, scale=(1.0, 1.0))["in_domain"] is True
    none = check_domain(img, None)
    assert none["checked"] is False and none["in_domain"] is None and none["warnings"] == []


def test_engine_records_the_check_and_appends_its_warnings(tmp_path, training_quantiles):
    path = tiny_card(tmp_path)
    data = json.loads(open(path).read())
    data["training_distribution"] = _Card(training_quantiles).training_distribution
    open(path, "w").write(json.dumps(data))
    assert load_card(path).training_distribution["synthetic"] is True
    method = load_method(path, "mc_dropout")
    photo = skimage.data.camera()[::8, ::8].astype(np.float32)
    res = run_prediction(photo, method, n_samples=2, seed=0, device="cpu")
    dom = res.provenance["domain"]
    assert set(dom) == {"checked", "in_domain", "trained_on", "synthetic", "warnings", "details"}
    assert dom["checked"] and dom["in_domain"] is False and dom["synthetic"] is True
    assert dom["warnings"] and all(w in res.provenance["warnings"] for w in dom["warnings"])
    json.dumps(res.provenance["domain"])  # JSON-able as it is
    lesion = make_lesions(1, seed=4000, shape=(64, 64)).images[0]
    ok = run_prediction(lesion, method, n_samples=2, seed=0, device="cpu").provenance["domain"]
    assert ok["in_domain"] is True


def test_probseg_models_says_what_each_model_was_trained_on(capsys):
    from napari_probseg.cli import main

    assert main(["models", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)["models"]
    bundled = [m for m in listing if m["origin"] == "bundled"]
    assert bundled and all(m["synthetic"] and "make_lesions" in m["trained_on"] for m in bundled)
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert text.count("SYNTHETIC data only") == len(bundled)
